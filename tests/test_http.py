"""The app over HTTP on 127.0.0.1 (issue 14), on the embedded default model (nothing is trained):
every API route behind the login, nothing outside the run folders served through
/gradio_api/file=, run ids made after start-up accepted without a list call, cancel by job id from
another client, the per-request time and step limits, and a bounded load test (no timing asserts)."""
import http.client
import json
import os
import re
import socket
import statistics
import threading
import time
import urllib.parse

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
import gradio as gr  # noqa: E402

import app  # noqa: E402
from mucs.method.attribute import Attribution  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402

AUTH = ("alice", "s3cret-pass")
SMALL = dict(noises=8, null_batches=2, null_batch_size=16, batch_size=16, max_steps=4, top_k=5)
LONG = dict(top_k=5, noises=16, tol=0.0, max_steps=10_000)    # the settings dict of /attribute: τ = 0, a long run
SECRET = "top secret: never served"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on 127.0.0.1 with --auth, its Explorer, base URL, port and folder."""
    root = tmp_path_factory.mktemp("http")
    (root / "secret.txt").write_text(SECRET)           # next to the runs folder, not in it
    mp = pytest.MonkeyPatch()
    mp.setenv("MUCS_CACHE_DIR", str(root / "cache"))
    ex = Explorer(DEFAULT_MODEL, DEFAULT_DATA, SMALL, runs_dir=str(root / "runs"), examples_dir=None)
    demo = app.build(ex)
    port = free_port()
    app.launch(demo, ex, port=port, auth=AUTH, prevent_thread_lock=True, quiet=True)
    try:
        yield dict(ex=ex, url=f"http://127.0.0.1:{port}/", port=port, root=root, demo=demo,
                   fns={f.api_name: f for f in demo.fns.values()})
    finally:
        demo.close()
        mp.undo()


def raw(port, method, path, headers=None, body=None):
    """One HTTP request sent exactly as written (no URL normalisation): (status, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), r.getheaders()
    finally:
        conn.close()


