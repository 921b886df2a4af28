"""Reliability (issue 14): never lose a user's files, never hang, never leak staging folders, and
one `error:` line (exit 2, nothing written) for every bad input family."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import set_settings_defaults
from PIL import Image

from mucs.__main__ import main
from mucs.cache import (MARKER, atomic_write_dir, check_out_dir, check_writable_dir, folder_kind, load_arrays,
                        recover_dir, save_arrays, save_arrays_best_effort)
from mucs.checks import dumps_strict, require_finite
from mucs.settings import check_settings_dict
from mucs.errors import MucsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--noises", "4", "--max-steps", "2", "--batch-size", "16", "--top-k", "3"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture()
def fast_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MUCS_CACHE_DIR", str(tmp_path / "cache"))
    set_settings_defaults(monkeypatch, null_batches=3, null_batch_size=16)
    from mucs.settings import Settings
    assert Settings().null_batches == 3


@pytest.fixture()
def work(tmp_path):
    """A folder with a precious user file, a query image and an empty place for outputs."""
    w = tmp_path / "w"
    w.mkdir()
    (w / "thesis.tex").write_text("precious")
    return w


def _query(folder, tiny_npz):
    p = folder / "q.png"
    Image.fromarray(np.load(tiny_npz)["images"][0]).save(p)
    return str(p)


def _snapshot(root):
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
    return out


def _refused(argv, root, capsys, expect):
    """main(argv) exits 2 with one `error:` line containing `expect`, and nothing under `root` changes."""
    before = _snapshot(root)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("error:")]
    assert len(err) == 1 and expect in err[0], err
    assert _snapshot(root) == before


# --- bad inputs: one family per parametrised test --------------------------------------------------
TRAIN_BAD = [
    (["--batch-size", "0"], "batch size"), (["--lr", "nan"], "--lr must be a finite"),
    (["--lr", "inf"], "--lr must be a finite"), (["--lr", "0"], "learning rate"), (["--lr", "-1"], "learning rate"),
    (["--channels", "8,abc"], "--channels must be comma-separated integers"),
    (["--channels", "8,12"], "divisible by the group-norm"), (["--beta-schedule", "bogus"], "beta schedule 'bogus'"),
    (["--timesteps", "0"], "timesteps"), (["--layers-per-block", "0"], "layers per block"),
    (["--steps", "0"], "steps must be"), (["--seed", str(10**20)], "--seed must be an integer"),
    (["--seed", "-1"], "--seed must be an integer"), (["--device", "meta"], "--device must be cpu"),
    (["--ema-decay", "1.5"], "EMA decay"), (["--size", "0"], "--size"),
    (["--out", "/proc/x"], "does not take new files"),   # issue 21, point 8: a pseudo file system
]


@pytest.mark.parametrize("extra,expect", TRAIN_BAD, ids=[" ".join(e) for e, _ in TRAIN_BAD])
def test_train_bad_options(extra, expect, tiny_npz, work, capsys):
    _refused(["train", "--data", tiny_npz, "--out", str(work / "model")] + extra, work, capsys, expect)


GENERATE_BAD = [
    (["--steps", "0"], "steps must be an integer in 1..1000"), (["--steps", "-3"], "steps must be"),
    (["--steps", "5000"], "steps must be"), (["--seed", str(10**20)], "--seed must be"),
    (["--device", "meta"], "--device must be cpu"), (["--out", "{w}/x.jpg"], "must be a .png"),
    (["--out", "{w}/thesis.tex/x.png"], "not a folder"), (["--out", "{w}"], "must be a .png"),
]


@pytest.mark.parametrize("extra,expect", GENERATE_BAD, ids=[" ".join(e) for e, _ in GENERATE_BAD])
def test_generate_bad_options(extra, expect, tiny_model_dir, work, capsys):
    argv = ["generate", "--model", tiny_model_dir, "--label", "1", "--seed", "1", "--steps", "2",
            "--out", str(work / "g.png")] + [e.format(w=work) for e in extra]
    _refused(argv, work, capsys, expect)


ATTRIBUTE_BAD = [
    (["--seed", str(10**20)], "--seed must be"), (["--frozen", "."], "nothing is left to unlearn"),
    (["--device", "meta"], "--device must be cpu"), (["--lam", "inf"], "--lam must be a finite"),
    (["--tol", "nan"], "--tol must be a finite"), (["--out", "{w}/thesis.tex"], "existing file, not a folder"),
    (["--out", "{w}"], "does not hold a MUCS run"), (["--out", "{model}"], "would replace the input"),
    (["--out", "{w}/thesis.tex/sub"], "not a folder"), (["--cache-dir", "{w}/thesis.tex"], "--cache-dir"),
    (["--cache-dir", "{w}/thesis.tex/c"], "not a folder"),
    # issue 21, points 6 and 8: every setting in its declared range (mucs.settings.RANGES), refused before any work
    (["--unlearning-lr", "0"], "setting lr must be in [1e-08, 10], got 0"), (["--unlearning-lr", "1e-300"], "lr must be in"),
    (["--unlearning-lr", "-1"], "lr must be in"), (["--settings", '{{"default_lr": 0}}'], "default_lr must be in"),
    (["--null-batch-size", "0"], "null_batch_size must be ≥ 1"), (["--weight-decay", "-1"], "weight_decay must be in"),
    (["--rho", "0"], "rho must be in (0, 100]"), (["--lr-factor", "1e-300"], "lr_factor must be in"),
    (["--p-mean", "1e308"], "p_mean must be in"), (["--train-lr", "1e308"], "--train-lr must be in"),
    (["--train-lr", "10", "--lr-factor", "0.001"], "the unlearning lr, training lr 10 ÷ lr factor 0.001"),
    (["--settings", "[" * 100_000 + "]" * 100_000], "nested too deeply"),
]


@pytest.mark.parametrize("extra,expect", ATTRIBUTE_BAD, ids=[" ".join(e)[:40] for e, _ in ATTRIBUTE_BAD])
def test_attribute_bad_options(extra, expect, tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env):
    q = _query(tmp_path, tiny_npz)
    argv = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0",
            "--out", str(work / "run")] + FAST + [e.format(w=work, model=tiny_model_dir) for e in extra]
    before_model = _snapshot(tiny_model_dir)
    _refused(argv, work, capsys, expect)
    assert _snapshot(tiny_model_dir) == before_model


MALFORMED = [("mucs_train.json", "{not json", "cannot read"), ("mucs_train.json", "[1, 2]", "must be a JSON object"),
             ("mucs_train.json", '{"lr": "fast"}', "lr must be a positive number"),
             ("mucs_settings.json", "{oops", "cannot read"), ("mucs_settings.json", '{"settings": {"noises": "x"}}',
                                                            "noises must be an integer"),
             ("mucs_settings.json", '{"settings": {"nosies": 3}}', "unknown setting 'nosies'")]


@pytest.mark.parametrize("name,body,expect", MALFORMED, ids=[f"{n}:{b}" for n, b, _ in MALFORMED])
def test_malformed_model_json(name, body, expect, tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / name).write_text(body)
    q = _query(tmp_path, tiny_npz)
    _refused(["attribute", "--model", str(model), "--data", tiny_npz, "--image", q, "--label", "0",
              "--out", str(work / "run")] + FAST, work, capsys, expect)


NPZ_BAD = [("labels", np.array([0, 1.7, 2, 3] * 8), "found 1.7"), ("labels", np.array([0, np.nan, 1, 2] * 8), "NaN"),
           ("labels", np.array(["a", "b", "c", "d"] * 8), "labels must be integers"),
           ("labels", np.array([0, -1, 1, 2] * 8), "≥ 0"), ("text", None, "not an .npz archive"),
           ("labels", np.array([0, 1, 2, 2**63 + 5] * 8, np.uint64), "must be class indices, found 9223372036854775813")]


@pytest.mark.parametrize("kind,labels,expect", NPZ_BAD, ids=[e for _, _, e in NPZ_BAD])
def test_bad_npz_labels(kind, labels, expect, tiny_npz, tmp_path, work, capsys):
    bad = tmp_path / "bad.npz"
    if kind == "text":
        bad.write_text("just text")
    else:
        np.savez(bad, images=np.load(tiny_npz)["images"], labels=labels)
    _refused(["train", "--data", str(bad), "--out", str(work / "model"), "--steps", "1"], work, capsys, expect)


def _broken_copy(tiny_model_dir, folder, edit):
    """A copy of the tiny model with `edit(folder)` applied."""
    shutil.copytree(tiny_model_dir, folder)
    edit(folder)
    return str(folder)


def _nan_weight(folder):
    from safetensors.torch import load_file, save_file
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(f)
    w[sorted(w)[-1]][..., 0] = float("nan")
    save_file(w, f)


def _no_timesteps(folder):
    f = folder / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps(dict(json.loads(f.read_text()), num_train_timesteps=0)))


@pytest.mark.parametrize("edit,expect", [(_nan_weight, "holds NaN or inf"), (_no_timesteps, "num_train_timesteps must be")])
def test_a_model_with_nan_weights_or_no_timesteps_is_refused(edit, expect, tiny_model_dir, tiny_npz, tmp_path, work,
                                                             capsys, fast_env):
    """Issue 21, points 6 and 8: not an all-black PNG or a traceback, but one line before any work."""
    model = _broken_copy(tiny_model_dir, tmp_path / "m", edit)
    _refused(["generate", "--model", model, "--label", "1", "--seed", "1", "--steps", "2", "--out", str(work / "g.png")],
             work, capsys, expect)
    _refused(["attribute", "--model", model, "--data", tiny_npz, "--image", _query(tmp_path, tiny_npz), "--label", "0",
              "--out", str(work / "run")] + FAST, work, capsys, expect)


def test_nan_pixels_of_a_float_tiff_are_refused(tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env):
    """Issue 21, point 6: a float image's NaN pixels are not turned into 0, in the training set or the query."""
    a = np.random.default_rng(0).random((8, 8)).astype(np.float32) * 255
    folder = tmp_path / "imgs"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(a, "F").save(folder / c / f"{i}.tif")
    a[3, 3] = np.nan
    Image.fromarray(a, "F").save(folder / "b" / "1.tif")
    _refused(["train", "--data", str(folder), "--out", str(work / "model"), "--steps", "1"], work, capsys,
             "1 pixel(s) are NaN or inf")
    _refused(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", str(folder / "b" / "1.tif"),
              "--label", "0", "--out", str(work / "run")] + FAST, work, capsys, "query image: 1 pixel(s) are NaN")


