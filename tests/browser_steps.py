"""The steps of the browser flow (tests/test_browser.py), one function per view, on one page of the app:
each acts as a user would and checks what the page shows."""
import os
import re

import playwright.sync_api as sync_api
from take import scroll_all

TABS = ("Query & attribute", "Results", "Batch & collections", "History & overlap")


def shot(page, name, locator=None, full_page=True):
    d = os.environ.get("MUCS_SCREENSHOT_DIR")
    if not d:
        return
    os.makedirs(d, exist_ok=True)
    scroll_all(page)
    if locator is not None:
        locator.screenshot(path=os.path.join(d, name))
    else:
        page.screenshot(path=os.path.join(d, name), full_page=full_page)


def choose(page, select_id, n):
    """Tick the first n options of a multiselect dropdown."""
    page.locator(f"#{select_id} input").first.click()
    for i in range(n):   # the list stays open; chosen options get a tick
        page.get_by_role("option").nth(i).click()
    page.keyboard.press("Escape")


def open_first_run(page):
    page.get_by_role("tab", name="History & overlap").click()
    page.locator("#run-select input").first.click()
    page.get_by_role("option").first.click()
    page.locator("#open-btn").click()
    page.locator("#topk-gallery img").first.wait_for()


def empty_results_view(page):
    """Explanations on the page (collapsed), and an empty Results tab that says what to do."""
    # explanations on the page (collapsed) and an empty state that says what to do
    page.locator("#help-method").get_by_text("How MUCS works").click()
    sync_api.expect(page.locator("#help-method")).to_contain_text("L_null")
    page.get_by_role("tab", name="Results").click()
    sync_api.expect(page.locator("#results-empty")).to_contain_text("No results yet")
    sync_api.expect(page.locator("#results-empty")).to_contain_text("Attribute")
    # the empty tab is the hint alone, not ~3,000 px of empty placeholders
    sync_api.expect(page.locator("#topk-gallery")).to_be_hidden()
    assert page.locator("#tab-results").bounding_box()["height"] < 400
    page.get_by_role("tab", name="Query & attribute").click()


def generate_and_edit_a_setting(page):
    """Generate a query, then edit a setting widget (λ = 0.25); returns the Settings accordion's label."""
    # generate: gallery and the query preview appear
    page.locator("#generate-btn").click()
    page.locator("#generated-gallery img").first.wait_for()
    page.locator("#query-image img").wait_for()
    sync_api.expect(page.locator("#query-info")).to_contain_text("generated")
    shot(page, "01-query.png")
    # the settings widgets feed the one settings dict of /attribute: an edited widget reaches the run
    settings = page.locator("#settings").get_by_text("Settings", exact=True).first
    settings.click()
    lam = page.locator("#set-lam input")
    # the page's load event fills the widgets with the recommended settings and may land after
    # the first typing: type until the value has stayed 0.25 for a second
    for _ in range(20):
        lam.fill("0.25")
        lam.press("Tab")
        page.wait_for_timeout(1000)
        if lam.input_value() == "0.25":
            break
    sync_api.expect(lam).to_have_value("0.25")
    return settings


def attribute(page, ex, timeout):
    """Attribute with the page's settings: the overall progress only grows, the results show; returns the run."""
    # attribute: the overall progress only grows; the Results tab opens with gallery and plots
    page.locator("#attribute-btn").click()
    seen, polls = [], 0
    while page.locator("#topk-gallery img").count() == 0:
        m = re.search(r"overall (\d+)%", page.locator("#status").inner_text())
        if m:
            seen.append(int(m.group(1)))
        page.wait_for_timeout(150)
        polls += 1
        assert polls < timeout / 150, "no results in time"
    assert seen == sorted(seen), seen
    for pid in ("plot-histogram", "plot-scatter", "plot-curve", "plot-classes"):
        page.locator(f"#{pid} .js-plotly-plot").first.wait_for()
    run_id = page.locator("#run-id textarea, #run-id input").first.input_value()
    assert run_id in ex.store.ids()
    sync_api.expect(page.locator("#results-empty")).to_be_hidden()
    # captions: rank · index · class · score, whole (not cut with an ellipsis)
    att = ex.store.load(run_id)
    lam = page.locator("#set-lam input").input_value()
    assert (att.settings["lam"], att.settings["top_k"]) == (0.25, ex.settings.top_k), (att.settings, lam)
    cap = page.locator("#topk-gallery .caption-label").first
    sync_api.expect(cap).to_contain_text(f"#1 · {int(att.top[0])}")
    sync_api.expect(cap).to_contain_text(f"{att.scores[att.top[0]]:.4f}")
    assert cap.evaluate("e => e.scrollWidth <= e.clientWidth + 1 && getComputedStyle(e).position === 'static'")
    shot(page, "02-results.png")
    return run_id, att


