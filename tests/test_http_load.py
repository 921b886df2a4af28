"""The app over HTTP under load: a bounded load test on /list_runs (no timing asserts), damaged run folders,
bad values, the API page, and files served whole while runs are opened and rewritten."""
import http.client
import json
import os
import re
import statistics
import sys
import threading
import time

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
import gradio as gr  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from open_run_speed import file_urls  # noqa: E402  (the benchmark's, shared: the URLs of an event's files)
from http_helpers import call, client, fake_run, login, raw  # noqa: E402


# --- bounded load test ------------------------------------------------------------------------------------
def test_bounded_load_on_list_runs(served):
    """50 /list_runs calls through the REST API (POST + event stream: 100 requests) from 5 threads,
    all must succeed; the latencies are printed, not asserted (this machine is shared)."""
    port = served["port"]
    _, cookie = login(port)
    h = {"Cookie": cookie, "Content-Type": "application/json"}
    times, errors = [], []

    def one():
        t0 = time.perf_counter()
        status, body, _ = raw(port, "POST", "/gradio_api/call/list_runs", h, json.dumps({"data": []}))
        if status != 200:
            return errors.append((status, body[:200]))
        event = json.loads(body)["event_id"]
        status, body, _ = raw(port, "GET", f"/gradio_api/call/list_runs/{event}", h)
        if status != 200 or b"event: complete" not in body:
            return errors.append((status, body[:300]))
        times.append(time.perf_counter() - t0)

    def worker():
        for _ in range(10):
            one()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    wall = time.perf_counter() - t0
    assert errors == [] and len(times) == 50
    q = statistics.quantiles(times, n=20)
    print(f"\nload: 50 /list_runs calls (100 HTTP requests), 5 threads, {wall:.2f} s; "
          f"p50 {statistics.median(times) * 1000:.0f} ms, p95 {q[18] * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")


# --- issue 21, point 2: malformed run folders are listed as damaged, for every client -----------------------
def test_list_runs_survives_malformed_run_folders(served):
    import shutil

    from conftest import damaged_runs
    ex = served["ex"]
    good = fake_run(ex, 21)
    broken = damaged_runs(ex.store.path(good), ex.store.root)
    try:
        c = client(served)
        table, choices, _ = c.predict(api_name="/list_runs")
        rows = {r[0]: r for r in table["data"]}
        assert set(broken) <= set(rows) and good in rows
        for name in ("result-list", "settings-list", "meta-list", "result-deep", "meta-deep"):
            assert rows[name][2] == "damaged" and broken[name] in rows[name][3]
        for name in ("result-deep", "scores-nan", "query-huge"):
            with pytest.raises(Exception, match="damaged"):
                c.predict(name, api_name="/open_run")
        assert good in c.predict(good, api_name="/open_run")
    finally:
        for name in broken:
            shutil.rmtree(os.path.join(ex.store.root, name), ignore_errors=True)


def test_generate_and_pick_with_bad_values_are_clean_errors(served):
    """Issue 21, point 8: a seed of 10^30 or None, steps NaN, a pick without a selection: one clean
    message each (over HTTP and as app functions), never a traceback."""
    with pytest.raises(Exception, match=r"the seed must be an integer in 0\.\."):
        client(served).predict(1, 10**30, 1, 5, api_name="/generate")
    fns = served["fns"]
    for seed, steps, expect in ((None, 5, "the seed must be an integer"), (3, float("nan"), "sampler steps must be"),
                                (3, 2.5, "sampler steps must be"), (-1, 5, "the seed must be")):
        with pytest.raises(gr.Error, match=expect):
            fns["generate"].fn(1, seed, 1, steps, request=gr.Request())
    assert client(served).predict("", api_name="/cancel") == "**nothing to cancel**: nothing of yours is running"
    q = served["ex"].training_item(5)
    for evt in (None, gr.SelectData(None, {"index": 7, "value": None})):
        with pytest.raises(gr.Error, match="pick one of the 1 generated images"):
            fns["pick_generated"].fn([q], evt)


def test_api_page_names_every_component_and_answers_the_mcp_probe(served):
    """"Use via API" lists each endpoint's outputs by label (an unlabelled one showed as `value_106`), and
    its probe for an MCP server gets the app's answer (MCP is off), not a missing route."""
    info = served["demo"].get_api_info()["named_endpoints"]
    unnamed = [(api, r.get("label")) for api, ep in info.items() for r in ep["parameters"] + ep["returns"]
               if not r.get("label") or re.fullmatch(r"(value|param)_\d+", str(r.get("label")))]
    assert not unnamed, unnamed
    _, cookie = login(served["port"])
    status, body, _ = raw(served["port"], "GET", "/gradio_api/mcp/schema", {"Cookie": cookie})
    assert status == 404 and "MCP is off" in json.loads(body)["detail"]


