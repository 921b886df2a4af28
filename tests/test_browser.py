"""The app in a real browser (Playwright driving Debian's chromium; never `playwright install`):
load, generate, attribute, see gallery and plots, open the history and compare overlap, upload a
corrupt file and see the error, and check that no request left localhost.

Screenshots of each view go to $MUCS_SCREENSHOT_DIR (e.g. docs/screenshots) when set.
MUCS_BROWSER_MODEL=default runs it on the embedded default model (with reduced settings,
DEFAULT_FAST, or $MUCS_BROWSER_SETTINGS as JSON, so that it takes minutes on a CPU; the shipped
example runs appear in its history); otherwise a tiny model is used.
"""
import json
import os
import socket
import time
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
gr = pytest.importorskip("gradio")

import app  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402

FAST = dict(noises=16, batch_size=32, null_batches=10, null_batch_size=32, max_steps=8, top_k=5)
DEFAULT_FAST = dict(noises=16, null_batches=20, batch_size=50, max_steps=30, top_k=10)
LOCAL = {"127.0.0.1", "localhost", "::1", "[::1]"}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("browser")
    on_default = os.environ.get("MUCS_BROWSER_MODEL") == "default"
    old = os.environ.get("MUCS_CACHE_DIR")
    os.environ["MUCS_CACHE_DIR"] = str(root / "cache")   # never write caches into the model folder
    if on_default:
        if not os.path.isdir(DEFAULT_MODEL):
            pytest.skip(f"the embedded model {DEFAULT_MODEL} is not there")
        overrides = json.loads(os.environ.get("MUCS_BROWSER_SETTINGS") or "null") or DEFAULT_FAST
        model, data, timeout = DEFAULT_MODEL, DEFAULT_DATA, 1800_000
    else:
        model, data = request.getfixturevalue("tiny_model_dir"), request.getfixturevalue("tiny_npz")
        overrides, timeout = FAST, 120_000
    ex = Explorer(model, data, overrides, runs_dir=str(root / "runs"), examples_dir="default" if on_default else None)
    # a second stored run so that the overlap view has two to compare
    q = ex.training_item(2)
    ex.attribute(q)
    demo = app.build(ex)
    port = free_port()
    app.launch(demo, ex, port=port, prevent_thread_lock=True, quiet=True)
    yield ex, f"http://127.0.0.1:{port}/", timeout, root
    demo.close()
    if old is None:
        os.environ.pop("MUCS_CACHE_DIR", None)
    else:
        os.environ["MUCS_CACHE_DIR"] = old


def shot(page, name):
    d = os.environ.get("MUCS_SCREENSHOT_DIR")
    if d:
        os.makedirs(d, exist_ok=True)
        page.screenshot(path=os.path.join(d, name), full_page=True)


def test_browser_flow(served, tmp_path):
    ex, url, timeout, root = served
    requests = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.set_default_timeout(60_000)
            sync_api.expect.set_options(timeout=30_000)
            page.goto(url)
            page.locator("#generate-btn").wait_for()
            # generate: gallery and the query preview appear
            page.locator("#generate-btn").click()
            page.locator("#generated-gallery img").first.wait_for()
            page.locator("#query-image img").wait_for()
            sync_api.expect(page.locator("#query-info")).to_contain_text("generated")
            shot(page, "01-query.png")
            # attribute: the Results tab opens with the top-k gallery and the four plots
            page.locator("#attribute-btn").click()
            page.locator("#topk-gallery img").first.wait_for(timeout=timeout)
            for pid in ("plot-histogram", "plot-scatter", "plot-curve", "plot-classes"):
                page.locator(f"#{pid} .js-plotly-plot").first.wait_for()
            run_id = page.locator("#run-id textarea, #run-id input").first.input_value()
            assert run_id in ex.store.ids()
            assert page.locator("#topk-gallery img").count() >= 1
            page.wait_for_timeout(500)
            shot(page, "02-results.png")
            # history: both runs listed; compare their overlap
            page.get_by_role("tab", name="History & overlap").click()
            sync_api.expect(page.locator("#history-table")).to_contain_text(run_id)
            sel = page.locator("#overlap-select input").first
            sel.click()
            for i in range(2):   # the list stays open; chosen options get a tick
                page.get_by_role("option").nth(i).click()
            page.keyboard.press("Escape")
            page.locator("#overlap-btn").click()
            sync_api.expect(page.locator("#overlap-summary")).to_contain_text("Mean pairwise overlap")
            page.locator("#plot-overlap .js-plotly-plot").first.wait_for()
            page.wait_for_timeout(500)
            shot(page, "03-history-overlap.png")
            # a corrupt upload: a clear error, nothing saved, the app keeps working
            before = sorted(ex.store.ids())
            page.get_by_role("tab", name="Query & attribute").click()
            page.get_by_role("tab", name="Upload").click()
            bad = tmp_path / "corrupt.png"
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad)
            bad.write_bytes(bad.read_bytes()[:40] + b"garbage")
            page.locator("#upload-file input[type=file]").set_input_files(str(bad))
            page.get_by_text("not a readable image").first.wait_for()
            page.wait_for_timeout(600)   # let the toast finish fading in
            shot(page, "04-upload-error.png")
            assert sorted(ex.store.ids()) == before
            page.get_by_role("tab", name="Training image").click()
            page.locator("#train-btn").click()
            sync_api.expect(page.locator("#query-info")).to_contain_text("training item")
        finally:
            browser.close()
    assert requests
    outside = [u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
               and urlparse(u).hostname not in LOCAL]
    assert not outside, f"requests left localhost: {outside[:5]}"
