"""The CLI contract: outputs, determinism, conversions, and bad input (one line, exit 2, nothing written)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import set_settings_defaults
from PIL import Image

from mucs.__main__ import main

FAST = ["--noises", "8", "--max-steps", "3", "--batch-size", "16", "--top-k", "4"]


@pytest.fixture()
def fast_env(monkeypatch, tmp_path):
    # small null-loss estimate for speed, via the model-independent cache dir
    monkeypatch.setenv("MUCS_CACHE_DIR", str(tmp_path / "cache"))
    set_settings_defaults(monkeypatch, null_batches=5, null_batch_size=16)
    from mucs.settings import Settings
    assert Settings().null_batches == 5


def _query(tmp_path, tiny_npz, i=0, size=None, mode=None):
    img = np.load(tiny_npz)["images"][i]
    im = Image.fromarray(img)
    if mode:
        im = im.convert(mode)
    if size:
        im = im.resize(size, Image.Resampling.NEAREST)
    p = tmp_path / f"q{i}.png"
    im.save(p)
    return str(p)


def test_fast_profile_screens_and_refuses_paper_settings_with_it(tiny_model_dir, tiny_npz, tmp_path, fast_env, capsys):
    """--fast starts from the fast profile (screened scoring, half batch, twice the lr); flags still win;
    --fast with --paper-settings is one clear error before anything runs."""
    from mucs.defaults import FAST as PROFILE
    q = _query(tmp_path, tiny_npz)
    base = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0"]
    assert main(base + ["--out", str(tmp_path / "fast"), "--fast", "--noises", "8", "--max-steps", "3",
                        "--screen-keep", "6", "--top-k", "4"]) == 0
    r = json.load(open(tmp_path / "fast" / "result.json"))
    assert r["settings"]["screen_noises"] == PROFILE["screen_noises"] and r["settings"]["screen_keep"] == 6
    assert r["settings"]["batch_size"] == PROFILE["batch_size"] and r["settings"]["lr_factor"] == PROFILE["lr_factor"]
    assert r["screening"]["kept"] == 6
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "both"), "--fast", "--paper-settings"] + FAST) == 2
    assert "--fast and --paper-settings" in capsys.readouterr().err and not (tmp_path / "both").exists()


def test_attribute_writes_scores_and_result(tiny_model_dir, tiny_npz, tmp_path, fast_env, capsys):
    out = tmp_path / "out"
    rc = main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", _query(tmp_path, tiny_npz),
               "--label", "0", "--out", str(out), "--seed", "0", "--lr-factor", "4"] + FAST)
    assert rc == 0
    rows = list(csv.reader(open(out / "scores.csv")))
    assert rows[0] == ["rank", "index", "score", "label", "class", "loss_original", "loss_unlearned"] and len(rows) == 33
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 33))
    scores = [float(r[2]) for r in rows[1:]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(int(r[1]) for r in rows[1:]) == list(range(32))
    labels = np.load(tiny_npz)["labels"]
    names = ["a", "b", "c", "d"]                 # the fixture's class names, written beside each label
    assert all(int(r[3]) == labels[int(r[1])] and r[4] == names[int(r[3])] for r in rows[1:])
    res = json.load(open(out / "result.json"))
    for key in ("settings", "loss_null", "unlearning_steps", "converged", "stage_times", "top_k"):
        assert key in res
    assert res["settings"]["noises"] == 8 and res["unlearning_steps"] <= 3 and res["settings"]["lr_factor"] == 4
    assert res["unlearning_lr"] == pytest.approx(2e-3 / 4)
    assert res["top_k"] == [int(r[1]) for r in rows[1:5]]
    assert set(res["stage_times"]) >= {"original_losses", "null_loss", "unlearning", "unlearned_losses"}
    assert res["query"]["conversions"] == []
    assert "top-k:" in capsys.readouterr().out


def test_query_of_other_size_and_mode_is_converted(tiny_model_dir, tiny_npz, tmp_path, fast_env):
    out = tmp_path / "out"
    q = _query(tmp_path, tiny_npz, size=(24, 16), mode="RGBA")
    assert main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "1",
                 "--out", str(out)] + FAST) == 0
    notes = json.load(open(out / "result.json"))["query"]["conversions"]
    assert any("alpha" in n for n in notes) and any("L" in n for n in notes)
    assert any("cropped" in n for n in notes) and any("resized" in n for n in notes)


def test_generate_same_seed_same_image(tiny_model_dir, tmp_path):
    a, b, c = (str(tmp_path / f"{n}.png") for n in "abc")
    assert main(["generate", "--model", tiny_model_dir, "--label", "2", "--seed", "7", "--steps", "5", "--out", a]) == 0
    assert main(["generate", "--model", tiny_model_dir, "--label", "2", "--seed", "7", "--steps", "5", "--out", b]) == 0
    assert main(["generate", "--model", tiny_model_dir, "--label", "2", "--seed", "8", "--steps", "5", "--out", c]) == 0
    ia, ib, ic = (np.asarray(Image.open(p)) for p in (a, b, c))
    assert ia.shape == (8, 8) and np.array_equal(ia, ib) and not np.array_equal(ia, ic)


def _bad(argv, tmp_path, capsys, expect):
    before = set(os.listdir(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and expect in err, err
    assert set(os.listdir(tmp_path)) == before     # nothing written


def test_bad_inputs(tiny_model_dir, tiny_npz, tmp_path, capsys, fast_env):
    q = _query(tmp_path, tiny_npz)
    os.makedirs(tmp_path / "cache", exist_ok=True)
    out = str(tmp_path / "out")
    base = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--out", out]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _bad(base + ["--image", str(corrupt), "--label", "0"], tmp_path, capsys, "not a readable image")
    _bad(base + ["--image", str(text), "--label", "0"], tmp_path, capsys, "not a readable image")
    _bad(base + ["--image", str(tmp_path / "missing.png"), "--label", "0"], tmp_path, capsys, "not found")
    _bad(base + ["--image", q, "--label", "9"], tmp_path, capsys, "out of range")
    _bad(base + ["--image", q], tmp_path, capsys, "label")
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    _bad(["attribute", "--model", str(notmodel), "--data", tiny_npz, "--image", q, "--label", "0", "--out", out],
         tmp_path, capsys, "not a diffusers model folder")
    _bad(["generate", "--model", str(tmp_path / "nope"), "--seed", "1", "--out", str(tmp_path / "g.png")],
         tmp_path, capsys, "model folder not found")
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 8, 8), np.uint8), labels=np.zeros(0, np.int64))
    _bad(base[:3] + ["--data", str(empty), "--out", out, "--image", q, "--label", "0"], tmp_path, capsys, "empty")
    big = tmp_path / "big.npz"
    np.savez(big, images=np.zeros((4, 16, 16), np.uint8), labels=np.zeros(4, np.int64))
    _bad(base[:3] + ["--data", str(big), "--out", out, "--image", q, "--label", "0"], tmp_path, capsys, "expects 8x8")
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.zeros(4, np.int64))
    _bad(base[:3] + ["--data", str(rgb), "--out", out, "--image", q, "--label", "0"], tmp_path, capsys, "channel")
    nolabels = tmp_path / "nolabels.npz"
    np.savez(nolabels, images=np.zeros((4, 8, 8), np.uint8))
    _bad(base[:3] + ["--data", str(nolabels), "--out", out, "--image", q, "--label", "0"], tmp_path, capsys, "no labels")
    manylabels = tmp_path / "manylabels.npz"
    np.savez(manylabels, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2, 7]))
    _bad(base[:3] + ["--data", str(manylabels), "--out", out, "--image", q, "--label", "0"], tmp_path, capsys, "labels span")


def test_python_dash_m_entry_point(tiny_model_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mucs", "generate", "--model", tiny_model_dir, "--label", "99", "--seed", "1",
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "out of range" in r.stderr
    assert not (tmp_path / "x.png").exists()


# --- one run format, --list-classes, logging (issue 11) -------------------------------------------------
def test_cli_runs_are_listed_and_reopened_by_the_apps_run_store(tiny_model_dir, tiny_npz, tmp_path, fast_env,
                                                                monkeypatch, capsys):
    from mucs.explorer.history import RunStore
    runs = tmp_path / "runs"
    monkeypatch.setenv("MUCS_RUNS_DIR", str(runs))
    base = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", _query(tmp_path, tiny_npz),
            "--label", "0"] + FAST
    assert main(base) == 0                                   # no --out: a new run in the default runs folder
    out = capsys.readouterr().out
    (saved,) = [line.split("run saved: ")[1].split("  ")[0] for line in out.splitlines() if "run saved: " in line]
    assert os.path.dirname(saved) == str(runs)
    assert main(base + ["--out", str(runs / "named")]) == 0  # --out: the same layout, in a folder of one's choosing
    store = RunStore(str(runs), examples=None)              # what the app's history lists
    metas = {m["id"]: m for m in store.list()}
    assert set(metas) == {os.path.basename(saved), "named"}
    for rid, m in metas.items():
        assert m["kind"] == "cli" and m["top_k"] == 4 and m["class_name"] == "a" and m["num_train"] == 32
        att = store.load(rid)
        assert len(att.scores) == 32 and att.settings["noises"] == 8
        assert sorted(os.listdir(store.path(rid))) == sorted([".mucs", "losses.npz", "meta.json", "query.png",
                                                              "result.json", "scores.csv"])
    other = tmp_path / "elsewhere"
    assert main(base + ["--runs", str(other)]) == 0          # --runs: a new run in that folder
    assert len(RunStore(str(other), examples=None).list()) == 1
    assert main(base + ["--runs", str(other), "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err


def test_list_classes_prints_the_class_names(tiny_model_dir, tiny_npz, capsys):
    assert main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--list-classes"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0: a", "1: b", "2: c", "3: d"]
    assert main(["attribute", "--model", tiny_model_dir, "--list-classes"]) == 0   # names from mucs_train.json
    assert capsys.readouterr().out.splitlines() == ["0: a", "1: b", "2: c", "3: d"]


def test_fallbacks_and_cache_rebuilds_are_logged(tiny_model_dir, tiny_npz, tmp_path, fast_env, caplog):
    import glob
    import logging
    import shutil
    q = _query(tmp_path, tiny_npz)
    base = ["attribute", "--data", tiny_npz, "--image", q, "--label", "0"] + FAST
    with caplog.at_level(logging.INFO, logger="mucs"):
        assert main(base + ["--model", tiny_model_dir, "--out", str(tmp_path / "a")]) == 0
    text = caplog.text
    for expect in ("noise set: building K=8", "loss_original: cache miss", "loss_original: rebuilt and cached",
                   "loss_null: cache miss", "loss_null: rebuilt", "32 images 8x8x1 loaded"):
        assert expect in text, expect
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mucs"):
        assert main(base + ["--model", tiny_model_dir, "--out", str(tmp_path / "b")]) == 0
    assert "loss_original: cache hit" in caplog.text and "loss_null: cache hit" in caplog.text
    assert "cache miss" not in caplog.text
    # a damaged cache file: a warning, then a rebuild
    (lo_file,) = glob.glob(str(tmp_path / "cache" / "loss_original-*.safetensors"))
    with open(lo_file, "r+b") as f:
        f.truncate(100)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mucs"):
        assert main(base + ["--model", tiny_model_dir, "--out", str(tmp_path / "c")]) == 0
    assert "is corrupt, partial or for other inputs" in caplog.text and "loss_original: rebuilt and cached" in caplog.text
    # a model that records no training lr: the default-lr fallback is a warning; --train-lr silences it
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    os.remove(bare / "mucs_train.json")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mucs"):
        assert main(base + ["--model", str(bare), "--out", str(tmp_path / "d")]) == 0
    assert any(r.levelno == logging.WARNING and "no training learning rate" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mucs"):
        assert main(base + ["--model", str(bare), "--train-lr", "2e-3", "--out", str(tmp_path / "e")]) == 0
    assert "no training learning rate" not in caplog.text


def test_several_images_in_one_call_share_the_setup_and_match_single_runs(tiny_model_dir, tiny_npz, tmp_path,
                                                                          fast_env, capsys):
    """`--image a b` writes one run per image under --out, computes L_o and L_null once (the second
    query finds them cached), and each run equals the same query attributed on its own."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    qa = _query(tmp_path / "a", tiny_npz, i=0)
    qb = str(tmp_path / "b" / "q0.png")                  # the same file name in another folder, another image
    os.rename(_query(tmp_path / "b", tiny_npz, i=5), qb)
    out = tmp_path / "runs"
    rc = main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", qa, qb, "--label", "0", "1",
               "--out", str(out), "--seed", "0", "--lr-factor", "4"] + FAST)
    assert rc == 0
    runs = sorted(os.listdir(out))
    assert len(runs) == 2 and runs[0].startswith("1-") and runs[1].startswith("2-"), runs
    first, second = (json.load(open(out / r / "result.json")) for r in runs)
    assert second["cache_hits"] == {"original_losses": True, "null_loss": True}
    assert first["query"]["label"] == 0 and second["query"]["label"] == 1
    single = tmp_path / "single"
    assert main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", qb, "--label", "1",
                 "--out", str(single), "--seed", "0", "--lr-factor", "4"] + FAST) == 0
    both = np.load(out / runs[1] / "losses.npz")["scores"]
    np.testing.assert_allclose(both, np.load(single / "losses.npz")["scores"], rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    before = set(os.listdir(tmp_path))
    assert main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", qa, qb, "--label", "0", "1", "2",
                 "--out", str(tmp_path / "x")] + FAST) == 2
    assert "one --label for every --image" in capsys.readouterr().err and set(os.listdir(tmp_path)) == before


def test_train_help_says_what_each_option_does_and_its_default():
    """Issue 23, point 5: `mucs train -h` had no help text or defaults."""
    import argparse
    from mucs.__main__ import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    assert train.description and "mucs attribute --model" in train.description
    for act in train._actions:
        if isinstance(act, argparse._HelpAction):
            continue
        assert act.help, act.dest
        if act.default not in (None, False):
            assert f"[{act.default:g}" in act.help if isinstance(act.default, float) else f"[{act.default}" in act.help, \
                (act.dest, act.default, act.help)