@pytest.mark.parametrize("auth", [":", "user:", ":pass", ""])
def test_app_auth_needs_user_and_password(auth, capsys):
    import app
    with pytest.raises(SystemExit) as e:
        app.parse_args(["--host", "0.0.0.0", "--auth", auth])
    assert e.value.code == 2


@pytest.mark.parametrize("text,expect", [('{"noises": "x"}', "noises must be an integer"),
                                         ('{"nosies": 3}', "unknown setting"), ('{"lam": true}', "lam must be"),
                                         ('{"frozen": [1]}', "frozen must be"), ('{"seed": 1e30}', "seed must be"),
                                         ('{"lam": NaN}', "finite"), ('{"settings": {"top_k": 2.5}}', "top_k")])
def test_app_settings_checked(text, expect):
    import app
    with pytest.raises(MucsError, match=expect.replace("(", r"\(")):
        app.load_overrides(text)
    assert app.load_overrides('{"noises": 4, "lam": 1, "frozen": ["bias"]}') == {"noises": 4, "lam": 1.0,
                                                                                 "frozen": ("bias",)}


def test_app_main_bad_settings_is_one_line(capsys):
    import app
    assert app.main(["--settings", '{"noises": "x"}']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "noises" in err


def test_check_settings_dict_accepts_every_default():
    from dataclasses import asdict
    from mucs.settings import Settings
    d = asdict(Settings())
    assert check_settings_dict(d)["frozen"] == tuple(Settings().frozen)


# --- data loss ----------------------------------------------------------------------------------
def test_out_folder_of_user_files_survives_every_command(tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env):
    q = _query(tmp_path, tiny_npz)
    imgs = tmp_path / "imgs"
    (imgs / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(imgs / "a" / "0.png")
    (work / "other.png").write_bytes(b"\x89PNG\r\n\x1a\nnot ours")
    (work / "results.json").write_text('{"mine": 1}')
    model_before = _snapshot(tiny_model_dir)
    _refused(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0",
              "--out", str(work)] + FAST, work, capsys, "does not hold a MUCS run")
    _refused(["train", "--data", str(imgs), "--out", str(imgs), "--steps", "1"], imgs, capsys, "would replace the input")
    _refused(["train", "--data", str(imgs), "--out", str(imgs), "--steps", "1", "--force"], imgs, capsys,
             "would replace the input")
    _refused(["train", "--data", tiny_npz, "--out", str(work), "--steps", "1"], work, capsys, "does not hold a MUCS model")
    _refused(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0",
              "--out", tiny_model_dir] + FAST, work, capsys, "would replace the input")
    _refused(["generate", "--model", tiny_model_dir, "--label", "0", "--seed", "1", "--steps", "2",
              "--out", str(work / "other.png")], work, capsys, "not written by mucs")
    _refused(["evaluate", "--out", str(work / "results.json"), "--cached-only", "--work", str(work / "ev")], work, capsys,
             "--force")
    assert (work / "thesis.tex").read_text() == "precious" and _snapshot(tiny_model_dir) == model_before


