"""The Gradio app: event functions called directly, and a launched app driven with gradio_client
(generate → attribute → overlap of two queries → export), on a tiny model."""
import contextlib
import csv
import json
import os
import re
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
import gradio as gr  # noqa: E402  (a dependency: a missing gradio must fail, not skip)
import app  # noqa: E402
from mucs.sources.data import MAX_IMAGE_BYTES  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402

FAST = dict(noises=16, batch_size=32, null_batches=10, null_batch_size=32, max_steps=8, top_k=5)
# the settings dict /attribute takes (mucs.Settings field: value), here as the page sends it
ATTR = dict(top_k=5, noises=16, noise_fraction=0.7, lam=0.2, tol=0.05, max_steps=8, seed=0, bounded=True,
            retain=True, consistent_noise=True, normalised=True)
LONG_RUN = dict(ATTR, tol=0.0, max_steps=10_000)    # τ = 0: runs to the step cap, a long run to cancel


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, tiny_npz):
    root = tmp_path_factory.mktemp("app")
    old = os.environ.get("MUCS_CACHE_DIR")
    os.environ["MUCS_CACHE_DIR"] = str(root / "cache")
    ex = Explorer(tiny_model_dir, tiny_npz, FAST, runs_dir=str(root / "runs"), examples_dir=None)
    demo = app.build(ex)
    fns = {f.api_name: f for f in demo.fns.values()}
    yield ex, demo, fns, root
    if old is None:
        os.environ.pop("MUCS_CACHE_DIR", None)
    else:
        os.environ["MUCS_CACHE_DIR"] = old


def request():
    return gr.Request()


def runs_on_disk(ex):
    return sorted(os.listdir(ex.store.root))


def bad_files(d):
    """Each bad upload the rules name, written into folder `d`."""
    d.mkdir(exist_ok=True)
    corrupt = d / "corrupt.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(corrupt)
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2] + b"\x00garbage")        # truncated, broken chunk
    text = d / "notes.png"
    text.write_text("this is not an image\n")
    huge = d / "huge.png"
    with open(huge, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.seek(MAX_IMAGE_BYTES + 1024)
        f.write(b"\0")
    return dict(corrupt=str(corrupt), text=str(text), huge=str(huge)), None


NEW_ENDPOINTS = ("why", "pick_top", "why_replay", "compare_methods", "compare_runs", "report", "export",
                 "clear_upload", "list_every_run", "attribute_batch", "cancel_batch", "open_collection",
                 "list_collections", "delete_collection", "collection_data", "export_collection")


def test_every_event_has_an_api_name_and_heavy_events_share_one_slot(env):
    _, demo, fns, _ = env
    # every event with a function of ours is named (gradio adds a function-less click to download buttons)
    assert all(isinstance(f.api_name, str) and f.api_name and f.api_name != "unnamed"
               for f in demo.fns.values() if f.fn is not None)
    for name in ("generate", "attribute", "why_replay"):
        assert fns[name].concurrency_id == app.HEAVY and fns[name].concurrency_limit == 1
    for name in ("generate", "pick_generated", "upload", "use_training", "attribute", "cancel", "open_run",
                 "list_runs", "delete_run", "overlap", "query_prompt") + NEW_ENDPOINTS:
        assert name in fns
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"generate-btn", "attribute-btn", "cancel-btn", "query-image", "topk-gallery", "history-table",
            "upload-file", "download-data", "download-report", "plot-histogram", "plot-scatter", "plot-curve",
            "plot-classes", "results-empty", "help-method", "help-plots", "help-overlap", "why-panel", "plot-why",
            "why-neighbours", "methods-grid", "plot-methods", "runs-grid"} <= ids
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert type(by_id["download-data"]).__name__ == "DownloadButton"   # no empty File panel
    assert type(by_id["download-report"]).__name__ == "DownloadButton"
    # sampler steps: the CLI's range (1-1000) for a query and for a batch alike
    assert [(by_id[k].minimum, by_id[k].maximum) for k in ("gen-steps", "batch-steps")] == [(1, 1000)] * 2
    # a refused upload empties the file box: a failure-only follow-up writes None into it
    clear = fns["clear_upload"]
    assert clear.trigger_only_on_failure and [o._id for o in clear.outputs] == [by_id["upload-file"]._id]
    assert clear.fn() is None


