"""Collections: a batch of attributions as one job (one Attributor: the noise set, L_o and L_null
once), each item a normal run the run store lists; cancel keeps the finished items; the CLI's
--seeds / --images write the same collection; delete and export as one."""
import json
import os
import threading
import zipfile

import numpy as np
import pytest
from conftest import cache_dir_env
from PIL import Image

from mucs.errors import MucsError
from mucs.explorer import Explorer
from mucs.explorer import collection as coll

TINY = dict(noises=8, batch_size=16, null_batches=5, null_batch_size=16, max_steps=3, top_k=4)


@pytest.fixture(scope="module")
def explorer(tiny_model_dir, tiny_npz, tmp_path_factory):
    root = tmp_path_factory.mktemp("coll")
    with cache_dir_env(root / "cache"):     # a fresh cache: L_o and L_null are computed here
        yield Explorer(tiny_model_dir, tiny_npz, TINY, runs_dir=str(root / "runs"), examples_dir=None)


@pytest.fixture(scope="module")
def batch(explorer):
    """One 2 classes × 2 seeds batch through the stream, counting the loss matrices computed."""
    ex = explorer
    stages, real = [], ex.attributor.loss_matrix

    def counting(unet, ns, s, report=None, stage="losses", items=None):
        stages.append(stage)
        return real(unet, ns, s, report, stage, items)
    ex.attributor.loss_matrix = counting
    try:
        items = ex.batch_generated([0, 1], "0-1", sampler_steps=5)
        updates = list(ex.attribute_batch_stream(items, ex.user_settings({}), every=0.05))
    finally:
        del ex.attributor.loss_matrix
    return ex, updates, stages


def test_a_batch_is_one_collection_of_normal_runs(batch):
    ex, updates, stages = batch
    last = updates[-1]
    rec = last.record
    assert rec["status"] == "done" and [it["status"] for it in rec["items"]] == ["done"] * 4
    assert [it["label"] for it in rec["items"]] == [0, 0, 1, 1] and [it["seed"] for it in rec["items"]] == [0, 1, 0, 1]
    assert rec["asked"] == dict(kind="generated", labels=[0, 1], seeds=[0, 1], sampler_steps=5)
    assert rec["settings"]["top_k"] == 4 and rec["num_train"] == len(ex.data)
    # the noise set, L_o and L_null once for the whole batch; each item pays for its own L_u only
    assert stages.count("original losses") == 1 and stages.count("unlearned losses") == 4
    cid = last.collection_id
    members = ex.collections.member_ids(cid)
    assert members == [f"{cid}/{it['name']}" for it in rec["items"]]
    # every item is a run the store lists and reopens, marked with its collection
    ids = ex.store.ids()
    assert set(members) <= set(ids)
    for rid in members:
        att = ex.load_run(rid)
        assert len(att.top) == 4 and np.isfinite(att.scores).all()
        assert ex.store.meta(rid)["collection"] == cid
    assert att.info["cache_hits"] == dict(original_losses=True, null_loss=True)   # the later items: from memory
    # per-item status and a monotone overall fraction with a time left once an item is done
    fr = [u.overall.fraction for u in updates if u.overall is not None]
    assert fr == sorted(fr) and fr[-1] == 1.0
    assert any(u.overall.remaining is not None and "estimate" in u.overall.text() for u in updates[:-1])
    assert [r["status"] for r in last.items] == ["done"] * 4 and all(r["run"] in members for r in last.items)
    assert ex.collection_table()[0][:3] == [cid, rec["created"], "done"]
    assert "class 0 (a), 1 (b) × seeds 0-1" in ex.collection_table()[0][3]