def test_attribute_out_a_model_folder_is_refused_even_when_not_an_input(tiny_model_dir, tiny_npz, tmp_path, capsys,
                                                                       fast_env):
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    (other / MARKER).unlink(missing_ok=True)          # a model from before the marker: still a model
    assert folder_kind(str(other)) == "model"
    _refused(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", _query(tmp_path, tiny_npz),
              "--label", "0", "--out", str(other)] + FAST, other, capsys, "holds a MUCS model, not a run")


def test_generate_replaces_only_its_own_png(tiny_model_dir, tmp_path, capsys):
    def gen(out, seed, *extra):
        return main(["generate", "--model", tiny_model_dir, "--label", "0", "--seed", str(seed), "--steps", "2",
                     "--out", str(out), *extra])
    out = tmp_path / "g.png"
    assert gen(out, 1) == 0
    first = out.read_bytes()
    assert gen(out, 2) == 0 and out.read_bytes() != first          # written by generate: replaced
    foreign = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(foreign)
    keep = foreign.read_bytes()
    assert gen(foreign, 1) == 2 and foreign.read_bytes() == keep
    assert gen(foreign, 1, "--force") == 0 and foreign.read_bytes() != keep


def test_attribute_replaces_an_earlier_run_and_force_writes_beside_a_foreign_folders_files(tiny_model_dir, tiny_npz, tmp_path,
                                                                              work, capsys, fast_env):
    q = _query(tmp_path, tiny_npz)
    old_run = tmp_path / "old_run"          # an earlier run from before the marker: result.json + scores.csv + losses.npz
    old_run.mkdir()
    for name in ("result.json", "scores.csv", "losses.npz"):
        (old_run / name).write_text("old")
    base = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0"] + FAST
    assert main(base + ["--out", str(old_run)]) == 0
    assert json.load(open(old_run / "result.json"))["top_k"] and folder_kind(str(old_run)) == "run"
    assert main(base + ["--out", str(work), "--force"]) == 0          # beside the user's file, which is kept
    assert (work / "thesis.tex").read_text() == "precious" and folder_kind(str(work)) == "run"
    assert [n for n in os.listdir(tmp_path) if n.startswith((".tmp-", ".old-"))] == []


def test_library_swap_refuses_foreign_folders(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    with pytest.raises(MucsError, match="does not hold a MUCS run"):
        atomic_write_dir(str(d), {"result.json": b"{}"})
    assert os.listdir(d) == ["thesis.tex"] and os.listdir(tmp_path) == ["d"]
    atomic_write_dir(str(d), {"result.json": b"{}"}, force=True)   # beside the foreign file, which is kept
    assert sorted(os.listdir(d)) == [MARKER, "result.json", "thesis.tex"]
    atomic_write_dir(str(d), {"result.json": b"[]"})          # ours now: our file replaced without force
    assert (d / "result.json").read_bytes() == b"[]" and (d / "thesis.tex").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    atomic_write_dir(str(tmp_path / "empty"), {"a": b"1"})     # an empty folder holds nothing to lose
    with pytest.raises(MucsError, match="holds a MUCS run, not a model"):
        check_out_dir(str(d), "model")


# --- issue 21, point 1: a command replaces only files it wrote; never an input, with or without --force ---
def _attr(tiny_model_dir, tiny_npz, q, out, *extra):
    return ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0",
            "--out", str(out)] + FAST + list(extra)


def test_rewriting_a_run_or_model_keeps_the_files_the_user_added(tiny_model_dir, tiny_npz, tmp_path, capsys,
                                                                 fast_env):
    q = _query(tmp_path, tiny_npz)
    run = tmp_path / "run"
    assert main(_attr(tiny_model_dir, tiny_npz, q, run)) == 0
    (run / "my_notes.txt").write_text("notes")
    (run / "plots").mkdir()
    (run / "plots" / "fig.pdf").write_bytes(b"%PDF")
    first = os.stat(run / "meta.json").st_ino
    assert main(_attr(tiny_model_dir, tiny_npz, q, run)) == 0                    # no --force needed: a run of ours
    assert (run / "my_notes.txt").read_text() == "notes" and (run / "plots" / "fig.pdf").read_bytes() == b"%PDF"
    # rewritten (a new file: the content may be the same when both runs fall in one second)
    assert os.stat(run / "meta.json").st_ino != first and folder_kind(str(run)) == "run"
    marker = json.load(open(run / MARKER))
    assert marker["mucs"] == "run" and "my_notes.txt" not in marker["files"] and "scores.csv" in marker["files"]
    model = tmp_path / "model"
    train = ["train", "--data", tiny_npz, "--out", str(model), "--steps", "1", "--batch-size", "4",
             "--channels", "8,16", "--no-attention"]
    assert main(train) == 0
    (model / "README.md").write_text("my model")
    assert main(train + ["--seed", "1"]) == 0
    assert (model / "README.md").read_text() == "my model" and json.load(open(model / "mucs_train.json"))["seed"] == 1
    assert [n for n in os.listdir(tmp_path) if n.startswith((".tmp-", ".old-"))] == []


