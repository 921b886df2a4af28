"""The run store: atomic runs with metadata, listing, reopening, export, read-only examples."""
import csv
import json
import os

import numpy as np
import pytest

from mucs.method.attribute import Attribution
from mucs.errors import MucsError
from mucs.explorer.history import RunStore


def fake_attribution(n=20, k=5, seed=0, label=1):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    top = np.argsort(-scores)[:k]
    return Attribution(scores=scores, top=top, loss_original=rng.random(n), loss_unlearned=rng.random(n),
                       loss_null=1.0, steps=7, converged=True,
                       curve=[dict(step=i, loss_f=0.1 * i, loss_r=0.05) for i in range(8)],
                       stage_times=dict(unlearning=1.0, total=2.0), settings=dict(top_k=k, noises=4),
                       query=dict(label=label, class_name="b", conversions=[], source="generated seed 3"),
                       query_image=rng.integers(0, 256, (8, 8, 1), dtype=np.uint8),
                       labels=np.arange(n) % 4, info=dict(data_fingerprint="x"))


def test_save_list_load_survives_restart(tmp_path):
    store = RunStore(str(tmp_path / "runs"), examples=None)
    a = fake_attribution()
    rid = store.save(a, dict(kind="generated", seed=3))
    assert store.ids() == [rid]
    # a new store on the same folder (an app restart) sees the same run
    store2 = RunStore(str(tmp_path / "runs"), examples=None)
    m = store2.meta(rid)
    assert m["kind"] == "generated" and m["seed"] == 3 and m["steps"] == 7 and m["converged"] is True
    b = store2.load(rid)
    np.testing.assert_allclose(b.scores, a.scores)
    assert list(b.top) == list(a.top)
    assert b.query_image.shape == (8, 8, 1)
    assert store2.table()[0][0] == rid
    # nothing else (no staging folders) is left behind
    assert sorted(os.listdir(tmp_path / "runs")) == [rid]


def test_newest_first_and_delete(tmp_path):
    store = RunStore(str(tmp_path), examples=None)
    r1 = store.save(fake_attribution(seed=1))
    r2 = store.save(fake_attribution(seed=2))
    assert set(store.ids()) == {r1, r2}
    assert store.ids()[0] >= store.ids()[1]
    store.delete(r1)
    assert store.ids() == [r2]
    with pytest.raises(MucsError):
        store.load(r1)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    store = RunStore(str(tmp_path), examples=None)

    def boom(out_dir, files, kind=None):
        os.makedirs(out_dir)
        open(os.path.join(out_dir, "result.json"), "w").write("{")
        raise OSError("disk full")
    monkeypatch.setattr("mucs.explorer.history.write_tree", boom)
    with pytest.raises(OSError):
        store.save(fake_attribution())
    assert os.listdir(tmp_path) == [] and store.list() == []


def test_incomplete_folders_are_ignored_and_bad_ids_refused(tmp_path):
    store = RunStore(str(tmp_path), examples=None)
    os.makedirs(tmp_path / "half")
    (tmp_path / "half" / "result.json").write_text("{}")
    assert store.list() == []
    for bad in ("", "half", "../x", "example:nothing", ".staging-x"):
        with pytest.raises(MucsError):
            store.load(bad)


def test_examples_are_listed_read_only(tmp_path):
    ex = RunStore(str(tmp_path / "ex"), examples=None)
    eid = ex.save(fake_attribution())
    store = RunStore(str(tmp_path / "runs"), examples=str(tmp_path / "ex"))
    ids = store.ids()
    assert ids == ["example:" + eid]
    assert store.meta(ids[0])["example"] is True
    assert store.load(ids[0]).steps == 7
    with pytest.raises(MucsError, match="read-only"):
        store.delete(ids[0])


def test_export_csv_and_json(tmp_path):
    store = RunStore(str(tmp_path / "runs"), examples=None)
    a = fake_attribution()
    rid = store.save(a, dict(kind="training", index=4))
    p = store.export(rid, "csv", str(tmp_path), class_names=["a", "b", "c", "d"])
    rows = list(csv.DictReader(open(p)))
    assert len(rows) == 20 and rows[0]["rank"] == "1" and int(rows[0]["index"]) == int(a.top[0])
    assert rows[0]["class"] == ["a", "b", "c", "d"][int(rows[0]["label"])]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    j = json.load(open(store.export(rid, "json", str(tmp_path))))
    assert j["meta"]["index"] == 4 and j["result"]["top_k"] == [int(i) for i in a.top]
    # the JSON holds every training item's score and losses too, the same rows as the CSV (issue 23)
    j = json.load(open(store.export(rid, "json", str(tmp_path), class_names=["a", "b", "c", "d"])))
    assert len(j["items"]) == 20
    for r, row in zip(rows, j["items"]):
        assert (row["rank"], row["index"], row["label"], row["class"]) == (int(r["rank"]), int(r["index"]),
                                                                         int(r["label"]), r["class"])
        for col in ("score", "loss_original", "loss_unlearned"):
            assert row[col] == pytest.approx(float(r[col]), rel=1e-6)
    assert j["items"][0]["loss_unlearned"] == pytest.approx(float(a.loss_unlearned[a.top[0]]))
    with pytest.raises(MucsError):
        store.export(rid, "xml")


def test_one_csv_format_and_labels_survive_both_run_formats(tmp_path):
    """The run folder's scores.csv and the CSV export come from one writer (same bytes for the same
    class names), and a reopened run gets its labels back from losses.npz, or, for a run written
    before labels were stored there, from the old three-column scores.csv."""
    import shutil
    store = RunStore(str(tmp_path / "runs"), examples=None)
    a = fake_attribution()
    names = ["a", "b", "c", "d"]
    rid = store.save(a, dict(kind="training", index=4), class_names=names)
    run_csv = open(os.path.join(store.path(rid), "scores.csv")).read()
    assert run_csv == open(store.export(rid, "csv", str(tmp_path), class_names=names)).read()
    assert Attribution.load(store.path(rid)).labels.tolist() == a.labels.tolist()
    old = tmp_path / "old"                       # the format before: labels only in a 3-column CSV
    shutil.copytree(store.path(rid), old)
    with np.load(old / "losses.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "labels"}
    np.savez(old / "losses.npz", **arrays)
    order = np.argsort(-a.scores, kind="stable")
    (old / "scores.csv").write_text("index,score,label\n" + "".join(
        f"{i},{a.scores[i]:.8g},{a.labels[i]}\n" for i in order))
    assert Attribution.load(str(old)).labels.tolist() == a.labels.tolist()