def test_bad_uploads_raise_gr_error_and_save_nothing(env, tmp_path):
    ex, _, fns, _ = env
    before = runs_on_disk(ex)
    files, _ = bad_files(tmp_path)
    for kind, match in (("corrupt", "not a readable image"), ("text", "not a readable image"), ("huge", "MB")):
        with pytest.raises(gr.Error, match=match):
            fns["upload"].fn(files[kind])
    with pytest.raises(gr.Error, match="no file"):
        fns["upload"].fn(None)
    # the app keeps working: a good upload after the bad ones
    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(good)
    q, img, info, cls, _ = fns["upload"].fn(str(good))
    assert q.image.shape == (8, 8, 1) and img.size[0] >= 64 and cls["value"] is None
    assert runs_on_disk(ex) == before


def test_alpha_and_16bit_images_are_converted_and_say_so(env, tmp_path):
    _, _, fns, _ = env
    rgba = tmp_path / "alpha.png"
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., 3] = 0   # fully transparent → the training set's background, with a warning (issue 23)
    Image.fromarray(a, "RGBA").save(rgba)
    q, _, info, _, _ = fns["upload"].fn(str(rgba))
    bg = env[0].data.background()[0]
    assert "training set's background" in info and "warning" in info and (q.image == bg).all()
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(deep)
    q, _, info, _, _ = fns["upload"].fn(str(deep))
    assert "8 bits" in info and q.image.max() == 255


def test_missing_class_and_missing_query_are_refused(env):
    ex, _, fns, _ = env
    before = runs_on_disk(ex)
    q = ex.training_item(3)
    with pytest.raises(gr.Error, match="class"):
        list(fns["attribute"].fn(q, None, ATTR, request=request()))
    with pytest.raises(gr.Error, match="no query"):
        list(fns["attribute"].fn(None, 1, ATTR, request=request()))
    with pytest.raises(gr.Error, match="out of range"):
        list(fns["attribute"].fn(q, 9, ATTR, request=request()))
    with pytest.raises(gr.Error, match="top_k must be ≥ 1"):
        list(fns["attribute"].fn(q, 1, dict(ATTR, top_k=0), request=request()))
    with pytest.raises(gr.Error, match="choose a class"):
        fns["generate"].fn(None, 0, 1, 5, request=request())
    with pytest.raises(gr.Error, match="out of range"):
        fns["use_training"].fn(10_000)
    assert runs_on_disk(ex) == before


def test_cancel_leaves_nothing_half_written(env):
    ex, _, fns, _ = env
    before = runs_on_disk(ex)
    q = ex.training_item(1)
    gen = fns["attribute"].fn(q, int(q.label), LONG_RUN, request=request())
    first = next(gen)
    assert first
    assert fns["cancel"].fn(request()).startswith("**cancelled")
    with pytest.raises(gr.Error, match="cancelled"):
        for _ in gen:
            pass
    assert runs_on_disk(ex) == before


def test_closing_the_stream_cancels_and_saves_nothing(env):
    """What gradio's cancels= does to a running generator: close it."""
    ex, _, _, _ = env
    before = runs_on_disk(ex)
    q = ex.training_item(1)
    st = ex.user_settings(dict(tol=0.0, max_steps=10_000))
    gen = ex.attribute_stream(q, st, every=0.05)
    next(gen)
    gen.close()
    assert runs_on_disk(ex) == before
    assert not [t for t in threading.enumerate() if t.name == "mucs-attribute"]


def by_id(out: dict) -> dict:
    return {getattr(k, "elem_id", None): v for k, v in out.items()}


def test_attribute_open_export_direct(env, tmp_path):
    ex, _, fns, _ = env
    qs, gallery, q, img, info, cls, prompt = fns["generate"].fn(2, 5, 2, 10, request=request())
    assert len(qs) == 2 and len(gallery) == 2 and gallery[0][0].size == (128, 128) and cls["value"] == 2
    outs = list(fns["attribute"].fn(q, 2, ATTR, request=request()))
    final = by_id(outs[-1])
    run_id = final["run-id"]
    assert run_id in ex.store.ids() and len(final["topk-gallery"]) == 5
    assert final["results-empty"]["visible"] is False and final["status"].startswith("**done**")
    assert final["results-body"]["visible"] is True       # hidden until a run: no empty placeholders
    # overall progress: shown with every live update, never going back
    overall = [int(m.group(1)) for o in outs[:-1] for m in [re.search(r"overall (\d+)%", by_id(o)["status"])] if m]
    assert overall and overall == sorted(overall)
    opened = by_id(fns["open_run"].fn(run_id))
    assert opened["run-id"] == run_id and opened["summary"].startswith("**Run**")
    assert opened["results-empty"]["visible"] is False and "Click an image" in opened["why-text"]
    assert opened["results-body"]["visible"] is True
    path = fns["export"].fn(run_id, "json")["value"]
    assert json.load(open(path))["meta"]["seed"] == 5
    assert fns["export"].fn("", "csv") == {"value": None, "interactive": False, "__type__": "update"}
    with pytest.raises(gr.Error, match="at least two"):
        fns["overlap"].fn([run_id])