def test_out_equal_to_or_inside_any_input_is_refused_with_or_without_force(tiny_model_dir, tiny_npz, tmp_path,
                                                                           capsys, fast_env, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    imgs = tmp_path / "imgs"
    for c in ("c0", "c1"):
        (imgs / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(imgs / c / f"{i}.png")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "keep.txt").write_text("x")
    monkeypatch.setenv("MUCS_RUNS_DIR", str(runs))
    q = _query(tmp_path, tiny_npz)
    cache = os.environ["MUCS_CACHE_DIR"]
    os.makedirs(cache, exist_ok=True)
    for force in ([], ["--force"]):
        _refused(_attr(str(model), tiny_npz, q, model / "unet", *force), tmp_path, capsys, "lies inside the input")
        _refused(_attr(str(model), tiny_npz, q, model, *force), tmp_path, capsys, "would replace the input")
        _refused(_attr(str(model), str(imgs), q, imgs / "c0", *force), tmp_path, capsys, "lies inside the input")
        _refused(_attr(str(model), tiny_npz, q, os.path.join(cache, "x"), *force), tmp_path, capsys,
                 "lies inside the input")
        _refused(_attr(str(model), tiny_npz, q, runs, *force), tmp_path, capsys, "is the runs folder")
        _refused(["train", "--data", str(imgs), "--out", str(imgs / "c0"), "--steps", "1", *force], tmp_path, capsys,
                 "lies inside the input")
        _refused(["train", "--data", str(imgs), "--out", str(imgs), "--steps", "1", *force], tmp_path, capsys,
                 "would replace the input")
        _refused(["generate", "--model", str(model), "--label", "0", "--seed", "1", "--steps", "2",
                  "--out", str(model / "x.png"), *force], tmp_path, capsys, "lies inside the input")


def test_force_writes_beside_a_foreign_folders_files_and_never_deletes_one(tiny_model_dir, tiny_npz, tmp_path,
                                                                           capsys, fast_env, monkeypatch):
    q = _query(tmp_path, tiny_npz)
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    (photos / "2024" / "a.jpg").write_bytes(b"jpeg")
    (photos / "thesis.tex").write_text("precious")
    before = _snapshot(photos)
    _refused(_attr(tiny_model_dir, tiny_npz, q, photos), photos, capsys, "pass --force to write the run into it")
    assert main(_attr(tiny_model_dir, tiny_npz, q, photos, "--force")) == 0
    after = _snapshot(photos)
    assert {k: v for k, v in after.items() if k in before} == before          # every file and folder kept
    assert folder_kind(str(photos)) == "run" and (photos / "scores.csv").exists()
    assert main(_attr(tiny_model_dir, tiny_npz, q, photos)) == 0               # ours now: rewritten, still kept
    assert {k: v for k, v in _snapshot(photos).items() if k in before} == before
    user = tmp_path / "userfolder"                                             # train --out userfolder --force
    user.mkdir()
    (user / "data.csv").write_text("1,2")
    assert main(["train", "--data", tiny_npz, "--out", str(user), "--steps", "1", "--batch-size", "4",
                 "--channels", "8,16", "--no-attention", "--force"]) == 0
    assert (user / "data.csv").read_text() == "1,2" and folder_kind(str(user)) == "model"
    cwd = tmp_path / "cwd"                                                      # --out . --force in a user folder
    cwd.mkdir()
    (cwd / "notes.md").write_text("n")
    monkeypatch.chdir(cwd)
    assert main(_attr(tiny_model_dir, tiny_npz, q, ".", "--force")) == 0
    assert (cwd / "notes.md").read_text() == "n" and (cwd / "result.json").exists()
    # a file of the user's under a name the run would write: refused even with --force, nothing changes
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "scores.csv").write_text("my scores")
    for force in ([], ["--force"]):
        _refused(_attr(tiny_model_dir, tiny_npz, q, clash, *force), clash, capsys,
                 "pass --force" if not force else "holds scores.csv, which mucs did not write")
    # a folder of another MUCS kind, and a symbolic link: refused even with --force
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    link = tmp_path / "link"
    link.symlink_to(photos)
    for force in ([], ["--force"]):
        _refused(_attr(tiny_model_dir, tiny_npz, q, model, *force), tmp_path, capsys, "holds a MUCS model, not a run")
        _refused(_attr(tiny_model_dir, tiny_npz, q, link, *force), tmp_path, capsys, "is a symbolic link")


KILL_WHILE_CARRYING = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from mucs import cache
real = os.rename
def rename(a, b):
    real(a, b)
    if os.path.basename(a) == "mine.txt":              # first kept file moved back: stop before the second
        open(sys.argv[3], "w").close()
        time.sleep(120)
os.rename = rename
cache.atomic_write_dir(sys.argv[2], {"result.json": b"new"}, force=True)
"""


@pytest.mark.parametrize("stop", ["aside", "carrying"])
def test_kill_while_writing_beside_foreign_files_loses_none_of_them(tmp_path, stop):
    out = tmp_path / "folder"
    out.mkdir()
    for n in ("mine.txt", "zz.txt"):
        (out / n).write_text(n)
    ready = tmp_path / "ready"
    script = KILL_WHILE_CARRYING if stop == "carrying" else KILL_IN_SWAP.replace(
        '{"result.json": b"new"})', '{"result.json": b"new"}, force=True)')
    p = subprocess.Popen([sys.executable, "-c", script, REPO, str(out), str(ready)])
    try:
        t0 = time.time()
        while not ready.exists():
            assert p.poll() is None and time.time() - t0 < 120, "the writer never reached the point"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    recover_dir(str(out), stale_seconds=0)                     # what any later command does first
    assert (out / "mine.txt").read_text() == "mine.txt" and (out / "zz.txt").read_text() == "zz.txt"
    assert sorted(os.listdir(tmp_path)) == ["folder", "ready"]


# --- crash safety ---------------------------------------------------------------------------------
KILL_IN_SWAP = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from mucs import cache
real = os.rename
def rename(a, b):
    real(a, b)
    if os.path.basename(os.path.dirname(b)).startswith(".old-"):   # first rename done: old content moved aside
        open(sys.argv[3], "w").close()
        time.sleep(120)
os.rename = rename
cache.atomic_write_dir(sys.argv[2], {"result.json": b"new"})
"""


def test_kill_between_the_two_renames_is_recovered(tmp_path):
    out = tmp_path / "run"
    atomic_write_dir(str(out), {"result.json": b"old"})
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-c", KILL_IN_SWAP, REPO, str(out), str(ready)])
    try:
        t0 = time.time()
        while not ready.exists():
            assert p.poll() is None and time.time() - t0 < 120, "the writer never reached the swap"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    assert not out.exists()                                    # the state a kill leaves: target missing
    assert any(n.startswith(".old-run-") for n in os.listdir(tmp_path))
    check_out_dir(str(out), "run")                             # any command's start recovers it
    assert (out / "result.json").read_bytes() == b"old"
    recover_dir(str(out), stale_seconds=0)                     # the young .tmp- goes once it is stale
    assert sorted(os.listdir(tmp_path)) == ["ready", "run"]
    atomic_write_dir(str(out), {"result.json": b"newer"})
    assert (out / "result.json").read_bytes() == b"newer"


def test_kill_during_an_attribution_keeps_the_earlier_run(tiny_model_dir, tiny_npz, tmp_path):
    out = tmp_path / "run"
    atomic_write_dir(str(out), {"result.json": b"{}", "scores.csv": b"", "losses.npz": b""})
    before = _snapshot(out)
    env = dict(os.environ, MUCS_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-m", "mucs", "attribute", "--model", tiny_model_dir, "--data", tiny_npz,
                          "--image", _query(tmp_path, tiny_npz), "--label", "0", "--out", str(out), "--noises", "4",
                          "--max-steps", "500", "--tol", "0", "--batch-size", "16"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tmp_path), env=env)
    try:
        seen = b""
        t0 = time.time()
        while b"%" not in seen:                               # a progress bar: in the middle of the computation
            assert time.time() - t0 < 240, seen[-500:]
            chunk = os.read(p.stderr.fileno(), 4096)
            assert chunk, f"attribute ended early: {seen[-500:]!r}"
            seen += chunk
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
        p.stderr.close()
    assert _snapshot(out) == before
    recover_dir(str(out), stale_seconds=0)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []


