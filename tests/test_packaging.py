"""The packaging files in step (requirements*.txt, pyproject.toml, every import provided) and the docs
naming every command and flag."""
import ast
import os
import re
import sys
import tomllib
from dataclasses import fields

from mucs.__main__ import build_parser
from mucs.settings import CLI_SETTINGS_ONLY, Settings, flag_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = [f.name for f in fields(Settings)]


# --- packaging files in step ------------------------------------------------------------------------
def _req_lines(path):
    out = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            name = re.split(r"[<>=!~ \[]", line, maxsplit=1)[0].lower().replace("_", "-")
            out[name] = line.replace(" ", "")
    return out


def _spec_map(specs):
    return {re.split(r"[<>=!~ \[]", s, maxsplit=1)[0].lower().replace("_", "-"): s.replace(" ", "") for s in specs}


def test_requirements_files_match_pyproject_and_cover_every_import():
    proj = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    core = _req_lines(os.path.join(ROOT, "requirements.txt"))
    dev = _req_lines(os.path.join(ROOT, "requirements-dev.txt"))
    assert core == _spec_map(proj["dependencies"])
    assert dev == _spec_map(proj["optional-dependencies"]["dev"])
    extras = proj["optional-dependencies"]
    assert "ray" in _spec_map(extras["eval"]) and "ray" in dev and "ray" not in core   # optional, but CI's tests use it
    # every third-party module imported anywhere is provided by one of them
    dist = {"PIL": "pillow", "faiss": "faiss-cpu", "sklearn": "scikit-learn", "huggingface_hub": "huggingface-hub",
            "gradio_client": "gradio-client", "trak": "traker"}
    local = {"mucs", "app", "conftest", "make_dataset", "take"}
    local |= {f[:-3] for folder in ("assets", "benchmarks", "tests") for f in os.listdir(os.path.join(ROOT, folder))
              if f.endswith(".py")}           # scripts importing their neighbours (assets/make_examples.py, ...)
    dist["yaml"] = "pyyaml"                  # tests/test_docs.py reads mkdocs.yml and CITATION.cff
    provided = set(core) | set(dev) | {n for specs in extras.values() for n in _spec_map(specs)}
    missing = set()
    paths = [os.path.join(ROOT, "app.py")]
    for folder in ("mucs", "tests", "benchmarks", "assets", "docs"):
        for r, _, files in os.walk(os.path.join(ROOT, folder)):
            if "benchmarks/work" not in r:
                paths += [os.path.join(r, f) for f in files if f.endswith(".py")]
    for path in paths:
        for node in ast.walk(ast.parse(open(path).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local and \
                        dist.get(top, top).lower().replace("_", "-") not in provided:
                    missing.add(top)
    # imported only inside try/except ImportError, with a fallback (checks.available_memory reads /proc otherwise)
    optional = {"psutil"}
    missing -= optional
    assert not missing, f"imported but in no requirements file: {missing}"


# --- README and docs/cli.md ------------------------------------------------------------------------
def test_readme_and_cli_page_name_every_command_and_flag():
    """README's CLI table names every command and the main flags; docs/cli.md names every settings
    flag; docs/models.md the model layouts and data formats (tests/test_docs.py checks the links)."""
    def read(*parts):
        return open(os.path.join(ROOT, *parts), encoding="utf-8").read()
    readme, cli, models = read("README.md"), read("docs", "cli.md"), read("docs", "models.md")
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    for cmd, p in sub.items():
        assert f"`mucs {cmd}" in readme, f"README's CLI table lacks `mucs {cmd}`"
        assert f"`mucs {cmd}" in cli, f"docs/cli.md lacks `mucs {cmd}`"
    for flag in ("--verbose", "--list-classes", "--train-lr", "--image-column", "--label-column", "--settings",
                 "--runs", "--out", "--paper-settings", "--fast", "--cache-dir", "--force"):
        assert flag in readme, flag
    for name in FIELDS:                      # every settings flag is named
        if name not in CLI_SETTINGS_ONLY:
            assert f"`{flag_for(name)}" in cli or f" {flag_for(name)}" in cli, flag_for(name)
    for word in ("model_index.json", "HF_HUB_OFFLINE", "save_to_disk", "imagefolder"):
        assert word in models, word
    assert "https://download.pytorch.org/whl/cpu" in readme
