"""The suite's own rules: a missing prerequisite skips on a developer's machine but fails in CI."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(tmp_path, require: bool):
    (tmp_path / "test_needs.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom conftest import need\n\n"
        "def test_x():\n    need(False, 'chromium is missing')\n" % HERE)
    env = dict(os.environ, MUCS_REQUIRE_ALL="1" if require else "0")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_needs.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_prerequisite_skips_locally_and_fails_in_ci(tmp_path):
    local = _run(tmp_path, require=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout
    ci = _run(tmp_path, require=True)
    assert ci.returncode == 1 and "MUCS_REQUIRE_ALL=1" in ci.stdout and "1 failed" in ci.stdout


# The layout's layers, lowest first (docs/code-map.md): a module may import its own layer and the ones below.
LAYERS = {"shared": 0, "sources": 1, "method": 2, "explorer": 3, "evaluation": 3, "cli": 4, "ui": 4}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in LAYERS else "shared"


def _imports(path: str, module: str):
    """(line, imported module) for every import of a `mucs` module in `path`, absolute or relative."""
    import ast
    tree = ast.parse(open(path).read())
    pkg = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
            for t in names:
                if t.startswith("mucs."):
                    yield node.lineno, t
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mucs."):
                    yield node.lineno, a.name


def test_imports_point_downwards_only():
    """No module imports from a higher layer or a sibling one (explorer and evaluation are siblings; so are
    the CLI, mucs/cli, and the app's views, mucs/ui, on top); the public API (mucs/__init__.py) re-exports."""
    root = os.path.join(os.path.dirname(HERE), "mucs")
    bad, seen = [], 0
    for dp, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".py") or f == "__main__.py" or (f == "cli.py" and dp.endswith("evaluation")):  # noqa: E501
                continue   # the CLI sits on top of everything
            if dp == root and f == "__init__.py":
                continue   # mucs/__init__.py: the public API, re-exports from every layer
            path = os.path.join(dp, f)
            rel = os.path.relpath(path, os.path.dirname(root))[:-3].replace(os.sep, ".")
            module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
            own = _layer(module)
            for line, target in _imports(path, module):
                seen += 1
                other = _layer(target)
                if target.startswith("mucs.__main__") or (target.startswith("mucs.evaluation.cli") and own != "cli") or \
                        (other != own and LAYERS[other] >= LAYERS[own]):
                    bad.append(f"{module}:{line} imports {target}")
    assert seen > 50, "the import scan found too few imports to be checking anything"
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_circle_between_mucs_modules():
    """No two modules of mucs/ import each other, directly or through others, at the top or inside a
    function (a lazy import hides a circle from Python, not from the reader): the module graph is acyclic.
    The public API (mucs/__init__.py) re-exports from every layer and is left out as an import target."""
    root = os.path.join(os.path.dirname(HERE), "mucs")
    modules = {}
    for dp, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dp, f)
                rel = os.path.relpath(path, os.path.dirname(root))[:-3].replace(os.sep, ".")
                modules[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    graph = {}
    for module, path in modules.items():
        # `from .x import name` imports module x, `from . import y` module y and not the package: per
        # statement, the package counts only when no imported name is a module; "mucs" itself is the API
        by_line: dict = {}
        for line, t in _imports(path, module):
            by_line.setdefault(line, []).append(t)
        targets = set()
        for base, *names in by_line.values():
            subs = [t for t in names if t in modules]
            targets.update(subs or ([base] if base in modules and base != "mucs" else []))
        graph[module] = sorted(targets - {module})
    assert len(graph) > 40 and sum(map(len, graph.values())) > 50
    state, stack, circles = {}, [], []

    def visit(m):                      # depth-first search; an edge back onto the stack closes a circle
        state[m] = "open"
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_BUILDER_LINES = 400, 80, 150


def long_code(paths) -> list:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES (the app's view builders
    in mucs/ui: MAX_BUILDER_LINES), as 'path:line name (n lines)'."""
    import ast
    found = []
    for path in paths:
        text = open(path, encoding="utf-8").read()
        rel = os.path.relpath(path, os.path.dirname(HERE))
        if text.count("\n") > MAX_MODULE_LINES:
            found.append(f"{rel} ({text.count(chr(10))} lines)")
        limit = MAX_BUILDER_LINES if rel.startswith(os.path.join("mucs", "ui")) else MAX_FUNCTION_LINES
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_long_module_or_function(tmp_path):
    """Short files that read top to bottom: no Python module of the repository (mucs/, app.py, tests,
    benchmarks, assets' and docs' scripts) over 400 lines, no function over 80 (the app's view builders:
    150). The checker itself finds a long function and a long module."""
    root = os.path.dirname(HERE)
    paths = [os.path.join(root, "app.py")] + [
        os.path.join(dp, f) for folder in ("mucs", "tests", "benchmarks", "assets", "docs")
        for dp, _, fs in os.walk(os.path.join(root, folder)) if "work" not in os.path.relpath(dp, root).split(os.sep)
        for f in fs if f.endswith(".py")]
    assert len(paths) > 150
    assert not long_code(paths), "too long (split along the concepts it holds):\n" + "\n".join(long_code(paths))
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n" + "    x = 1\n" * 81 + "\n" * 330)
    found = long_code([str(probe)])
    assert len(found) == 2 and found[0].endswith("probe.py (412 lines)") and found[1].endswith(":1 f (82 lines)"), found
