"""What the HTTP tests share: the login, raw requests exactly as written, a client, a fake run (their
served app: the `served` fixture in conftest.py)."""
import http.client
import json
import os
import re
import socket
import urllib.parse

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported

from mucs.method.attribute import Attribution  # noqa: E402


AUTH = ("alice", "s3cret-pass")


SMALL = dict(noises=8, null_batches=2, null_batch_size=16, batch_size=16, max_steps=4, top_k=5)


LONG = dict(top_k=5, noises=16, tol=0.0, max_steps=10_000)    # the settings dict of /attribute: τ = 0, a long run


SECRET = "top secret: never served"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