@pytest.fixture(scope="module")
def two_runs(env):
    ex, _, _, _ = env
    ids = []
    for i in (3, 7):
        rid, _ = ex.attribute(ex.training_item(i))
        ids.append(rid)
    return ids


def test_why_this_image_direct(env, two_runs):
    ex, _, fns, _ = env
    rid = two_runs[0]
    att = ex.store.load(rid)
    out = by_id(fns["why"].fn(rid, int(att.top[1])))
    text = out["why-text"]
    assert out["why-index"] == int(att.top[1])
    assert "rank **2** of 32" in text and "pixel NN" in text and "feature NN" in text
    assert "L_o recomputed here: its mean matches" in text and "Replay the unlearning" in text
    fig = out["plot-why"]
    assert fig.data[0].name.startswith("L_o") and len(fig.data[0].x) == att.settings["noises"]
    assert len(out["why-neighbours"]) == 6 and "d²=" in out["why-neighbours"][0][1]
    assert any("item" in (a.text or "") for a in out["plot-why-hist"].layout.annotations)
    # clicking the third top-k image explains that image
    picked = by_id(fns["pick_top"].fn(rid, gr.SelectData(None, dict(index=2, value=None))))
    assert picked["why-index"] == int(att.top[2])
    for bad, msg in ((99, "out of range"), (None, "type a training index"), ("x", "integer")):
        with pytest.raises(gr.Error, match=msg):
            fns["why"].fn(rid, bad)
    with pytest.raises(gr.Error, match="no run chosen"):
        fns["why"].fn("", 1)


def test_replayed_unlearning_gives_per_noise_unlearned_losses(env, two_runs):
    """The library path behind 'Replay unlearning': the replay reproduces the run (its per-noise L_u
    averages to the stored mean L_u) and only the last KEEP_UNLEARNED models stay in memory."""
    from mucs.explorer.state import KEEP_UNLEARNED
    ex, _, _, _ = env
    rid = two_runs[1]
    info = ex.replay(rid)
    assert info["same_steps"]
    w = ex.why(rid, int(ex.store.load(rid).top[0]), with_baselines=False)
    assert w.loss_unlearned is not None and w.checks == {"L_o": True, "L_u": True}
    assert "largest at σ" in w.summary()
    for k in range(KEEP_UNLEARNED + 1):
        ex.keep_unlearned(f"dummy{k}", object())
    assert ex.unlearned(rid) is None and len(ex._unlearned) == KEEP_UNLEARNED


def test_methods_and_runs_side_by_side_direct(env, two_runs):
    ex, _, fns, _ = env
    text, html, fig = fns["compare_methods"].fn(two_runs[0])
    assert "Shared with MUCS" in text and "pixel NN" in text and "D-TRAK" in text and "AbU" in text
    assert html.count('class="h"') == 6 and html.count("<img") == 6 * 5 + 1     # 6 methods × top-5, the query
    assert list(fig.data[0].x) == ["MUCS", "D-TRAK", "AbU (attribution by unlearning)", "pixel NN",
                                   "feature NN (model features)", "MUCS + pixel NN (rank average)"]
    assert "Fisher-preconditioned" in text and " s): " in text      # one line per method, with its seconds
    m = ex.compare_methods(two_runs[0])
    assert m["tops"]["mucs"] == [int(i) for i in ex.store.load(two_runs[0]).top]   # the run's own MUCS scores
    html = fns["compare_runs"].fn(two_runs)
    assert html.count('class="h"') == 2 and html.count("<img") == 2 * 6 and two_runs[1] in html
    shared = ov_shared(ex, two_runs)
    assert html.count("in 2 runs") == 2 * len(shared)      # a shared image is framed in both rows
    with pytest.raises(gr.Error, match="at least two"):
        fns["compare_runs"].fn(two_runs[:1])
    heat, dist, rec, summary = fns["overlap"].fn(two_runs)
    assert all("in 2 of the sets" in c for _, c in rec["value"]) and len(rec["value"]) == len(shared)
    assert rec["visible"] == bool(shared)          # no empty box when nothing recurs