def test_concurrent_writers_neither_fail_nor_leak(tmp_path):
    out = str(tmp_path / "run")
    errors = []

    def writer(i):
        try:
            for j in range(15):
                atomic_write_dir(out, {"result.json": f"{i}-{j}".encode(), "scores.csv": b"x" * 1000})
        except Exception as e:   # noqa: BLE001 - any failure is the bug under test
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(os.listdir(tmp_path)) == ["run"]
    assert sorted(os.listdir(out)) == [MARKER, "result.json", "scores.csv"]


def test_out_check_waits_for_a_swap_in_progress(tmp_path):
    """CI caught it once: a check that read the folder between a concurrent writer's two renames saw
    the run half-gone and refused it as "not a MUCS run". The check now reads under the swap lock."""
    from mucs.cache import swap_lock
    out = str(tmp_path / "run")
    atomic_write_dir(out, {"result.json": b"1", "scores.csv": b"x"})
    done, errors = threading.Event(), []

    def check():
        try:
            check_out_dir(out, "run")
        except MucsError as e:
            errors.append(e)
        done.set()
    with swap_lock(out):   # a writer between its two renames: `out` is briefly missing
        os.rename(out, str(tmp_path / "aside"))
        t = threading.Thread(target=check)
        t.start()
        assert not done.wait(0.3), "the check read the folder while a swap was under way"
        os.rename(str(tmp_path / "aside"), out)
    t.join(10)
    assert done.is_set() and errors == []


def test_stale_staging_of_a_crash_is_removed_but_a_live_one_is_kept(tmp_path):
    out = tmp_path / "run"
    atomic_write_dir(str(out), {"result.json": b"1"})
    stale, live = tmp_path / ".tmp-run-aaaaaaaa", tmp_path / ".tmp-run-bbbbbbbb"
    foreign = tmp_path / ".tmp-mine"
    for d in (stale, live, foreign):
        d.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    os.utime(foreign, (time.time() - 7200, time.time() - 7200))
    recover_dir(str(out))
    assert not stale.exists() and live.exists() and foreign.exists()


# --- write failures and special files -------------------------------------------------------------
def test_unwritable_out_and_cache_fail_before_computing(tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env,
                                                        monkeypatch):
    calls = []
    monkeypatch.setattr("mucs.sources.models.load_model", lambda *a, **k: calls.append(1))
    q = _query(tmp_path, tiny_npz)
    base = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0"] + FAST
    _refused(base + ["--out", str(work / "thesis.tex" / "run")], work, capsys, "not a folder")
    _refused(base + ["--out", str(work / "run"), "--cache-dir", str(work / "thesis.tex")], work, capsys, "--cache-dir")
    assert calls == []          # refused before the model was even loaded


@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod does not stop root from writing (the file-in-the-way "
                                    "variant above covers the check)")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(MucsError, match="not writable"):
            check_writable_dir(str(ro / "out"), "--out")
        with pytest.raises(MucsError, match="not writable"):
            check_out_dir(str(ro / "out"), "run")
    finally:
        ro.chmod(0o755)


def _read_only_mount():
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 3 and "ro" in parts[3].split(",") and os.path.isdir(parts[1]):
                    return parts[1]
    except OSError:
        pass
    return None


@pytest.mark.skipif(_read_only_mount() is None, reason="no read-only mount on this machine")
def test_read_only_file_system_is_refused():
    with pytest.raises(MucsError, match="read-only|not writable"):
        check_writable_dir(os.path.join(_read_only_mount(), "mucs-out"), "--out")


def test_fifo_at_a_cache_path_does_not_hang(tmp_path):
    p = str(tmp_path / "loss_original-k.safetensors")
    os.mkfifo(p)
    result = {}

    def load():
        try:
            result["value"] = load_arrays(p, "k")
        except MucsError as e:
            result["error"] = str(e)
    t = threading.Thread(target=load, daemon=True)
    t0 = time.time()
    t.start()
    t.join(10)
    if t.is_alive():   # unblock the reader so that the test process can exit
        fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("load_arrays blocked on a FIFO")
    assert "FIFO" in result.get("error", "") and time.time() - t0 < 5


def test_folder_at_a_cache_path_and_failed_cache_writes(tmp_path, caplog):
    d = tmp_path / "loss_original-k.safetensors"
    d.mkdir()
    with pytest.raises(MucsError, match="is a folder"):
        load_arrays(str(d), "k")
    with caplog.at_level(logging.WARNING, logger="mucs"):
        assert save_arrays_best_effort(str(d), "k", loss=np.arange(3.0)) is False
        assert save_arrays_best_effort(str(tmp_path / "f" / "x.npz"), "k", loss=np.arange(3.0)) is True
        (tmp_path / "file").write_text("x")
        assert save_arrays_best_effort(str(tmp_path / "file" / "x.npz"), "k", loss=np.arange(3.0)) is False
    assert "the result is kept" in caplog.text
    save_arrays(str(tmp_path / "ok.npz"), "k", loss=np.arange(3.0))
    assert load_arrays(str(tmp_path / "ok.npz"), "k")["loss"].tolist() == [0, 1, 2]


def test_run_store_on_a_file_is_one_clear_error(tmp_path):
    from mucs.explorer.history import RunStore
    (tmp_path / "file").write_text("x")
    with pytest.raises(MucsError, match="run folder"):
        RunStore(str(tmp_path / "file"), examples=None)
    with pytest.raises(MucsError, match="not a folder"):
        RunStore(str(tmp_path / "file" / "runs"), examples=None)


# --- finite values and strict JSON -------------------------------------------------------------------
def test_require_finite_and_strict_json():
    import torch
    assert require_finite("scores", np.arange(3.0), "scoring") is not None
    require_finite("L_null", 0.5, "null loss")
    require_finite("counts", np.arange(3), "x")
    with pytest.raises(MucsError, match=r"non-finite values in scores during scoring: NaN \(1 of 3"):
        require_finite("scores", np.array([0.0, np.nan, 1.0]), "scoring")
    with pytest.raises(MucsError, match="non-finite values in L_f during unlearning: inf"):
        require_finite("L_f", torch.tensor(float("inf")), "unlearning")
    with pytest.raises(MucsError, match="non-finite values in L_null"):
        require_finite("L_null", float("nan"), "null loss")
    assert json.loads(dumps_strict({"a": [1.5]})) == {"a": [1.5]}
    with pytest.raises(MucsError, match=r"\$\.b\[1\]"):
        dumps_strict({"a": 1, "b": [0.0, float("inf")]}, "result.json")


