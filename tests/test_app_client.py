"""The launched app driven with gradio_client (generate → attribute → overlap of two queries → export,
settings dicts, batches, damaged run folders) on a tiny model."""
import contextlib
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
import gradio as gr  # noqa: E402  (a dependency: a missing gradio must fail, not skip)
import app  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402
from app_fixtures import ATTR, FAST, LONG_RUN, bad_files, by_id, request, runs_on_disk  # noqa: E402


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
    from gradio_client import handle_file
    ex, _, _, root = env
    with launched(ex, tmp_path) as c:
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
    ex, _, _, _ = env
    with launched(ex, tmp_path) as c:
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