# --- issue 21, point 12: files served whole under load, also while runs are opened and rewritten ------------


def _download(port, path, cookie):
    """(status, body, Content-Length) of one GET, or (None, error) when the connection broke mid-body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Cookie": cookie})
        r = conn.getresponse()
        length = r.getheader("Content-Length")
        return r.status, r.read(), int(length) if length is not None else None
    except (http.client.HTTPException, OSError) as e:
        return None, repr(e), None
    finally:
        conn.close()


def test_files_are_served_whole_while_runs_are_opened_and_rewritten(served):
    """Clients open runs and download their files (the galleries' images, a run's scores.csv and
    query.png) while other runs are opened and one run folder is rewritten over and over (`mucs attribute
    --out` into the runs folder). Every download is complete: status 200, as many bytes as its
    Content-Length, the bytes of one whole version of the file; every /open_run succeeds. (Before: Gradio
    rewrote a gallery image in place for each request showing it, and measured a file by its path before
    opening it again, so a client got a truncated or overlong body, or none between a rewrite's renames.)"""
    import dataclasses

    from gradio import processing_utils
    from PIL import Image

    from mucs.explorer.history import write_run
    # Gradio's image writer (every gallery and image output) leaves a file it already wrote alone
    image, cache = Image.new("L", (8, 8), 7), str(served["root"] / "gradio-cache")
    first = processing_utils.save_pil_to_cache(image, cache, format="png")
    st = os.stat(first)
    time.sleep(0.02)
    assert processing_utils.save_pil_to_cache(image, cache, format="png") == first
    assert (os.stat(first).st_ino, os.stat(first).st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    port, ex = served["port"], served["ex"]
    _, cookie = login(port)
    rids = [fake_run(ex, 40 + i) for i in range(3)]
    rewritten = ex.store.path(rids[2])
    att = ex.store.load(rids[2])
    versions = [att, dataclasses.replace(att, scores=att.scores * 1e-7, query_image=255 - att.query_image)]
    wanted = {name: set() for name in ("scores.csv", "query.png")}
    for v in versions:
        for name in wanted:
            wanted[name].add(v.files(ex.class_names)[name])
    assert all(len({len(b) for b in bodies}) == 2 for bodies in wanted.values())   # the versions' sizes differ
    event, data = call(port, "open_run", [rids[0]], cookie, "load-0")
    urls = file_urls(data)
    assert event == "complete" and len(urls) >= 10, data     # query, top-k and neighbours
    stop, failures, counts = threading.Event(), [], dict(open=0, files=0, run_files=0, rewrites=0)

    def rewrite():
        i = 0
        while not stop.is_set():
            write_run(versions[i % 2], rewritten, dict(kind="test", source="rewritten"), class_names=ex.class_names)
            i += 1
            counts["rewrites"] = i

    def opener(k):
        while not stop.is_set():
            rid = rids[(k + counts["open"]) % 3]
            try:
                event, data = call(port, "open_run", [rid], cookie, f"load-{k}")
            except AssertionError as e:
                event, data = "broken", str(e)
            if event != "complete":
                failures.append(("open_run", rid, str(data)[:300]))
            counts["open"] += 1

    def downloader(k):
        while not stop.is_set():
            for path in urls[k::3]:
                status, body, length = _download(port, path, cookie)
                if status != 200 or length != len(body) or not body:
                    failures.append((path, status, length, len(body)))
                counts["files"] += 1
            for name in wanted:
                status, body, length = _download(port, f"/gradio_api/file={os.path.join(rewritten, name)}", cookie)
                if status != 200 or length != len(body) or body not in wanted[name]:
                    failures.append((name, status, length, len(body) if isinstance(body, bytes) else body))
                counts["run_files"] += 1
    threads = [threading.Thread(target=rewrite)] + [threading.Thread(target=opener, args=(k,)) for k in range(3)] + \
        [threading.Thread(target=downloader, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    enough = dict(open=6, files=30, run_files=20, rewrites=20)    # at least 4 s and this much traffic (30 s at most)
    t0 = time.time()
    while time.time() - t0 < 30 and not failures and (time.time() - t0 < 4 or any(counts[k] < n for k, n in enough.items())):
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(120)
    print(f"\nload: {counts} in {time.time() - t0:.1f} s, {len(failures)} failures")
    assert failures == [], failures[:5]
    assert all(counts[k] >= n for k, n in enough.items()), counts
