"""/open_run under load (issue 21, point 12): the app on a model (default: the embedded Fashion-MNIST
model) with R stored runs; first each run opened once in turn (the first open computes its view;
reopening one reads it back), then N requests from T threads at once, each opening a run over the
REST API (POST /gradio_api/call/open_run + its event stream) and downloading every file the answer
names (query, top-k and neighbour images) through /gradio_api/file=, while one run folder is
rewritten over and over beside them. Prints p50/p90 of /open_run (sequential: cold and warm;
concurrent) and the failures: an /open_run that did not complete, a download that was not whole
(status, Content-Length against the bytes received). The figures are wall-clock times on whatever
else the machine runs: say whether it was contended when quoting them.

Usage: python benchmarks/open_run_speed.py [--runs 6] [--requests 60] [--threads 12] [--out FILE.json]
"""
import argparse
import dataclasses
import http.client
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import app  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402
from mucs.explorer.history import write_run  # noqa: E402
from mucs.method.attribute import Attribution  # noqa: E402


def fake_run(ex, seed: int) -> str:
    """A complete run of random scores written into the store (what opening one costs does not
    depend on how its scores were computed)."""
    rng = np.random.default_rng(seed)
    n = len(ex.data)
    scores = rng.normal(size=n)
    att = Attribution(scores=scores, top=np.argsort(-scores)[:ex.settings.top_k], loss_original=rng.random(n) + 0.1,
                      loss_unlearned=rng.random(n) + 0.1, loss_null=1.0, steps=30, converged=True,
                      curve=[dict(step=i, loss_f=0.02 * i, loss_r=0.3) for i in range(30)],
                      stage_times=dict(total=1.0), settings=ex.settings.to_dict(),
                      query=dict(label=1, class_name=ex.class_name(1), conversions=[], source="benchmark"),
                      query_image=ex.data.images[seed % len(ex.data)], labels=ex.data.labels,
                      info=dict(data_fingerprint=ex.data.fingerprint(), num_train=n))
    return ex.store.save(att, dict(kind="benchmark", source="benchmark"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None):
    """(status, body, Content-Length) of one request; (None, error text, None) when it broke mid-way."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        r = conn.getresponse()
        length = r.getheader("Content-Length")
        return r.status, r.read(), int(length) if length is not None else None
    except (http.client.HTTPException, OSError) as e:
        return None, repr(e), None
    finally:
        conn.close()


def file_urls(value) -> list:
    if isinstance(value, dict):
        url = value.get("url")
        here = [url[url.index("/gradio_api/file="):]] if isinstance(url, str) and "/gradio_api/file=" in url else []
        return here + [u for v in value.values() for u in file_urls(v)]
    if isinstance(value, list):
        return [u for v in value for u in file_urls(v)]
    return []


def open_run(port, run_id) -> tuple:
    """(seconds, file URLs, error or None) of one /open_run over the REST API."""
    t0 = time.perf_counter()
    status, body, _ = request(port, "POST", "/gradio_api/call/open_run", json.dumps({"data": [run_id]}))
    if status != 200:
        return time.perf_counter() - t0, [], f"POST {status}: {body[:200]!r}"
    event = json.loads(body)["event_id"]
    status, body, _ = request(port, "GET", f"/gradio_api/call/open_run/{event}")
    seconds = time.perf_counter() - t0
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    if status != 200 or "event: complete" not in text:
        return seconds, [], f"GET {status}: {text[-300:]}"
    data = json.loads(text.split("event: complete\ndata: ", 1)[1].splitlines()[0])
    return seconds, file_urls(data), None


def download(port, path):
    status, body, length = request(port, "GET", path)
    if status != 200 or not isinstance(body, bytes) or length != len(body) or not body:
        return f"{path}: status {status}, Content-Length {length}, {len(body)} bytes received"
    return None


def quantiles(times) -> dict:
    if not times:
        return {}
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return dict(n=len(times), p50=statistics.median(times), p90=q[8], max=max(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--runs", type=int, default=6, help="R: stored runs to open (default 6)")
    ap.add_argument("--requests", type=int, default=60, help="N: concurrent /open_run requests (default 60)")
    ap.add_argument("--threads", type=int, default=12, help="T: client threads (default 12)")
    ap.add_argument("--no-rewrite", action="store_true", help="do not rewrite a run folder during the load")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores seen, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on the machine slows these figures)")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MUCS_CACHE_DIR", os.path.join(tmp, "cache"))
        ex = Explorer(a.model, a.data, runs_dir=os.path.join(tmp, "runs"), examples_dir=None)
        rids = [fake_run(ex, i) for i in range(a.runs)]
        demo = app.build(ex)
        port = free_port()
        app.launch(demo, ex, port=port, prevent_thread_lock=True, quiet=True)
        try:
            open_run(port, rids[0])    # the app's first request (Gradio's and the model's warm-up)
            cold = [open_run(port, r) for r in rids[1:]]
            warm = [open_run(port, r) for r in rids]
            errors = [e for _, _, e in cold + warm if e]
            seq = dict(cold=quantiles([s for s, _, _ in cold]), warm=quantiles([s for s, _, _ in warm]))
            # --- concurrent: opens + every file each answer names, a run folder rewritten meanwhile -----------
            stop, lock = threading.Event(), threading.Lock()
            times, failures, downloads, rewrites = [], [], [0], [0]
            victim = rids[-1]
            versions = [ex.store.load(victim)]
            versions.append(dataclasses.replace(versions[0], scores=versions[0].scores * 1e-7))

            def rewriter():
                while not stop.is_set():
                    write_run(versions[rewrites[0] % 2], ex.store.path(victim), dict(kind="benchmark"),
                              class_names=ex.class_names)
                    rewrites[0] += 1

            def client(k):
                for i in range(k, a.requests, a.threads):
                    seconds, urls, error = open_run(port, rids[i % len(rids)])
                    run_files = [f"/gradio_api/file={os.path.join(ex.store.path(victim), f)}"
                                 for f in ("scores.csv", "query.png", "result.json")]
                    bad = [error] if error else []
                    bad += [e for e in (download(port, u) for u in urls + run_files) if e]
                    with lock:
                        times.append(seconds)
                        failures.extend(bad)
                        downloads[0] += len(urls) + len(run_files)
            rw = threading.Thread(target=rewriter)
            if not a.no_rewrite:
                rw.start()
            t0 = time.perf_counter()
            clients = [threading.Thread(target=client, args=(k,)) for k in range(a.threads)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            wall = time.perf_counter() - t0
            stop.set()
            if rw.is_alive():
                rw.join()
        finally:
            demo.close()
    conc = quantiles(times)
    out = dict(runs=a.runs, requests=a.requests, threads=a.threads, sequential=seq, concurrent=conc,
               wall_s=wall, downloads=downloads[0], rewrites=rewrites[0], failures=len(failures) + len(errors),
               failure_examples=(errors + failures)[:5], load_average=os.getloadavg())
    ms = lambda d, k: f"{1000 * d[k]:.0f} ms" if d else "-"   # noqa: E731
    print(f"sequential /open_run: first open of a run p50 {ms(seq['cold'], 'p50')}, p90 {ms(seq['cold'], 'p90')}; "
          f"reopened p50 {ms(seq['warm'], 'p50')}, p90 {ms(seq['warm'], 'p90')}")
    print(f"{a.requests} concurrent /open_run from {a.threads} threads (+ {downloads[0]} file downloads, "
          f"{rewrites[0]} rewrites of a run folder) in {wall:.1f} s: p50 {ms(conc, 'p50')}, p90 {ms(conc, 'p90')}, "
          f"max {ms(conc, 'max')}")
    print(f"failures: {out['failures']}" + "".join(f"\n  {f}" for f in out["failure_examples"]))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