def ov_shared(ex, ids):
    from mucs.method import overlap as ov
    return ov.shared_counts([list(map(int, ex.store.load(r).top)) for r in ids])


def test_report_download_direct(env, two_runs):
    _, _, fns, _ = env
    out = fns["report"].fn(two_runs[0])
    assert out["interactive"] and out["value"].endswith(".html")
    text = open(out["value"]).read()
    assert "MUCS report" in text and two_runs[0] in text and "alt='training image" in text
    assert fns["report"].fn("")["value"] is None


def test_history_shows_main_settings_and_marks_the_papers(env, two_runs):
    from mucs.explorer.state import paper_mark
    from mucs.settings import Settings
    ex, _, _, _ = env
    rows = {r[0]: r for r in ex.history_table()}
    row = rows[two_runs[0]]
    assert len(row) == len(app.HISTORY_HEADERS) and row[5:9] == [16, "10", 8, ""]
    assert app.HISTORY_HEADERS[5:9] == ["K", "lr ÷", "cap", "settings"]
    # newest first, with the model and data; another model's runs only when asked for (issue 23)
    assert app.HISTORY_HEADERS[-2:] == ["model", "data"]
    assert row[-2:] == [os.path.basename(ex.model.path), os.path.basename(ex.data.source)]
    created = [r[1] for r in ex.history_table() if r[1]]
    assert created == sorted(created, reverse=True)
    other = ex.store.save(ex.store.load(two_runs[0]), dict(kind="training", source="x", model="/elsewhere/other-model",
                                                             data=ex.data.source))
    try:
        assert other not in {r[0] for r in ex.history_table()}
        every = {r[0]: r for r in ex.history_table(every=True)}
        assert every[other][-2] == "other-model"
    finally:
        ex.store.delete(other)
    paper = Settings().to_dict()
    assert paper_mark(paper) == "paper" and paper_mark(dict(paper, max_steps=50, top_k=3)) == "paper"
    assert paper_mark(dict(paper, noises=16)) == "" and paper_mark(dict(paper, lr_factor=5)) == ""
    old = {k: v for k, v in paper.items() if k not in ("sigma_min", "sigma_max")}
    assert paper_mark(old) == "paper (old σ grid)"


def test_settings_are_validated_with_clear_messages(env, tiny_model_dir, tiny_npz, tmp_path):
    ex, _, fns, _ = env
    for bad, msg in (({"noises": "x"}, "noises must be an integer"), ({"nosies": 4}, "unknown setting"),
                     ({"top_k": 1000}, "more than the 32 training images")):
        with pytest.raises(app.MucsError, match=msg):
            Explorer(tiny_model_dir, tiny_npz, bad, runs_dir=str(tmp_path / "r"), examples_dir=None)
    q = ex.training_item(3)
    with pytest.raises(gr.Error, match="more than the 32 training images"):
        list(fns["attribute"].fn(q, 3, dict(ATTR, top_k=33), request=request()))


def test_user_errors_are_one_log_line(env, caplog, tmp_path):
    import logging
    _, _, fns, _ = env
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    with caplog.at_level(logging.WARNING, logger="mucs.app"):
        with pytest.raises(gr.Error) as e:
            fns["upload"].fn(str(text))
    msg = str(e.value)
    assert "notes.png is not in a known image format" in msg and "BytesIO" not in msg and "0x" not in msg
    assert e.value.print_exception is False          # gradio prints no traceback for it
    recs = [r for r in caplog.records if r.name == "mucs.app"]
    assert len(recs) == 1 and recs[0].exc_info is None and "\n" not in recs[0].getMessage()
    assert "on_upload" in recs[0].getMessage()


