"""The documentation as a user meets it: README within 15 KB, every relative link in README.md,
docs/ and the model card pointing at a file (and heading) that exists in a clone, every docs page in
the site's nav, the API reference covering the public API, and the licence and citation in step."""
import os
import re
import tomllib

import yaml

import mucs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))
LINKED = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "assets", "fashion16", "README.md")] + PAGES


def _slug(heading):
    """The anchor GitHub and mkdocs give a heading (the two agree for ASCII headings)."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def _anchors(path):
    text = re.sub(r"```.*?```", "", open(path, encoding="utf-8").read(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M)}


def _links(path):
    text = re.sub(r"```.*?```", "", open(path, encoding="utf-8").read(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)          # code spans are not links
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_readme_is_at_most_15_kb():
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= 15 * 1024


def test_every_relative_link_resolves_in_a_clone():
    bad, checked = [], 0
    for page in LINKED:
        for target in _links(page):
            if re.match(r"[a-z]+:", target):
                continue                                   # https:, mailto:
            checked += 1
            file, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
            rel = os.path.relpath(page, ROOT)
            if not (path == ROOT or path.startswith(ROOT + os.sep)) or not os.path.exists(path):
                bad.append(f"{rel} -> {target} (no such file in the repository)")
            elif anchor and path.endswith(".md") and anchor not in _anchors(path):
                bad.append(f"{rel} -> {target} (no such heading)")
    assert checked > 50, f"only {checked} relative links found: the link scan is not checking anything"
    assert not bad, "\n".join(bad)


def test_docs_pages_link_only_inside_docs():
    """The site holds only docs/: a link from a page to another file of the repository would break there
    (name such files as code instead)."""
    checked = 0
    for page in PAGES:
        for target in _links(page):
            if not re.match(r"[a-z]+:", target) and target.split("#")[0]:
                checked += 1
                path = os.path.normpath(os.path.join(DOCS, target.split("#")[0]))
                assert path.startswith(DOCS + os.sep), f"{os.path.basename(page)} links outside docs/: {target}"
    assert checked > 20, f"only {checked} links between docs pages found: the scan is not checking anything"


def test_every_page_is_in_the_site_nav():
    cfg = yaml.load(open(os.path.join(ROOT, "mkdocs.yml")), Loader=yaml.BaseLoader)
    nav = {list(item.values())[0] for item in cfg["nav"]}
    assert nav == {os.path.basename(p) for p in PAGES}


def test_api_reference_covers_the_public_api():
    text = open(os.path.join(DOCS, "reference.md"), encoding="utf-8").read()
    documented = set(re.findall(r"^::: (\S+)$", text, flags=re.M))
    assert {f"mucs.{name}" for name in mucs.__all__} <= documented
    for dotted in documented:                              # each names a real object
        module, _, attr = dotted.rpartition(".")
        assert hasattr(__import__(module, fromlist=[attr]), attr), dotted


def test_licence_and_citation_agree():
    proj = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    cff = yaml.safe_load(open(os.path.join(ROOT, "CITATION.cff"), encoding="utf-8"))
    assert proj["license"] == cff["license"] == "Apache-2.0"
    assert "Apache License" in open(os.path.join(ROOT, "LICENSE")).read(200)
    assert cff["version"] == mucs.__version__
    paper = cff["references"][0]
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert paper["title"] in readme and "2605.17938" in readme and "@misc{" in readme
    card = open(os.path.join(ROOT, "assets", "fashion16", "README.md"), encoding="utf-8").read()
    assert card.startswith("---\nlicense: apache-2.0\n") and "MIT" in card
