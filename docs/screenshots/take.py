"""Refresh the README and docs screenshots of the explorer on the embedded default model, from the example
runs that ship with it (no attribution is run, so this takes a minute on a CPU):

    python docs/screenshots/take.py [--out docs/screenshots]

Needs Debian's chromium (/usr/bin/chromium) and playwright (python); never `playwright install`.
The browser test (tests/test_browser.py) checks the same views on a tiny model.
"""
import argparse
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

RUN = "example:20261201-002626-75a7b5"            # generated Sneaker, the shipped settings
OTHERS = ("example:20261201-002925-653ceb", "example:20261201-002427-b3cfcb")   # training Dress, T-shirt
CHROMIUM = "/usr/bin/chromium"   # Debian's; never `playwright install`
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def scroll_all(page):
    """Scroll through the page so that lazily loaded gallery images are fetched, then back up
    (tests/test_browser.py uses it too)."""
    h = page.evaluate("document.body.scrollHeight")
    for y in range(0, h + 800, 700):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(80)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(400)


def open_run(page, run_id):
    page.get_by_role("tab", name="History & overlap").click()
    page.locator("#run-select input").first.click()
    page.get_by_role("option", name=run_id, exact=True).click()
    page.locator("#open-btn").click()
    page.locator("#topk-gallery img").first.wait_for()
    page.wait_for_timeout(800)


def shoot_collection(page, ex, path):
    """The shipped example collection (assets/make_example_collection.py) with its overlap analyses."""
    shipped = [c for c in ex.collections.ids() if c.startswith("example:")]
    if not shipped:
        return
    page.get_by_role("tab", name="History & overlap").click()
    page.locator("#collection-select input").first.click()
    page.get_by_role("option", name=shipped[0], exact=True).click()
    page.locator("#collection-open-btn").click()
    page.locator("#collection-figures svg").first.wait_for()
    page.wait_for_timeout(800)
    scroll_all(page)
    page.screenshot(path=path("13-collection.png"), full_page=True)
    page.locator("#collection-figures").screenshot(path=path("14-collection-figures.png"))


def shoot_phone_and_report(ctx, path, report):
    """10-: the example run on a 390 px phone; 11-: the downloaded report opened from disk."""
    phone = ctx.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.set_default_timeout(120_000)
    phone.goto("http://127.0.0.1:7899/")
    phone.locator("#generate-btn").wait_for()
    open_run(phone, RUN)
    phone.locator("#topk-gallery").scroll_into_view_if_needed()
    phone.wait_for_timeout(500)
    phone.screenshot(path=path("10-phone-results.png"))
    offline = ctx.new_page()
    offline.set_viewport_size({"width": 1200, "height": 1600})
    offline.goto("file://" + report)
    offline.wait_for_timeout(500)
    offline.screenshot(path=path("11-report.png"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "screenshots"))
    ap.add_argument("--only-collection", action="store_true",
                    help="only the example collection's views (13-, 14-): no attribution replayed")
    a = ap.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    import app
    from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL
    from mucs.explorer import Explorer
    tmp = tempfile.mkdtemp(prefix="mucs-shots-")
    os.environ["MUCS_CACHE_DIR"] = os.path.join(tmp, "cache")
    ex = Explorer(DEFAULT_MODEL, DEFAULT_DATA, runs_dir=os.path.join(tmp, "runs"))
    demo = app.build(ex)
    app.launch(demo, ex, port=7899, prevent_thread_lock=True, quiet=True)
    os.makedirs(a.out, exist_ok=True)
    path = lambda name: os.path.join(a.out, name)   # noqa: E731
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page = ctx.new_page()
            page.set_default_timeout(600_000)
            page.goto("http://127.0.0.1:7899/")
            page.locator("#generate-btn").wait_for()
            if a.only_collection:
                shoot_collection(page, ex, path)
                browser.close()
                return
            page.get_by_role("tab", name="Results").click()
            page.wait_for_timeout(400)
            page.screenshot(path=path("12-results-empty.png"))
            page.get_by_role("tab", name="Query & attribute").click()
            page.locator("#generate-btn").click()
            page.locator("#generated-gallery img").first.wait_for()
            page.wait_for_timeout(600)
            page.screenshot(path=path("05-default-model-query.png"), full_page=True)
            open_run(page, RUN)
            page.locator("#topk-gallery .thumbnail-item").nth(2).click()
            # "why" replays the unlearning (a minute or more on a busy CPU)
            expect(page.locator("#why-text")).to_contain_text("rank 3 of", timeout=900_000)
            page.locator("#plot-why .js-plotly-plot").first.wait_for()
            page.locator("#methods-btn").click()
            page.locator("#methods-grid img").first.wait_for()
            page.locator("#plot-methods .js-plotly-plot").first.wait_for()
            scroll_all(page)
            page.screenshot(path=path("06-default-model-example-results.png"), full_page=True)
            page.locator("#why-panel").screenshot(path=path("07-why-this-image.png"))
            page.locator("#methods-panel").screenshot(path=path("08-methods-side-by-side.png"))
            with page.expect_download() as dl:
                page.locator("#download-report").click()
            report = os.path.join(tmp, "report.html")
            dl.value.save_as(report)
            page.get_by_role("tab", name="History & overlap").click()
            page.locator("#overlap-select input").first.click()
            for r in (RUN,) + OTHERS:
                page.get_by_role("option", name=r, exact=True).click()
            page.keyboard.press("Escape")
            page.locator("#overlap-btn").click()
            page.locator("#runs-grid img").first.wait_for()
            page.locator("#plot-overlap .js-plotly-plot").first.wait_for()
            scroll_all(page)
            page.screenshot(path=path("09-runs-side-by-side.png"), full_page=True)
            shoot_collection(page, ex, path)
            shoot_phone_and_report(ctx, path, report)
            browser.close()
    finally:
        demo.close()
    print("screenshots in", a.out)


if __name__ == "__main__":
    main()