def test_fast_profile_is_served_and_said_on_the_page(tiny_model_dir, tiny_npz, tmp_path):
    """app.py --fast serves the fast profile (the CLI's --fast); the model description says which."""
    from mucs.defaults import FAST
    assert app.parse_args(["--fast"]).fast and not app.parse_args([]).fast
    ex = Explorer(tiny_model_dir, tiny_npz, {"noises": 4}, runs_dir=str(tmp_path / "r"), examples_dir=None,
                  profile="fast")
    assert ex.settings.screen_noises == FAST["screen_noises"] and ex.settings.batch_size == FAST["batch_size"]
    assert ex.settings.noises == 4 and "the fast profile" in ex.describe()
    rec = Explorer(tiny_model_dir, tiny_npz, None, runs_dir=str(tmp_path / "r"), examples_dir=None)
    assert rec.settings.screen_noises == 0
    # a model folder with no mucs_settings.json: the header says the paper's settings are served (issue 23)
    assert "recommended profile" not in rec.describe() and "recommends no settings of its own" in rec.describe()
    from mucs.defaults import has_recommended
    (tmp_path / "m").mkdir()
    assert not has_recommended(str(tmp_path / "m"))
    (tmp_path / "m" / "mucs_settings.json").write_text('{"settings": {"noises": 16}}')
    assert has_recommended(str(tmp_path / "m"))


def test_the_app_takes_the_clis_model_and_data_options(tiny_model_dir, tiny_npz, tmp_path, monkeypatch):
    """--paper-settings, --train-lr, --cache-dir, --image-column/--label-column: the same resolution as
    the CLI (one set of defaults for every entry point)."""
    from mucs.settings import Settings
    a = app.parse_args(["--model", tiny_model_dir, "--data", tiny_npz, "--paper-settings", "--train-lr", "2e-3",
                        "--cache-dir", str(tmp_path / "c"), "--image-column", "img", "--label-column", "y"])
    assert (a.paper_settings, a.train_lr, a.cache_dir, a.image_column, a.label_column) == (
        True, 2e-3, str(tmp_path / "c"), "img", "y")
    with pytest.raises(SystemExit):
        app.parse_args(["--fast", "--paper-settings"])
    seen = {}
    monkeypatch.setattr(app, "launch", lambda demo, ex, *args, **kw: seen.update(ex=ex))
    monkeypatch.setenv("MUCS_RUNS_DIR", str(tmp_path / "runs"))
    assert app.main(["--model", tiny_model_dir, "--data", tiny_npz, "--paper-settings", "--train-lr", "2e-3",
                     "--cache-dir", str(tmp_path / "c"), "--examples", ""]) == 0
    ex = seen["ex"]
    assert ex.settings == Settings().validate() and ex.model.learning_rate == 2e-3
    assert ex.attributor.cache_dir == str(tmp_path / "c")
    assert app.main(["--model", tiny_model_dir, "--data", tiny_npz, "--image-column", "img"]) == 2   # not a dataset


def test_parse_args():
    with pytest.raises(SystemExit):
        app.parse_args(["--host", "0.0.0.0"])
    with pytest.raises(SystemExit):
        app.parse_args(["--model", "/somewhere/else"])
    a = app.parse_args(["--host", "0.0.0.0", "--auth", "u:p", "--settings", '{"noises": 4}'])
    assert a.auth == "u:p" and app.load_overrides(a.settings) == {"noises": 4}
    assert app.parse_args([]).host == "127.0.0.1" and app.parse_args([]).port == 7860
    with pytest.raises(app.MucsError):
        app.load_overrides("[1, 2]")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _file_path(value):
    """A file output through gradio_client: a path, or a DownloadButton update {'value': path, ...}."""
    while isinstance(value, dict):
        value = value.get("value") or value.get("path")
    return value


