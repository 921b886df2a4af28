"""The Gradio app: event functions called directly, and a launched app driven with gradio_client
(generate → attribute → overlap of two queries → export), on a tiny model."""
import csv
import json
import os
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
gr = pytest.importorskip("gradio")
import app  # noqa: E402
from mucs.data import MAX_IMAGE_BYTES  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402

FAST = dict(noises=16, batch_size=32, null_batches=10, null_batch_size=32, max_steps=8, top_k=5)
ATTR_ARGS = (5, 16, 0.7, 0.2, 0.05, 8, 0, True, True, True, True)   # top_k .. normalised as the UI sends them


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


def test_every_event_has_an_api_name_and_heavy_events_share_one_slot(env):
    _, demo, fns, _ = env
    assert all(isinstance(f.api_name, str) and f.api_name for f in demo.fns.values())
    for name in ("generate", "attribute"):
        assert fns[name].concurrency_id == app.HEAVY and fns[name].concurrency_limit == 1
    for name in ("generate", "pick_generated", "upload", "use_training", "attribute", "cancel", "open_run",
                 "list_runs", "delete_run", "overlap", "export"):
        assert name in fns
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"generate-btn", "attribute-btn", "cancel-btn", "query-image", "topk-gallery", "history-table",
            "upload-file", "export-file", "plot-histogram", "plot-scatter", "plot-curve", "plot-classes"} <= ids


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
    q, img, info, cls = fns["upload"].fn(str(good))
    assert q.image.shape == (8, 8, 1) and img.size[0] >= 64 and cls["value"] is None
    assert runs_on_disk(ex) == before


def test_alpha_and_16bit_images_are_converted_and_say_so(env, tmp_path):
    _, _, fns, _ = env
    rgba = tmp_path / "alpha.png"
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., 3] = 0   # fully transparent → white
    Image.fromarray(a, "RGBA").save(rgba)
    q, _, info, _ = fns["upload"].fn(str(rgba))
    assert "alpha" in info and q.image.min() == 255
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(deep)
    q, _, info, _ = fns["upload"].fn(str(deep))
    assert "8 bits" in info and q.image.max() == 255


def test_missing_class_and_missing_query_are_refused(env):
    ex, _, fns, _ = env
    before = runs_on_disk(ex)
    q = ex.training_item(3)
    with pytest.raises(gr.Error, match="class"):
        list(fns["attribute"].fn(q, None, *ATTR_ARGS, request=request()))
    with pytest.raises(gr.Error, match="no query"):
        list(fns["attribute"].fn(None, 1, *ATTR_ARGS, request=request()))
    with pytest.raises(gr.Error, match="out of range"):
        list(fns["attribute"].fn(q, 9, *ATTR_ARGS, request=request()))
    with pytest.raises(gr.Error, match="top-k"):
        list(fns["attribute"].fn(q, 1, 0, *ATTR_ARGS[1:], request=request()))
    with pytest.raises(gr.Error, match="choose a class"):
        fns["generate"].fn(None, 0, 1, 5, request())
    with pytest.raises(gr.Error, match="out of range"):
        fns["use_training"].fn(10_000)
    assert runs_on_disk(ex) == before


def test_cancel_leaves_nothing_half_written(env):
    ex, _, fns, _ = env
    before = runs_on_disk(ex)
    q = ex.training_item(1)
    long_run = (5, 16, 0.7, 0.2, 0.0, 10_000, 0, True, True, True, True)
    gen = fns["attribute"].fn(q, int(q.label), *long_run, request=request())
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


def test_attribute_open_export_direct(env, tmp_path):
    ex, _, fns, _ = env
    qs, gallery, q, img, info, cls = fns["generate"].fn(2, 5, 2, 10, request())
    assert len(qs) == 2 and len(gallery) == 2 and gallery[0][0].size == (128, 128) and cls["value"] == 2
    outs = list(fns["attribute"].fn(q, 2, *ATTR_ARGS, request=request()))
    final = {getattr(k, "elem_id", None): v for k, v in outs[-1].items()}
    run_id = final["run-id"]
    assert run_id in ex.store.ids() and len(final["topk-gallery"]) == 5
    opened = {getattr(k, "elem_id", None): v for k, v in fns["open_run"].fn(run_id).items()}
    assert opened["run-id"] == run_id and opened["summary"].startswith("**Run**")
    path = fns["export"].fn(run_id, "json")
    assert json.load(open(path))["meta"]["seed"] == 5
    with pytest.raises(gr.Error, match="no run"):
        fns["export"].fn("", "csv")
    with pytest.raises(gr.Error, match="at least two"):
        fns["overlap"].fn([run_id])


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
            gallery, query_png, info, cls = c.predict(label, seed, 2, 10, api_name="/generate")
            assert len(gallery) == 2 and "generated" in info
            with Image.open(query_png) as im:
                assert im.format == "PNG"
            out = c.predict(label, *ATTR_ARGS, api_name="/attribute")
            assert out[0].startswith("**done**")
            run_ids.append(out[2])
        table, run_select, _ = c.predict(api_name="/list_runs")
        assert set(run_ids) <= {row[0] for row in table["data"]}
        heat, dist, recurring, text = c.predict(run_ids, api_name="/overlap")
        assert "Mean pairwise overlap of 2 runs" in text
        path = c.predict(run_ids[0], "csv", api_name="/export")
        rows = list(csv.DictReader(open(path)))
        assert len(rows) == len(ex.data) and rows[0]["rank"] == "1"
        # bad uploads: a clear error, nothing saved, the app keeps working
        before = runs_on_disk(ex)
        files, _ = bad_files(tmp_path / "bad")
        with pytest.raises(Exception, match="not a readable image"):
            c.predict(handle_file(files["corrupt"]), api_name="/upload")
        with pytest.raises(Exception):
            c.predict(handle_file(files["huge"]), api_name="/upload")
        assert runs_on_disk(ex) == before
        assert c.predict(5, api_name="/use_training")[1].startswith("Query: training")
        # cancel a long attribution from the same session: it stops, nothing is saved
        job = c.submit(1, 5, 16, 0.7, 0.2, 0.0, 10_000, 0, True, True, True, True, api_name="/attribute")
        t0 = time.time()
        while not list(job.outputs()) and time.time() - t0 < 30:   # wait for the first live update
            time.sleep(0.1)
        c.predict(api_name="/cancel")
        with pytest.raises(Exception):
            job.result(timeout=60)
        t0 = time.time()
        while [t for t in threading.enumerate() if t.name == "mucs-attribute"] and time.time() - t0 < 30:
            time.sleep(0.1)
        assert not [t for t in threading.enumerate() if t.name == "mucs-attribute"]
        assert runs_on_disk(ex) == before
    finally:
        demo.close()