def why_and_methods(page, att):
    """Why this image (the second top-k image) and methods side by side; returns k."""
    # why this image: click the second top-k image
    page.locator("#topk-gallery .thumbnail-item").nth(1).click()
    sync_api.expect(page.locator("#why-text")).to_contain_text(f"Training image {int(att.top[1])}")
    sync_api.expect(page.locator("#why-text")).to_contain_text("rank 2 of")
    sync_api.expect(page.locator("#why-text")).to_contain_text("pixel NN")
    page.locator("#plot-why .js-plotly-plot").first.wait_for()
    page.locator("#why-neighbours img").first.wait_for()
    shot(page, "07-why-this-image.png", page.locator("#why-panel"))
    # methods side by side
    page.locator("#methods-btn").click()
    page.locator("#methods-grid img").first.wait_for()
    k = len(att.top)
    from mucs.explorer.compare import METHODS     # every method scores this pixel class model
    assert page.locator("#methods-grid img").count() == len(METHODS) * k + 1
    sync_api.expect(page.locator("#methods-text")).to_contain_text("Shared with MUCS")
    page.locator("#plot-methods .js-plotly-plot").first.wait_for()
    shot(page, "08-methods-side-by-side.png", page.locator("#methods-panel"))
    return k


def downloads(page, tmp_path, run_id):
    """The report and the scores CSV as downloads; returns the report's path."""
    # the report: a download button (no empty panel), one file that opens offline
    with page.expect_download() as dl:
        page.locator("#download-report").click()
    report = tmp_path / "report.html"
    dl.value.save_as(str(report))
    assert "MUCS report" in report.read_text() and run_id in report.read_text()
    with page.expect_download() as dl:
        page.locator("#download-data").click()
    assert dl.value.suggested_filename.endswith(".csv")
    return report


def history_and_overlap(page, run_id):
    """History (one line per cell) and two runs compared."""
    # history: main settings per run; runs side by side with shared images highlighted
    page.get_by_role("tab", name="History & overlap").click()
    sync_api.expect(page.locator("#history-table")).to_contain_text(run_id)
    sync_api.expect(page.locator("#history-table")).to_contain_text("lr ÷")
    # no word broken over lines: every header and cell of the history is one line of text
    lines = page.locator("#history-table").evaluate(   # the lines each text of a header or cell takes
        "t => { const out = []; const w = document.createTreeWalker(t, NodeFilter.SHOW_TEXT);"
        " for (let n = w.nextNode(); n; n = w.nextNode()) { if (!n.textContent.trim()) continue;"
        " const r = document.createRange(); r.selectNodeContents(n);"
        " const tops = new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top)));"
        " out.push([n.textContent.trim(), tops.size]); } return out; }")
    shown = [(text, n) for text, n in lines if n]        # hidden menu icons take no line
    assert len(shown) > 30 and all(n == 1 for _, n in shown), [x for x in shown if x[1] != 1][:5]
    choose(page, "overlap-select", 2)
    page.locator("#overlap-btn").click()
    sync_api.expect(page.locator("#overlap-summary")).to_contain_text("Mean pairwise overlap")
    page.locator("#runs-grid img").first.wait_for()
    assert page.locator("#runs-grid .r").count() == 2
    page.locator("#plot-overlap .js-plotly-plot").first.wait_for()
    shot(page, "03-history-overlap.png")


def bad_upload(page, ex, settings, tmp_path):
    """A text file named .png: a clear message, the file box emptied, nothing saved."""
    # a text file named .png: a clear message, no Python reprs, the file box emptied, nothing saved
    before = sorted(ex.store.ids())
    page.get_by_role("tab", name="Query & attribute").click()
    settings.click()                       # close the Settings opened above (as on the screenshots)
    page.get_by_role("tab", name="Upload").click()
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image\n")
    page.locator("#upload-file input[type=file]").set_input_files(str(bad))
    page.get_by_text("is not in a known image format").first.wait_for()
    page.wait_for_timeout(600)   # let the toast finish fading in
    assert "BytesIO" not in page.content() and "object at 0x" not in page.content()
    sync_api.expect(page.locator("#upload-file")).not_to_contain_text("notes.png")
    shot(page, "04-upload-error.png", full_page=False)
    assert sorted(ex.store.ids()) == before
    page.get_by_role("tab", name="Training image").click()
    page.locator("#train-btn").click()
    sync_api.expect(page.locator("#query-info")).to_contain_text("training item")


def phone(ctx, url, requests):
    """A phone screen: every view reachable, captions whole."""
    # a phone screen: the three views stay reachable, captions whole
    phone = ctx.new_page()
    phone.on("request", lambda r: requests.append(r.url))
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.set_default_timeout(180_000)
    phone.goto(url)
    phone.locator("#generate-btn").wait_for()
    for name in TABS:
        sync_api.expect(phone.get_by_role("tab", name=name)).to_be_visible()
    open_first_run(phone)
    cap = phone.locator("#topk-gallery .caption-label").first
    sync_api.expect(cap).to_contain_text("#1 · ")
    assert cap.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    shot(phone, "10-phone-results.png", full_page=False)
    phone.close()


def offline_report(ctx, report, k):
    """The downloaded report opened from disk: every image shows, nothing is requested."""
    # the downloaded report in the browser, from disk: every image shows, nothing is requested
    offline = ctx.new_page()
    asked = []
    offline.on("request", lambda r: asked.append(r.url))
    offline.set_viewport_size({"width": 1200, "height": 1500})
    offline.goto(report.as_uri())
    assert offline.locator("img").count() >= k + 1
    assert offline.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert offline.locator("svg.chart").count() == 4
    assert all(u.startswith(("file:", "data:")) for u in asked), asked[:5]
    shot(offline, "11-report.png", full_page=False)
    offline.close()