def test_client_generate_attribute_overlap_export(env, tmp_path):
    from gradio_client import Client, handle_file
    ex, _, _, root = env
    demo = app.build(ex)
    port = free_port()
    app.launch(demo, ex, port=port, prevent_thread_lock=True, quiet=True)
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "dl"))
        run_ids = []
        for label, seed in ((0, 1), (3, 2)):
            gallery, query_png, info, cls, prompt = c.predict(label, seed, 2, 10, api_name="/generate")
            assert len(gallery) == 2 and "generated" in info
            with Image.open(query_png) as im:
                assert im.format == "PNG"
            out = c.predict(label, ATTR, api_name="/attribute")
            assert out[0].startswith("**done**")
            run_ids.append(out[2])
        table, run_select, _ = c.predict(api_name="/list_runs")
        assert set(run_ids) <= {row[0] for row in table["data"]}
        heat, dist, recurring, text = c.predict(run_ids, api_name="/overlap")
        assert "Mean pairwise overlap of 2 runs" in text
        path = _file_path(c.predict(run_ids[0], "csv", api_name="/export"))
        rows = list(csv.DictReader(open(path)))
        assert len(rows) == len(ex.data) and rows[0]["rank"] == "1"
        # the new endpoints: report, why (and its replay), methods and runs side by side
        report = _file_path(c.predict(run_ids[0], api_name="/report"))
        assert "MUCS report" in open(report).read()
        top = [int(i) for i in ex.store.load(run_ids[0]).top]
        index, why_text, why_plot, why_hist, why_neigh = c.predict(run_ids[0], top[0], api_name="/why")
        assert index == top[0] and "rank **1**" in why_text and len(why_neigh) == 6
        index, why_text, *_ = c.predict(run_ids[0], top[0], api_name="/why_replay")
        assert "Unlearning replayed" in why_text and "L_u recomputed here: its mean matches" in why_text
        m_text, m_html, m_plot = c.predict(run_ids[0], api_name="/compare_methods")
        assert "Shared with MUCS" in m_text and m_html.count('class="h"') == 6
        r_html = c.predict(run_ids, api_name="/compare_runs")
        assert r_html.count('class="h"') == 2 and all(r in r_html for r in run_ids)
        with pytest.raises(Exception, match="at least two"):
            c.predict(run_ids[:1], api_name="/compare_runs")
        assert c.predict(api_name="/clear_upload") is None
        # bad uploads: a clear error, nothing saved, the app keeps working
        before = runs_on_disk(ex)
        files, _ = bad_files(tmp_path / "bad")
        with pytest.raises(Exception, match="not a readable image"):
            c.predict(handle_file(files["corrupt"]), api_name="/upload")
        # refused by the upload box's size limit (the client checks it first) or by our loader
        with pytest.raises(Exception, match="larger than|exceeds the maximum file size of 20971520"):
            c.predict(handle_file(files["huge"]), api_name="/upload")
        assert runs_on_disk(ex) == before
        assert c.predict(5, api_name="/use_training")[1].startswith("Query: training")
        # cancel a long attribution from the same session: it stops, nothing is saved
        job = c.submit(1, LONG_RUN, api_name="/attribute")
        t0 = time.time()
        while not list(job.outputs()) and time.time() - t0 < 30:   # wait for the first live update
            time.sleep(0.1)
        c.predict(api_name="/cancel")
        with pytest.raises(Exception) as stopped:
            job.result(timeout=60)
        # cancelled, not merely slow: a timeout would satisfy a bare pytest.raises(Exception)
        assert not isinstance(stopped.value, TimeoutError), stopped.value
        t0 = time.time()
        while [t for t in threading.enumerate() if t.name == "mucs-attribute"] and time.time() - t0 < 30:
            time.sleep(0.1)
        assert not [t for t in threading.enumerate() if t.name == "mucs-attribute"]
        assert runs_on_disk(ex) == before
    finally:
        demo.close()


@contextlib.contextmanager
def launched(ex, tmp_path):
    """The app of `ex` served on a free port, and a gradio_client Client of it."""
    from gradio_client import Client
    demo = app.build(ex)
    port = free_port()
    app.launch(demo, ex, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "dl"))
    finally:
        demo.close()


def attribute_parameters(c) -> list:
    """/attribute's parameters as a client sees them (gradio_client's view_api)."""
    return c.view_api(print_info=False, return_format="dict")["named_endpoints"]["/attribute"]["parameters"]


def run_settings(ex, out) -> dict:
    assert out[0].startswith("**done**"), out[0]
    return ex.store.load(out[2]).settings


