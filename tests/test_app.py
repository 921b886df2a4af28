"""The Gradio app's event functions called directly on a tiny model (the launched app driven with
gradio_client: tests/test_app_client.py)."""
import json
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
import gradio as gr  # noqa: E402  (a dependency: a missing gradio must fail, not skip)
import app  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402
from app_fixtures import ATTR, LONG_RUN, bad_files, by_id, request, runs_on_disk  # noqa: E402




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