def test_cancel_keeps_the_finished_items_and_starts_no_more(explorer):
    ex = explorer
    cancel = threading.Event()
    items = ex.batch_generated([2], [5, 6, 7], sampler_steps=5)
    seen = []

    def progress(ev):
        seen.append((ev.index, ev.status))
        if ev.index == 1 and ev.event is not None and ev.event.stage == "unlearning":
            cancel.set()     # mid-way through the second item
    cid, rec = ex.attribute_batch(items, ex.user_settings({}), progress=progress, cancel=cancel)
    assert rec["status"] == "cancelled"
    assert [it["status"] for it in rec["items"]] == ["done", "not started", "not started"]
    path = ex.collections.path(cid)
    assert sorted(n for n in os.listdir(path) if not n.startswith(".")) == ["00-c2-seed5", "collection.json"]
    assert ex.collections.member_ids(cid) == [f"{cid}/00-c2-seed5"]
    assert not any(i == 2 for i, _ in seen)            # the third item never started
    with open(os.path.join(path, "collection.json")) as f:
        assert json.load(f)["status"] == "cancelled"   # what is on disk says so too


def test_a_refused_item_is_recorded_and_the_batch_goes_on(explorer, tmp_path):
    ex = explorer
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    good = tmp_path / "good.png"
    Image.fromarray(ex.data.images[3][..., 0]).save(good)
    items = coll.image_items([str(bad), str(good)], [0, 3])
    cid, rec = ex.attribute_batch(items, ex.user_settings({}))
    assert [it["status"] for it in rec["items"]] == ["failed", "done"] and rec["status"] == "partial"
    assert "not a readable image" in rec["items"][0]["error"]
    assert ex.collections.member_ids(cid) == [f"{cid}/01-good"]


def test_delete_and_export_a_collection_as_one(explorer, tmp_path):
    ex = explorer
    cid, rec = ex.attribute_batch(ex.batch_generated([3], [9], sampler_steps=5), ex.user_settings({}))
    z = ex.export_collection(cid)
    with zipfile.ZipFile(z) as f:
        names = f.namelist()
    assert f"{cid}/collection.json" in names and f"{cid}/00-c3-seed9/scores.csv" in names
    member = ex.collections.member_ids(cid)[0]
    ex.delete_collection(cid)
    assert cid not in ex.collections.ids() and member not in ex.store.ids()
    with pytest.raises(MucsError, match="unknown collection"):
        ex.collections.record(cid)


def test_batch_requests_are_checked_before_anything_runs(explorer, tmp_path):
    ex = explorer
    before = ex.collections.ids()
    with pytest.raises(MucsError, match="low-high"):
        ex.batch_generated([0], "5-1")
    with pytest.raises(MucsError, match="choose a class"):
        ex.batch_generated(None, "0-3")
    with pytest.raises(MucsError, match="at most"):
        ex.batch_generated([0, 1], "0-40")
    bad = tmp_path / "x.png"
    bad.write_text("text")
    with pytest.raises(MucsError, match="not in a known image format"):
        ex.batch_uploads([str(bad)], [0])
    with pytest.raises(MucsError, match="unknown setting"):
        ex.user_settings({"nosies": 3})
    assert ex.collections.ids() == before


def test_parse_seeds():
    assert coll.parse_seeds("0-3,8") == [0, 1, 2, 3, 8]
    assert coll.parse_seeds("4, 2 ,4") == [4, 2]
    assert coll.parse_seeds([1, 2]) == [1, 2]
    for bad in ("", "a-b", "3-1"):
        with pytest.raises(MucsError):
            coll.parse_seeds(bad)