def test_client_attribute_takes_one_settings_dict(env, tmp_path):
    """/attribute takes (label, settings): settings is a dict of mucs.Settings fields, {} (or nothing)
    means the model's recommended settings, a partial dict changes only what it names; an unknown
    key, a wrong type or a setting the app does not take per run is one clear error and runs nothing."""
    from mucs.explorer.state import USER_SETTINGS
    ex, _, _, _ = env
    recommended = {k: getattr(ex.settings, k) for k in USER_SETTINGS}
    with launched(ex, tmp_path) as c:
        params = attribute_parameters(c)
        assert [p["parameter_name"] for p in params] == ["label", "settings"]
        assert params[1]["component"] == "Json" and params[1]["parameter_has_default"]
        assert params[1]["parameter_default"] == {}
        assert "/page_settings" not in c.view_api(print_info=False, return_format="dict")["named_endpoints"]
        label = int(ex.training_item(5).label)
        c.predict(5, api_name="/use_training")
        got = run_settings(ex, c.predict(label, {}, api_name="/attribute"))
        assert {k: got[k] for k in USER_SETTINGS} == recommended
        got = run_settings(ex, c.predict(label, {"top_k": 3, "lam": 0.3}, api_name="/attribute"))
        assert {k: got[k] for k in USER_SETTINGS} == dict(recommended, top_k=3, lam=0.3)
        got = run_settings(ex, c.predict(label=label, api_name="/attribute"))      # settings left out
        assert {k: got[k] for k in USER_SETTINGS} == recommended
        before = runs_on_disk(ex)
        for bad, msg in (({"nosies": 4}, r"settings: unknown setting 'nosies' \(did you mean 'noises'\?\)"),
                         ({"top_k": "many"}, 'settings: top_k must be an integer, got "many"'),
                         ({"batch_size": 8}, "settings: batch_size is not chosen per run in this app"),
                         ([5, 16], "settings must be a JSON object")):
            with pytest.raises(Exception, match=msg) as e:
                c.predict(label, bad, api_name="/attribute")
            assert "\n" not in str(e.value).strip()
        assert runs_on_disk(ex) == before and ex.running_jobs() == []


def test_adding_a_setting_keeps_clients_working(env, tmp_path, monkeypatch):
    """A client written against /attribute keeps working, unchanged, when the page gets a widget for
    one more setting (here ρ, put first): the endpoint's parameters stay (label, settings) and the
    same call gives the same settings; only a client that names the new setting gets it."""
    from mucs.explorer import state
    ex, _, _, _ = env
    label = int(ex.training_item(6).label)

    def client_calls(c):
        c.predict(6, api_name="/use_training")
        return run_settings(ex, c.predict(label, {"top_k": 4}, api_name="/attribute"))

    with launched(ex, tmp_path) as c:
        before_params, before = attribute_parameters(c), client_calls(c)
    rho = ("rho", lambda s, n: gr.Number(s.rho, label="ρ of the noise grid", elem_id="set-rho"))
    from mucs.ui import settings_panel
    monkeypatch.setattr(settings_panel, "SETTING_WIDGETS", [[rho] + app.SETTING_WIDGETS[0]] + app.SETTING_WIDGETS[1:])
    monkeypatch.setattr(state, "USER_SETTINGS", state.USER_SETTINGS + ("rho",))
    demo = app.build(ex)
    page = {f.api_name: f for f in demo.fns.values()}["page_settings"]
    widgets = [b.value for b in page.inputs]
    assert len(page.inputs) == len(settings_panel.setting_keys()) and page.fn(*widgets)["rho"] == ex.settings.rho
    with launched(ex, tmp_path) as c:
        assert attribute_parameters(c) == before_params
        after = client_calls(c)
        assert after == before and after["top_k"] == 4
        assert run_settings(ex, c.predict(label, {"rho": 5.0}, api_name="/attribute"))["rho"] == 5.0


def test_baselines_run_on_a_private_copy_of_the_unet(env, two_runs):
    """The feature baseline hooks the UNet's mid-block: it works on its own copy, so an attribution
    running meanwhile (on the explorer's model) neither feeds nor is fed by that hook."""
    ex, _, _, _ = env
    ctx = ex.baselines_context()
    assert ctx.model.unet is not ex.model.unet and ctx.model.path == ex.model.path
    assert ex.model.unet.mid_block._forward_hooks == {}
    ex.compare_methods(two_runs[0])
    assert ex.model.unet.mid_block._forward_hooks == {} and ctx is ex.baselines_context()