# --- memory limits, the bounded noise-set memo, pickle weights -------------------------------------
@pytest.fixture(scope="module")
def default_attributor(tmp_path_factory):
    """An Attributor on the embedded default model (loads in seconds; nothing is trained)."""
    from mucs.method.attribute import Attributor
    from mucs.sources.data import load_dataset
    from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL
    from mucs.sources.models import load_model
    return Attributor(load_model(DEFAULT_MODEL, "cpu"), load_dataset(DEFAULT_DATA),
                      cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_memory_estimate_grows_with_the_request_and_refuses_what_does_not_fit(default_attributor, monkeypatch):
    from mucs.checks import available_host_memory, check_request_memory, parse_bytes, request_memory
    from mucs.settings import Settings
    a = default_attributor
    small = request_memory(a.model, len(a.data), Settings())
    big = request_memory(a.model, len(a.data), Settings(noises=100_000))
    assert big["host"]["noise set"] == small["host"]["noise set"] * 100_000 // Settings().noises >= 100_000 * 16 * 16 * 4
    assert big["host"]["loss matrices"] >= len(a.data) * 100_000 * 4 * 2
    assert small["host_total"] < 2**30 < big["host_total"]
    assert available_host_memory() > 0 and parse_bytes("8G") == 8 * 2**30 and parse_bytes("512M") == 2**29
    check_request_memory(a.model, len(a.data), Settings())   # the defaults fit on any machine that runs the tests
    # micro-batching (unlearn_chunk) counts one chunk's activations: a huge B fits again, and the refusal says so
    huge = request_memory(a.model, len(a.data), Settings(batch_size=200_000))
    chunked = request_memory(a.model, len(a.data), Settings(batch_size=200_000, unlearn_chunk=64))
    assert huge["host"]["unlearning batch"] > 4 * chunked["host"]["unlearning batch"]
    with pytest.raises(MucsError, match="micro-batch it with unlearn_chunk, now 0"):
        a.check_memory(Settings(batch_size=10**8))
    # a request far beyond any machine: refused on the real figures, with both numbers in one line
    with pytest.raises(MucsError, match=r"needs ~[\d.]+ [KMGT]iB of memory .*this machine has [\d.]+ [KMGT]iB available"):
        a.check_memory(Settings(noises=10**9))
    # the operator's override of the measured memory, and the estimate against it
    monkeypatch.setenv("MUCS_AVAILABLE_MEMORY", "64M")
    assert available_host_memory() == 64 * 2**20
    with pytest.raises(MucsError, match=r"this machine has 64\.0 MiB available: lower noises K \(now 100000\)"):
        a.check_memory(Settings(noises=100_000))
    with pytest.raises(MucsError, match="batch size"):
        a.check_memory(Settings(batch_size=100_000))
    monkeypatch.setenv("MUCS_AVAILABLE_MEMORY", "lots")
    with pytest.raises(MucsError, match="MUCS_AVAILABLE_MEMORY must be a size"):
        available_host_memory()


def test_attribution_that_does_not_fit_is_refused_before_any_work(default_attributor, monkeypatch):
    from mucs.sources.data import QueryImage, to_model_range
    from mucs.settings import Settings
    a = default_attributor
    monkeypatch.setenv("MUCS_AVAILABLE_MEMORY", "64M")
    events = []
    q = QueryImage(x=to_model_range(a.data.images[0]), conversions=[])
    before = len(a._noise)
    with pytest.raises(MucsError, match="this attribution needs ~"):
        a.attribute(q, 0, Settings(noises=300_000), progress=events.append)
    with pytest.raises(MucsError, match="this attribution needs ~"):
        a.prepare(Settings(noises=300_000))
    assert events == [] and len(a._noise) == before       # nothing computed, nothing kept


def test_cli_attribute_that_does_not_fit_is_one_error_line(tmp_path, work, capsys, fast_env, monkeypatch):
    from mucs.checks import MEMORY_ENV
    monkeypatch.setenv(MEMORY_ENV, "64M")
    q = work.parent / "q.png"
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(q)
    _refused(["attribute", "--image", str(q), "--label", "1", "--noises", "300000", "--out", str(work / "run")],
             work, capsys, "needs ~")


def test_noise_set_memo_is_bounded_and_drops_a_failed_requests_sets(default_attributor):
    import threading as th

    from mucs.method.attribute import MEMO_ENTRIES
    from mucs.cache import BoundedMemo
    from mucs.sources.data import QueryImage, to_model_range
    from mucs.errors import Cancelled
    from mucs.settings import Settings
    a = default_attributor
    for seed in range(3 * MEMO_ENTRIES):
        ns = a.noise_set(Settings(noises=8, seed=seed))
        assert a.noise_set(Settings(noises=8, seed=seed)) is ns        # reused while in the memo
    assert len(a._noise) == MEMO_ENTRIES
    # a failed (here: cancelled) request leaves none of the noise sets it made
    cancel = th.Event()
    cancel.set()
    q = QueryImage(x=to_model_range(a.data.images[0]), conversions=[])
    kept = len(a._noise)
    with pytest.raises(Cancelled):
        a.attribute(q, 0, Settings(noises=12, seed=77, consistent_noise=False, null_batches=2), cancel=cancel)
    assert (12, 0.7, 7.0, 77, 0.002, 80.0) not in a._noise and len(a._noise) <= kept
    # the byte budget: the newest entry is always kept, older ones go first
    m = BoundedMemo(max_entries=10, max_bytes=1000)
    m["a"], m["b"] = np.zeros(100, np.float32), np.zeros(100, np.float32)     # 400 bytes each
    m["c"] = np.zeros(100, np.float32)
    assert "a" not in m and "b" in m and m.total_bytes() == 800
    m["huge"] = np.zeros(10_000, np.float32)
    assert list(m._items) == ["huge"]
    with pytest.raises(RuntimeError):
        with m.request():
            m["x"] = np.zeros(1, np.float32)
            raise RuntimeError("failed")
    assert "x" not in m
    with m.request():
        m["y"] = np.zeros(1, np.float32)
    assert "y" in m


def test_noise_grid_of_a_tiny_fraction_allocates_only_what_is_kept():
    """f = 1e-9 once asked numpy for a grid of K/f points (tens of GiB); only the K kept are made."""
    import torch

    from mucs.method.noise import karras_sigmas, make_noise_set
    for n, k in ((10, 4), (143, 100), (7, 7), (2, 1)):
        full = np.linspace(0, 1, n)
        ref = (80.0 ** (1 / 7) + full * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
        assert np.array_equal(karras_sigmas(n, 0.002, 80.0, 7.0, first=k), ref[:k])
    ac = torch.linspace(0.9999, 0.0001, 1000)
    ns = make_noise_set(ac, (1, 4, 4), K=4, fraction=1e-9)
    assert len(ns) == 4 and ns.eps.shape == (4, 1, 4, 4)


def test_pickle_only_weights_are_never_loaded(tmp_path, monkeypatch):
    """A folder with only pickle weights (.bin), or a stray .safetensors next to them, is refused
    with a clear error and torch.load never runs (use_safetensors=True: no fallback to pickle)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from mucs.sources.models import load_model
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    folder = tmp_path / "m"
    unet.save_pretrained(str(folder / "unet"), safe_serialization=False)
    DDPMScheduler(num_train_timesteps=50).save_pretrained(str(folder / "scheduler"))
    assert os.path.exists(folder / "unet" / "diffusion_pytorch_model.bin")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or pytest.fail("torch.load called"))
    with pytest.raises(MucsError, match="no safetensors weights .*pickled weights can run code"):
        load_model(str(folder), "cpu")
    (folder / "unet" / "notes.safetensors").write_bytes(b"not the weights")
    with pytest.raises(MucsError, match="cannot load the model"):
        load_model(str(folder), "cpu")
    assert loads == []


# --- issue 21, points 2 and 8: damaged runs are one error line in `mucs report` ------------------------------
def test_report_of_a_damaged_run_is_one_error_line(tiny_npz, tmp_path, capsys):
    from conftest import damaged_runs

    from mucs.explorer.history import write_run
    from mucs.method.attribute import Attribution
    z = np.load(tiny_npz)
    n = len(z["labels"])
    rng = np.random.default_rng(0)
    scores = rng.normal(size=n)
    att = Attribution(scores=scores, top=np.argsort(-scores)[:3], loss_original=rng.random(n) + 0.1,
                      loss_unlearned=rng.random(n) + 0.1, loss_null=1.0, steps=2, converged=True, curve=[],
                      stage_times=dict(total=1.0), settings={}, query=dict(label=1, conversions=[], source="t"),
                      query_image=z["images"][0][..., None], labels=z["labels"], info=dict(data=tiny_npz))
    good = write_run(att, str(tmp_path / "good"))
    broken = damaged_runs(good, tmp_path / "runs")
    out = tmp_path / "r.html"
    for name, phrase in broken.items():
        rc = main(["report", str(tmp_path / "runs" / name), "--out", str(out)])
        err = capsys.readouterr().err
        if name.startswith("meta-"):                  # the metadata is optional: left out, and said
            assert rc == 0 and phrase in err and "leaves the run's metadata out" in err, (name, err)
        elif name != "query-wrong-size":              # (the report needs no model: that query is shown as it is)
            assert rc == 2 and phrase in err and err.count("error:") == 1 and "Traceback" not in err, (name, err)
    assert main(["report", good, "--out", str(out)]) == 0 and out.read_text().startswith("<!doctype html>")


# --- issue 21, points 4, 8, 9, 11: no hang, no traceback, nothing computed before a refusal -----
def _main_unblocked(argv, fifos=(), limit=60):
    """main(argv) in a thread; when it still runs after `limit` s, the FIFOs it may wait on are opened
    for writing (so a hang fails the test instead of blocking it). Returns main's status."""
    out = {}
    t = threading.Thread(target=lambda: out.update(rc=main(argv)), daemon=True)
    t.start()
    t.join(limit)
    hung = t.is_alive()
    for f in fifos if hung else ():
        try:
            os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    t.join(10)
    assert not hung, f"{argv} blocked (on a FIFO?)"
    return out.get("rc")


def _one_error(capsys, expect):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in err, err
    return lines[0]


def test_devices_and_fifos_as_data_or_decoded_cache_are_refused_without_hanging(tiny_model_dir, tmp_path, work,
                                                                                capsys, fast_env):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    imgs = tmp_path / "imgs"
    for n, c in enumerate("abcd"):                # the tiny model's 4 classes
        (imgs / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i + 50 * n, np.uint8)).save(imgs / c / f"{i}.png")
    os.mkfifo(imgs / "b" / "2.png")
    fifos = [fifo, imgs / "b" / "2.png"]
    for data, expect in (("/dev/zero", "neither a file nor a folder"), (str(fifo), "neither a file nor a folder"),
                         (str(imgs), "2.png is not a regular file")):
        before = _snapshot(work)
        assert _main_unblocked(["train", "--data", data, "--out", str(work / "m"), "--steps", "1"], fifos) == 2
        _one_error(capsys, expect)
        assert _snapshot(work) == before
    os.remove(imgs / "b" / "2.png")
    listing = ["attribute", "--list-classes", "--model", tiny_model_dir, "--data", str(imgs)]
    assert _main_unblocked(listing) == 0, capsys.readouterr().err
    (cache,) = (tmp_path / "cache" / "decoded").glob("*.npy")
    cache.write_bytes(b"")                       # a zero-length decoded cache is rebuilt, not a traceback
    assert _main_unblocked(listing) == 0, capsys.readouterr().err
    assert cache.stat().st_size > 0 and cache.stat().st_mode & 0o777 == 0o644    # point 13: shared like the others
    cache.unlink()
    os.mkfifo(cache)                             # a FIFO there is refused, not waited on
    assert _main_unblocked(listing, [cache]) == 2
    _one_error(capsys, "is not a regular file")


EVALUATE_BAD = [(["--noises", "0"], "noises must be ≥ 1"), (["--max-steps", "-1"], "max_steps must be in"),
                (["--lr-factor", "0"], "lr_factor must be in"), (["--device", "meta"], "--device must be cpu"),
                (["--work", "{file}"], "is not a folder"), (["--train-steps", "0"], "steps must be")]


@pytest.mark.parametrize("extra,expect", EVALUATE_BAD, ids=[" ".join(e) for e, _ in EVALUATE_BAD])
def test_evaluate_checks_every_option_before_training_or_making_its_work_folder(extra, expect, tmp_path, capsys,
                                                                               monkeypatch):
    """Issue 21, points 8 and 9: refused in one line before model A is trained; no work folder is left."""
    import mucs.evaluation.plan as plan
    monkeypatch.setattr(plan, "make_job", lambda *a, **k: pytest.fail("evaluate started work before refusing"))
    (tmp_path / "file").write_text("mine")
    work = tmp_path / "work"
    argv = ["evaluate", "--preset", "tiny", "--engine", "serial", "--work", str(work)]
    assert main(argv + [e.format(file=tmp_path / "file") for e in extra]) == 2
    _one_error(capsys, expect)
    assert not work.exists() and (tmp_path / "file").read_text() == "mine"


def test_a_nan_cache_with_a_valid_checksum_is_rebuilt(tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env):
    """Issue 21, point 11: not "try a smaller λ" on every run, but the cache recomputed."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from mucs.cache import load_arrays
    from mucs.cache.arrays import digest
    argv = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", _query(tmp_path, tiny_npz),
            "--label", "0", "--out", str(work / "run")] + FAST
    assert main(argv) == 0
    capsys.readouterr()
    (path,) = (tmp_path / "cache").glob("loss_original-*.safetensors")
    key = path.name[len("loss_original-"):-len(".safetensors")]
    good = load_arrays(str(path), key)["loss"]
    with safe_open(str(path), "numpy") as f:
        header = f.metadata()
    bad = {"loss": np.full_like(good, np.nan)}   # save_arrays refuses NaN: written by hand, with a valid checksum
    save_file(bad, str(path), metadata=dict(header, sha256=digest(bad, {})))
    assert main(argv) == 0, capsys.readouterr().err
    assert "holds NaN or inf: ignored, recomputing" in capsys.readouterr().err
    assert np.allclose(load_arrays(str(path), key)["loss"], good)


def test_an_error_line_starts_on_its_own_line_after_a_progress_bar(tiny_model_dir, tiny_npz, tmp_path, work, capsys,
                                                                   fast_env, monkeypatch):
    """Issue 21, point 11: `error:` is never glued to the end of a progress bar."""
    import mucs.method.attribute as attribute

    def failing(model, inputs, s, report=None):
        report("null loss", 0.3)
        raise MucsError("the null loss failed")
    monkeypatch.setattr(attribute, "null_loss", failing)
    assert main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", _query(tmp_path, tiny_npz),
                 "--label", "0", "--out", str(work / "run")] + FAST) == 2
    _one_error(capsys, "error: the null loss failed")


def test_class_names_and_captions_cannot_inject_formulas_into_scores_csv():
    """Issue 21, point 13: a class name or caption starting with = + - @ is written as text."""
    import csv
    import io

    from mucs.method.attribute import Attribution
    n = 4
    att = Attribution(scores=np.arange(n, dtype=float), top=np.arange(n)[::-1][:2], loss_original=np.ones(n),
                      loss_unlearned=np.ones(n), loss_null=1.0, steps=1, converged=True, curve=[],
                      stage_times=dict(total=1.0), settings={}, query=dict(label=0, conversions=[], source="t"),
                      labels=np.arange(n), captions=["=HYPERLINK(\"http://x\")", "plain", "@SUM(A1)", "-2+3"])
    rows = list(csv.DictReader(io.StringIO(att.scores_csv(["=cmd|' /C calc'!A0", "+1", "shirt", "\t=1"]))))
    by_label = {int(r["label"]): r for r in rows}
    assert [by_label[i]["class"] for i in range(n)] == ["'=cmd|' /C calc'!A0", "'+1", "shirt", "'\t=1"]
    assert [by_label[i]["caption"] for i in range(n)] == ["'=HYPERLINK(\"http://x\")", "plain", "'@SUM(A1)", "'-2+3"]


def test_the_app_refuses_settings_it_could_never_run_at_start(tiny_model_dir, tiny_npz, tmp_path, fast_env):
    """Issue 21, point 13: at start, not on every request."""
    from mucs.explorer.state import Explorer
    for overrides, expect in (({"frozen": ["."]}, "nothing is left to unlearn"),
                              ({"lr_factor": 1e6}, "the unlearning lr")):
        with pytest.raises(MucsError, match=expect):
            Explorer(tiny_model_dir, tiny_npz, overrides, runs_dir=str(tmp_path / "runs"), examples_dir=None)
    with pytest.raises(MucsError, match="above this app's limit of 5"):
        Explorer(tiny_model_dir, tiny_npz, {"max_steps": 6}, runs_dir=str(tmp_path / "runs"), examples_dir=None,
                 max_steps_limit=5)


def test_an_npz_that_decompresses_beyond_memory_is_refused_from_its_headers(tmp_path, work, capsys, monkeypatch):
    """Issue 21, point 7: sizes from the .npy headers, before anything is decompressed."""
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, images=np.zeros((64, 64, 64), np.uint8), labels=np.zeros(64, np.int64))
    assert bomb.stat().st_size < 10_000
    monkeypatch.setenv("MUCS_AVAILABLE_MEMORY", "100K")
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load ran before the size check"))
    _refused(["train", "--data", str(bomb), "--out", str(work / "m"), "--steps", "1"], work, capsys,
             "its arrays take 256.5 KiB once decompressed, more than the 100.0 KiB")
    np.savez_compressed(bomb, images=np.zeros((64, 8, 8), np.uint8), labels=np.zeros(10**5, np.int64))
    _refused(["train", "--data", str(bomb), "--out", str(work / "m"), "--steps", "1"], work, capsys,
             "labels must have shape (64,), got (100000,)")


def _moved_aside(folder):
    """The state a kill between a save's two renames leaves: `folder` missing, its old copy aside."""
    import tempfile
    old = tempfile.mkdtemp(dir=folder.parent, prefix=f".old-{folder.name}-")
    os.rename(folder, os.path.join(old, "x"))
    assert not folder.exists()


def test_readers_find_what_a_kill_between_the_two_renames_left_aside(tiny_model_dir, tmp_path, capsys):
    """Issue 21, point 10: not only the next writer, the readers recover it (generate --model, the run list)."""
    from mucs.explorer.history import RunStore
    from mucs.method.attribute import Attribution
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _moved_aside(model)
    assert main(["generate", "--model", str(model), "--label", "1", "--seed", "1", "--steps", "2",
                 "--out", str(tmp_path / "g.png")]) == 0, capsys.readouterr().err
    assert (model / "unet").is_dir() and not [n for n in os.listdir(tmp_path) if n.startswith(".old-")]
    n = 4
    att = Attribution(scores=np.arange(n, dtype=float), top=np.arange(2), loss_original=np.ones(n),
                      loss_unlearned=np.ones(n), loss_null=1.0, steps=1, converged=True, curve=[],
                      stage_times=dict(total=1.0), settings={}, query=dict(label=0, conversions=[], source="t"),
                      labels=np.arange(n))
    runs = tmp_path / "runs"
    store = RunStore(str(runs), examples=None)
    rid = store.save(att, dict(kind="test"))
    _moved_aside(runs / rid)
    assert RunStore(str(runs), examples=None).ids() == [rid]
