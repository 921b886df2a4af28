"""The app over HTTP on 127.0.0.1, on the embedded default model (nothing is trained): every API route
behind the login, nothing outside the run folders served through /gradio_api/file=, run ids made after
start-up accepted without a list call, cancel by job id from another client, the per-request time and
step limits (the load tests: tests/test_http_load.py)."""
import json
import os
import re
import threading
import time
import urllib.parse

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
import gradio as gr  # noqa: E402

import app  # noqa: E402
from mucs.defaults import DEFAULT_MODEL  # noqa: E402

from http_helpers import AUTH, LONG, SECRET, SMALL, call, client, fake_run, login, raw  # noqa: E402


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