def test_cli_seeds_and_images_write_the_same_collection(tiny_model_dir, tiny_npz, tmp_path, monkeypatch, capsys):
    from conftest import set_settings_defaults

    from mucs.__main__ import main
    from mucs.explorer.history import RunStore
    monkeypatch.setenv("MUCS_CACHE_DIR", str(tmp_path / "cache"))
    set_settings_defaults(monkeypatch, null_batches=5, null_batch_size=16)
    fast = ["--noises", "8", "--max-steps", "2", "--batch-size", "16", "--top-k", "4"]
    base = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz] + fast
    runs = tmp_path / "runs"
    assert main(base + ["--seeds", "0", "--label", "1", "2", "--sampler-steps", "5", "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "collection: 2/2 items attributed (done)" in out
    (cid,) = os.listdir(runs)
    rec = coll.load_record(str(runs / cid))
    assert rec["asked"]["labels"] == [1, 2] and [it["name"] for it in rec["items"]] == ["00-c1-seed0", "01-c2-seed0"]
    store = RunStore(str(runs), examples=None)
    assert sorted(store.ids()) == [f"{cid}/00-c1-seed0", f"{cid}/01-c2-seed0"]
    # --images DIR: every image of the folder, one label for all
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in (0, 4):
        Image.fromarray(np.load(tiny_npz)["images"][i]).save(imgs / f"q{i}.png")
    (imgs / "notes.txt").write_text("not an image, not listed")
    assert main(base + ["--images", str(imgs), "--label", "0", "--out", str(tmp_path / "mine")]) == 0
    rec = coll.load_record(str(tmp_path / "mine"))
    assert [it["name"] for it in rec["items"]] == ["00-q0", "01-q4"] and rec["asked"]["kind"] == "images"
    assert all(os.path.isfile(tmp_path / "mine" / n / "scores.csv") for n in ("00-q0", "01-q4"))
    # one clear error, nothing written: two kinds of query, a bad seed list, a broken image in the folder
    capsys.readouterr()
    assert main(base + ["--seeds", "0", "--image", str(imgs / "q0.png"), "--label", "1"]) == 2
    assert "one of --image" in capsys.readouterr().err
    assert main(base + ["--seeds", "3-1", "--label", "1", "--out", str(tmp_path / "no")]) == 2
    assert "low-high" in capsys.readouterr().err and not (tmp_path / "no").exists()
    (imgs / "zz.png").write_text("broken")
    assert main(base + ["--images", str(imgs), "--label", "0", "--out", str(tmp_path / "no")]) == 2
    assert "zz.png" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_collection_analyses_figures_and_exports(batch):
    import base64
    import csv
    import io
    import re
    from mucs.explorer.collection_figures import ORDER
    ex, updates, _ = batch
    cid = updates[-1].collection_id
    o = ex.open_collection(cid)
    an, atts = o["analysis"], [ex.load_run(r) for r in o["run_ids"]]
    sets = [set(int(i) for i in a.top) for a in atts]
    # the numbers are those of the runs' own top-k sets
    assert an["coverage"]["distinct"] == [len(set().union(*sets[:g])) for g in range(1, 5)]
    assert an["coverage"]["bound"] == [4, 8, 12, 16]
    assert an["pairs"]["within"]["n"] == 2 and an["pairs"]["across"]["n"] == 4      # classes 0, 0, 1, 1
    assert sorted(an["order"]) == [0, 1, 2, 3] and len(an["map"]["x"]) == 4
    for r in an["recurring"]:
        assert r["count"] == sum(r["index"] in s for s in sets) >= 2
    ag = {m["method"]: m for m in o["agreement"]["methods"]}
    assert set(ag) == {"mucs", "pixel_nn", "feature_nn", "mucs+pixel_nn"} and ag["mucs"]["mean"] == 1.0
    # every figure: its block, its what-is-this line, its CSV and JSON (data URIs that decode)
    for key in ORDER:
        block = re.search(rf"<figure id='coll-{cid}-{key}'.*?</figure>", o["html"], re.S)
        assert block, key
        assert "What is this:" in block.group(0)
        links = dict(re.findall(r"download='[^']*\.(csv|json)' href='data:[^;]+;base64,([^']+)'", block.group(0)))
        assert set(links) == {"csv", "json"}, key
        rows = list(csv.reader(io.StringIO(base64.b64decode(links["csv"]).decode())))
        assert len(rows) >= 2, key
        json.loads(base64.b64decode(links["json"]))
    # the map's points carry the run a click opens
    assert set(re.findall(r'data-run="([^"]+)"', o["html"])) == set(o["run_ids"])
    assert "Mean pairwise overlap" in o["summary"] and "pixel NN" in o["summary"]
    # all analyses in one JSON / one zip of CSVs
    with open(ex.collection_data_file(cid, "json")) as f:
        d = json.load(f)
    assert set(d["analyses"]) == set(ORDER) and d["collection"]["id"] == cid
    with zipfile.ZipFile(ex.collection_data_file(cid, "csv")) as z:
        assert sorted(z.namelist()) == sorted(f"{k}.csv" for k in ORDER)


def test_report_of_a_collection_is_self_contained(batch, tmp_path, capsys):
    import re
    from mucs.__main__ import main
    ex, updates, _ = batch
    folder = ex.collections.path(updates[-1].collection_id)
    out = tmp_path / "c.html"
    assert main(["report", folder, "--out", str(out)]) == 0
    text = out.read_text()
    assert "<title>MUCS collection report" in text
    for key in ("coverage", "recurring", "concentration", "classes", "heatmap", "map", "agreement"):
        assert f"id='coll-{key}'" in text, key
    assert text.count("class='gen'") == 4
    assert "AbU" not in text and "D-TRAK" not in text      # the cheap methods only (it ran AbU per generation)
    assert not re.findall(r"(?:src|href)=['\"](?:https?:)?//", text)      # nothing fetched from any host
    assert main(["report", folder, "--out", str(out)]) == 0                # its own report is replaced


def test_text_model_batches_are_prompts_by_seeds(tiny_text_dir, tiny_captions_npz, tmp_path, monkeypatch, capsys):
    """A text model's batch: each prompt × each seed generated with its prompt and attributed with it (the
    app, the API and `mucs attribute --seeds --prompt`); its overlap pairs are grouped by prompt."""
    from conftest import TINY_TEXT
    from mucs.__main__ import main
    monkeypatch.setenv("MUCS_CACHE_DIR", str(tmp_path / "cache"))
    small = dict(TINY_TEXT.to_dict(), top_k=3)
    ex = Explorer(tiny_text_dir, tiny_captions_npz, small, runs_dir=str(tmp_path / "runs"), examples_dir=None)
    with pytest.raises(MucsError, match="type a prompt"):
        ex.batch_generated(None, "0-1", 5, prompts="  \n")
    items = ex.batch_generated(None, "0-1", 5, prompts="a dark ring\na light square\n")
    assert [(it.prompt, it.seed) for it in items] == [("a dark ring", 0), ("a dark ring", 1),
                                                     ("a light square", 0), ("a light square", 1)]
    cid, rec = ex.attribute_batch(items, ex.user_settings({}))
    assert rec["status"] == "done" and rec["asked"]["prompts"] == ["a dark ring", "a light square"]
    runs = [ex.store.load(f"{cid}/{it['name']}") for it in rec["items"]]
    assert [r.query["prompt"] for r in runs] == [it.prompt for it in items]
    # the same seed, another prompt: another image (the prompt reached the sampler)
    assert not np.array_equal(runs[0].query_image, runs[2].query_image)
    opened = ex.open_collection(cid)
    an = opened["analysis"]
    assert an["classes"] == [it.prompt for it in items]       # pairs grouped by prompt: 2 within, 4 across
    assert len(an["pairs"]["within_values"]) == 2 and len(an["pairs"]["across_values"]) == 4
    assert "a dark ring" in opened["html"]
    assert any("2 prompts × seeds 0-1" in str(row) for row in ex.collection_table())
    # the CLI: --seeds with --prompt; without a prompt one line and nothing written
    out = tmp_path / "cli-coll"
    base = ["attribute", "--model", tiny_text_dir, "--data", tiny_captions_npz, "--settings", json.dumps(small)]
    assert main(base + ["--seeds", "0", "--out", str(out)]) == 2
    assert "give --prompt" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--seeds", "0", "--prompt", "a dark ring", "a light square", "--sampler-steps", "5",
                        "--out", str(out)]) == 0
    rec = coll.load_record(str(out))
    assert [it["prompt"] for it in rec["items"]] == ["a dark ring", "a light square"]
    assert [it["status"] for it in rec["items"]] == ["done", "done"]