def test_batch_collection_endpoints_over_the_client(env, tmp_path):
    """/attribute_batch takes the same settings dict as /attribute; /list_collections, /open_collection,
    /collection_data, /export_collection and /delete_collection work on what it wrote."""
    from gradio_client import Client
    ex, _, _, _ = env
    demo = app.build(ex)
    port = free_port()
    app.launch(demo, ex, port=port, prevent_thread_lock=True, quiet=True)
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "dl"))
        out = c.predict("generate", [1, 2], "4", 5, None, dict(ATTR, max_steps=2, top_k=3), api_name="/attribute_batch")
        status, items, job_id, coll_id, summary, figures = out[:6]
        assert status.startswith("**done**: 2 of 2 items saved") and coll_id in status
        assert [r[4] for r in items["data"]] == ["done", "done"]
        assert "Mean pairwise overlap" in summary and "coverage" in figures
        assert all(ex.load_run(r).settings["top_k"] == 3 for r in ex.collections.member_ids(coll_id))
        table, select = c.predict(api_name="/list_collections")
        assert table["data"][0][0] == coll_id and table["data"][0][4] == "2/2"
        box, summary2, figures2 = c.predict(coll_id, api_name="/open_collection")[:3]
        assert box == coll_id and figures2.count("class='coll-fig") == 7
        data = json.load(open(_file_path(c.predict(coll_id, "json", api_name="/collection_data"))))
        assert data["analyses"]["coverage"]["coverage"]["bound"] == [3, 6]
        import zipfile
        with zipfile.ZipFile(_file_path(c.predict(coll_id, api_name="/export_collection"))) as z:
            assert f"{coll_id}/collection.json" in z.namelist()
        with pytest.raises(Exception, match="unknown setting 'nosies'"):
            c.predict("generate", [1], "0", 5, None, {"nosies": 3}, api_name="/attribute_batch")
        c.predict(coll_id, api_name="/delete_collection")
        assert coll_id not in ex.collections.ids()
    finally:
        demo.close()


# --- issue 21, point 2: one malformed run folder never takes the app down -----------------------------
def test_malformed_run_folders_are_listed_as_damaged_and_never_fatal(env, two_runs, tiny_model_dir, tiny_npz,
                                                                     tmp_path):
    from conftest import damaged_runs
    import shutil
    ex, _, _, _ = env
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(ex.store.path(two_runs[0]), runs / "good")
    broken = damaged_runs(str(runs / "good"), runs)
    ex2 = Explorer(tiny_model_dir, tiny_npz, FAST, runs_dir=str(runs), examples_dir=None)
    demo = app.build(ex2)                             # the app starts: no run can stop it
    fns = {f.api_name: f for f in demo.fns.values()}
    fns["list_runs"].fn()
    table = {r[0]: r for r in ex2.history_table()}
    assert set(table) == set(broken) | {"good"}
    assert "good" in ex2.store.ids() and table["good"][2] != "damaged"
    for name, phrase in broken.items():
        row = table[name]
        if row[2] == "damaged":                        # meta.json / result.json: caught by the listing
            assert phrase in row[3], (name, row)
            assert name not in ex2.store.ids()
        with pytest.raises(gr.Error) as e:
            fns["open_run"].fn(name)
        assert phrase in str(e.value), (name, str(e.value))
    assert fns["open_run"].fn("good")                 # the good run still opens


# --- issue 21, point 5: the views work for a model of ≤ 100 training timesteps --------------------------
def test_why_replay_and_methods_work_for_a_model_of_50_timesteps(tiny_npz, tmp_path):
    from mucs.method.attribute import Attribution
    from mucs.sources.data import load_dataset
    from mucs.sources.train import TrainOptions, train
    model = str(tmp_path / "t50")
    train(load_dataset(tiny_npz), model, TrainOptions(steps=4, batch_size=8, lr=1e-3, channels=(8, 16), attention=False,
                                                     num_train_timesteps=50, warmup_steps=1))
    ex = Explorer(model, tiny_npz, FAST, runs_dir=str(tmp_path / "runs"), examples_dir=None)
    n = len(ex.data)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=n)
    att = Attribution(scores=scores, top=np.argsort(-scores)[:5], loss_original=rng.random(n) + 0.1,
                      loss_unlearned=rng.random(n) + 0.1, loss_null=1.0, steps=3, converged=True, curve=[],
                      stage_times=dict(total=1.0), settings=ex.settings.to_dict(),
                      query=dict(label=1, class_name="b", conversions=[], source="t"), query_image=ex.data.images[0],
                      labels=ex.data.labels, info=dict(data_fingerprint=ex.data.fingerprint(), num_train=n))
    rid = ex.store.save(att, dict(kind="test"))
    fns = {f.api_name: f for f in app.build(ex).fns.values()}
    assert ex.model.scheduler.config.num_train_timesteps == 50
    why = by_id(fns["why"].fn(rid, int(att.top[0])))
    assert "feature NN" in why["why-text"]
    text, grid, fig = fns["compare_methods"].fn(rid)
    assert "feature NN" in text and "feature NN (model features)" in list(fig.data[0].x)
    replay = by_id(fns["why_replay"].fn(rid, int(att.top[0]), request=request()))
    assert replay["why-text"].startswith("Unlearning replayed")