def login(port, user=AUTH[0], password=AUTH[1]):
    """POST /login; the session cookies as one Cookie header ('' when refused) and the status."""
    body = urllib.parse.urlencode(dict(username=user, password=password))
    status, _, headers = raw(port, "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"}, body)
    cookies = [v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie"]
    return status, "; ".join(cookies)


def client(served):
    from gradio_client import Client
    return Client(served["url"], auth=AUTH, verbose=False)


def fake_run(ex, seed=0) -> str:
    """A complete run written straight into the run store (as another process or session would)."""
    rng = np.random.default_rng(seed)
    n = len(ex.data)
    scores = rng.normal(size=n)
    att = Attribution(scores=scores, top=np.argsort(-scores)[:5], loss_original=rng.random(n) + 0.1,
                      loss_unlearned=rng.random(n) + 0.1, loss_null=1.0, steps=3, converged=True,
                      curve=[dict(step=i, loss_f=0.2 * i, loss_r=0.3) for i in range(3)],
                      stage_times=dict(total=1.0), settings=ex.settings.to_dict(),
                      query=dict(label=1, class_name=ex.class_name(1), conversions=[], source="test"),
                      query_image=ex.data.images[0], labels=ex.data.labels,
                      info=dict(data_fingerprint=ex.data.fingerprint(), num_train=n))
    return ex.store.save(att, dict(kind="test", source="test"))


# --- auth -----------------------------------------------------------------------------------------
def test_every_api_route_needs_the_login(served):
    from gradio_client import Client
    port, ex = served["port"], served["ex"]
    rid = fake_run(ex, 1)
    run_file = os.path.join(ex.store.path(rid), "scores.csv")
    for method, path, body in (("GET", "/gradio_api/info", None), ("GET", "/config", None),
                               ("POST", "/gradio_api/call/list_runs", json.dumps({"data": []})),
                               ("POST", "/gradio_api/call/open_run", json.dumps({"data": [rid]})),
                               ("POST", "/gradio_api/queue/join", json.dumps({"data": [], "fn_index": 0,
                                                                              "session_hash": "x"})),
                               ("GET", f"/gradio_api/file={run_file}", None)):
        status, data, _ = raw(port, method, path, {"Content-Type": "application/json"}, body)
        assert status in (401, 403), (path, status, data[:200])
        assert b"index,score" not in data and rid.encode() not in data
    assert login(port, AUTH[0], "wrong")[0] == 400 and login(port, "", "")[0] in (400, 422)
    from gradio_client.exceptions import AuthenticationError
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(served["url"], verbose=False)
    with pytest.raises((AuthenticationError, ValueError), match="Could not login"):
        Client(served["url"], auth=(AUTH[0], "wrong"), verbose=False)
    status, cookie = login(port)
    assert status == 200 and cookie
    assert raw(port, "GET", "/gradio_api/info", {"Cookie": cookie})[0] == 200
    table, _, _ = client(served).predict(api_name="/list_runs")
    assert rid in {row[0] for row in table["data"]}


# What the login page itself needs: the only routes that answer before the login (issue 21, point 3)
LOGIN_PAGE = {("GET", "/"), ("HEAD", "/"), ("POST", "/login"), ("POST", "/login/"), ("GET", "/favicon.ico"),
              ("GET", "/theme.css"), ("GET", "/gradio_api/theme.css"), ("GET", "/robots.txt"),
              ("GET", "/manifest.json"), ("GET", "/pwa_icon"), ("GET", "/pwa_icon/{size}"),
              ("GET", "/svelte/{path:path}"), ("GET", "/static/{path:path}"), ("GET", "/assets/{path:path}")}


def route_table(routes, prefix=""):
    """(path, methods) of every route of a Starlette/FastAPI app, into included routers and mounts."""
    for r in routes:
        sub = getattr(r, "original_router", None)            # FastAPI's lazily included router
        if sub is not None:
            yield from route_table(sub.routes, prefix + getattr(getattr(r, "include_context", None), "prefix", ""))
        elif getattr(r, "routes", None) and getattr(r, "path", None) is not None:   # a mounted app
            yield from route_table(r.routes, prefix + r.path)
        elif getattr(r, "path", None) is not None:
            yield prefix + r.path, sorted(getattr(r, "methods", None) or {"GET"})


def test_the_whole_route_table_is_behind_the_login(served):
    """Every route Gradio serves (the live route table, so a route a later Gradio adds is covered too)
    answers 401 without the login, except the login page's own (LOGIN_PAGE), which leak nothing."""
    port, ex, demo = served["port"], served["ex"], served["demo"]
    rid = fake_run(ex, 5)
    body = json.dumps(dict(session_hash="victim", event_id="e1", fn_index=0, data=[rid], trigger_id=0))
    answered, checked = set(), 0
    for path, methods in route_table(demo.server_app.routes):
        for method in methods:
            concrete = re.sub(r"\{[^}]*\}", rid if "file" in path else "x", path)
            status, data, _ = raw(port, method, concrete, {"Content-Type": "application/json"},
                                  body if method in ("POST", "PUT", "PATCH", "DELETE") else None)
            checked += 1
            if status in (401, 403):
                continue
            answered.add((method, path))
            assert rid.encode() not in data and b"index,score" not in data, (method, path, status)
    assert checked > 60 and answered <= LOGIN_PAGE, sorted(answered - LOGIN_PAGE)
    # the routes the issue found open, one by one: 401 without the login, served with it
    _, cookie = login(port)
    open_before = [("POST", "/gradio_api/cancel", body), ("POST", "/gradio_api/reset", body),
                   ("GET", "/gradio_api/heartbeat/victim", None), ("GET", "/gradio_api/openapi.json", None),
                   ("GET", "/gradio_api/app_id", None), ("GET", "/gradio_api/user", None),
                   ("GET", "/gradio_api/token", None), ("GET", "/gradio_api/runs", None),
                   ("GET", "/gradio_api/startup-events", None)]
    for method, path, data in open_before:
        assert raw(port, method, path, {"Content-Type": "application/json"}, data)[0] == 401, path
    for method, path in (("GET", "/gradio_api/app_id"), ("GET", "/gradio_api/openapi.json")):
        assert raw(port, method, path, {"Cookie": cookie})[0] == 200, path
    assert raw(port, "GET", "/gradio_api/info", {"Cookie": "access-token-x=forged"})[0] == 401


# --- file= traversal --------------------------------------------------------------------------------
def test_file_route_serves_nothing_outside_the_run_folders(served):
    port, ex, root = served["port"], served["ex"], served["root"]
    _, cookie = login(port)
    h = {"Cookie": cookie}
    rid = fake_run(ex, 2)
    inside = os.path.join(ex.store.path(rid), "scores.csv")
    status, body, _ = raw(port, "GET", f"/gradio_api/file={inside}", h)
    assert status == 200 and body.startswith(b"rank,index,score")      # the route works for a run's own files
    runs, secret = ex.store.root, str(root / "secret.txt")
    q = urllib.parse.quote
    probes = [f"/gradio_api/file={secret}", f"/gradio_api/file={q(secret, safe='')}",
              f"/gradio_api/file={runs}/../secret.txt", f"/gradio_api/file={runs}/%2e%2e/secret.txt",
              f"/gradio_api/file={runs}/..%2fsecret.txt", f"/gradio_api/file={runs}/%252e%252e/secret.txt",
              f"/gradio_api/file={ex.store.path(rid)}/../../secret.txt",
              "/gradio_api/file=../../../../../../etc/passwd", "/gradio_api/file=/etc/passwd",
              "/gradio_api/file=%2Fetc%2Fpasswd", "/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
              "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/gradio_api/file=..\\..\\..\\etc\\passwd",
              "/gradio_api/file=~/.bashrc", "/gradio_api/file=file:///etc/passwd",
              f"/gradio_api/file={os.path.join(DEFAULT_MODEL, 'unet', 'config.json')}",
              f"/gradio_api/file={os.path.abspath(app.__file__)}",
              f"/gradio_api/file=http://127.0.0.1:{port}/config",              # no fetching of local URLs
              "/file=/etc/passwd", f"/gradio_api/file={secret}%00.csv"]
    for path in probes:
        status, body, _ = raw(port, "GET", path, h)
        assert status != 200, (path, status)
        assert b"root:" not in body and SECRET.encode() not in body and b"UNet2DModel" not in body, path
        assert b"import gradio" not in body, path


# --- run ids made after start-up ----------------------------------------------------------------------
def test_run_ids_made_after_start_up_work_without_a_list_call(served):
    ex = served["ex"]
    c = client(served)                              # its page (and dropdown choices) predate the runs below
    a, b = fake_run(ex, 3), fake_run(ex, 4)
    out = c.predict(a, api_name="/open_run")
    assert a in out and any(isinstance(o, str) and o.startswith("**Run**") for o in out)
    heat, dist, rec, text = c.predict([a, b], api_name="/overlap")
    assert "Mean pairwise overlap of 2 runs" in text
    assert a in c.predict([a, b], api_name="/compare_runs")
    c.predict(b, api_name="/delete_run")
    assert b not in ex.store.ids() and a in ex.store.ids()
    for bad in ("no-such-run", "../secret.txt", b):
        with pytest.raises(Exception, match="unknown run"):
            c.predict(bad, api_name="/open_run")
    with pytest.raises(Exception, match="unknown run"):
        c.predict([a, "../../etc"], api_name="/overlap")


# --- /attribute over plain HTTP (the curl example of docs/api.md) -------------------------------------------
def call(port, api, data, cookie, session, every=False):
    """One call as the curl example of docs/api.md makes it: POST /gradio_api/call/<api> with the data and a
    session of the caller's choosing, then GET its event stream. (last event, its data), or with `every`
    the list of (event, raw data) of the whole stream."""
    h = {"Cookie": cookie, "Content-Type": "application/json"}
    status, body, _ = raw(port, "POST", f"/gradio_api/call/{api}", h, json.dumps(dict(data=data, session_hash=session)))
    assert status == 200, body[:300]
    status, body, _ = raw(port, "GET", f"/gradio_api/call/{api}/{json.loads(body)['event_id']}", h)
    events = [e for e in re.findall(r"event: (\w+)\ndata: (.*)", body.decode()) if e[0] != "heartbeat"]
    assert status == 200 and events, body[:300]
    return events if every else (events[-1][0], json.loads(events[-1][1]))


def test_attribute_over_plain_http_takes_a_settings_dict(served):
    port, ex = served["port"], served["ex"]
    _, cookie = login(port)
    session = "curl-example"            # the query made by /use_training stays in this session
    assert call(port, "use_training", [5], cookie, session)[0] == "complete"
    label, before = int(ex.training_item(5).label), set(ex.store.ids())
    event, data = call(port, "attribute", [label, {"nosies": 4}], cookie, session)
    assert event == "error" and "unknown setting 'nosies' (did you mean 'noises'?)" in json.dumps(data)
    assert set(ex.store.ids()) == before
    events = call(port, "attribute", [label, {"top_k": 3}], cookie, session, every=True)
    event, data = events[-1][0], json.loads(events[-1][1])
    assert event == "complete" and data[0].startswith("**done**")
    (rid,) = set(ex.store.ids()) - before
    assert data[3] == rid and ex.store.load(rid).settings["top_k"] == 3     # docs/api.md's curl reads [3]
    # progress events stay small: a status line, and the live curve only when it grew, without plotly's
    # 6.5 KB named template (the curl example printed 5.3 MB for one run)
    progress = [len(d) for e, d in events[:-1] if e == "generating" and "**done**" not in d[:40]]   # not the result
    assert progress and max(progress) < 5000, progress
    assert sum(progress) < 2500 * len(progress), progress
    assert ex.store.load(rid).settings["noises"] == SMALL["noises"]      # the rest: the recommended settings


# --- cancel by job id, time and step limits -------------------------------------------------------------
def _no_worker_left(timeout=60):
    t0 = time.time()
    while [t for t in threading.enumerate() if t.name == "mucs-attribute"] and time.time() - t0 < timeout:
        time.sleep(0.1)
    return not [t for t in threading.enumerate() if t.name == "mucs-attribute"]


def test_cancel_by_job_id_from_another_client(served):
    ex = served["ex"]
    before = ex.store.ids()
    c1, c2 = client(served), client(served)
    c1.predict(5, api_name="/use_training")
    job = c1.submit(1, LONG, api_name="/attribute")
    job_id, t0 = None, time.time()
    while job_id is None and time.time() - t0 < 120:      # the job id comes with the first update
        ids = [o[-1] for o in job.outputs() if o and o[-1]]
        job_id = ids[0] if ids else None
        time.sleep(0.1)
    assert job_id and [j["id"] for j in ex.running_jobs()] == [job_id]
    assert c2.predict("not-a-job", api_name="/cancel").startswith("**nothing to cancel**")
    assert not job.done()
    assert c2.predict(job_id, api_name="/cancel").startswith("**cancelled**")   # another session, by id
    with pytest.raises(Exception, match="cancelled"):
        job.result(timeout=120)
    assert _no_worker_left() and ex.running_jobs() == [] and ex.store.ids() == before


def test_request_time_limit_stops_a_runaway_attribution_and_frees_the_slot(served, monkeypatch):
    ex, fns = served["ex"], served["fns"]
    before = ex.store.ids()
    monkeypatch.setattr(ex, "max_request_seconds", 1.0)
    q = ex.training_item(5)
    with pytest.raises(gr.Error, match=r"stopped after 1 s: .*longer than 1 s .*--max-request-seconds"):
        for _ in fns["attribute"].fn(q, int(q.label), LONG, request=gr.Request()):
            pass
    assert _no_worker_left() and ex.running_jobs() == [] and ex.store.ids() == before
    # the heavy slot is free again: the next heavy request over HTTP runs
    gallery, *_ = client(served).predict(1, 3, 1, 5, api_name="/generate")
    assert len(gallery) == 1


def test_step_cap_and_memory_limits_are_clean_errors(served):
    ex, fns = served["ex"], served["fns"]
    q = ex.training_item(5)
    for settings, msg in ((dict(top_k=5, noises=16, tol=0.0, max_steps=10**6), "above this app's limit of 10000"),
                          (dict(top_k=5, noises=10**9), r"needs ~[\d.]+ [KMGT]iB"),
                          (dict(noises=16, noise_fraction=1e-300), "")):
        if not msg:     # a tiny f is fine now: the fine grid is never materialised
            assert ex.user_settings(dict(noises=16, noise_fraction=1e-300)).noise_fraction == 1e-300
            continue
        with pytest.raises(gr.Error, match=msg):
            list(fns["attribute"].fn(q, int(q.label), settings, request=gr.Request()))
    with pytest.raises(gr.Error, match=r"max_steps must be in \[0, 1e\+07\]"):   # beyond any step cap: its range
        list(fns["attribute"].fn(q, int(q.label), dict(top_k=5, max_steps=10**12), request=gr.Request()))
    assert ex.running_jobs() == []
    with pytest.raises(SystemExit):
        app.parse_args(["--max-request-seconds", "0"])
    a = app.parse_args(["--max-request-seconds", "3600", "--max-steps-limit", "50000"])
    assert (a.max_request_seconds, a.max_steps_limit) == (3600.0, 50000)


def test_job_registry_stays_bounded(served):
    from mucs.explorer.state import MAX_JOBS
    ex = served["ex"]
    jobs = [ex.start_job(f"s{i}", None) for i in range(MAX_JOBS + 40)]
    assert len(ex.running_jobs()) == MAX_JOBS
    assert ex.cancel("s3") is False and ex.cancel(jobs[-1].id) and jobs[-1].event.is_set()
    assert ex.cancel(f"s{MAX_JOBS + 39 - 1}") and jobs[-2].event.is_set()
    for j in jobs:
        ex.finish_job(j)
    assert ex.running_jobs() == []
    with ex.job("s", None) as j:
        assert [r["id"] for r in ex.running_jobs()] == [j.id]
    assert ex.running_jobs() == []


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
def _file_urls(value) -> list:
    """The /gradio_api/file= URLs of an event's data (gallery items, images)."""
    if isinstance(value, dict):
        url = value.get("url")
        here = [url[url.index("/gradio_api/file="):]] if isinstance(url, str) and "/gradio_api/file=" in url else []
        return here + [u for v in value.values() for u in _file_urls(v)]
    if isinstance(value, list):
        return [u for v in value for u in _file_urls(v)]
    return []


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
    urls = _file_urls(data)
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
