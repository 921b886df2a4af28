"""Reliability: never lose a user's file. Commands replace only what they wrote; --out never equal to,
inside or holding an input; --force writes beside foreign files; kills mid-write lose nothing."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mucs.__main__ import main
from mucs.cache import (MARKER, atomic_write_dir, check_out_dir, folder_kind, recover_dir)
from mucs.errors import MucsError
from refusals import FAST, REPO, kill_when_ready, query_png, refused, snapshot


# --- data loss ----------------------------------------------------------------------------------
def test_out_folder_of_user_files_survives_every_command(tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env):
    q = query_png(tmp_path, tiny_npz)
    imgs = tmp_path / "imgs"
    (imgs / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(imgs / "a" / "0.png")
    (work / "other.png").write_bytes(b"\x89PNG\r\n\x1a\nnot ours")
    (work / "results.json").write_text('{"mine": 1}')
    model_before = snapshot(tiny_model_dir)
    refused(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0",
              "--out", str(work)] + FAST, work, capsys, "does not hold a MUCS run")
    refused(["train", "--data", str(imgs), "--out", str(imgs), "--steps", "1"], imgs, capsys, "would replace the input")
    refused(["train", "--data", str(imgs), "--out", str(imgs), "--steps", "1", "--force"], imgs, capsys,
             "would replace the input")
    refused(["train", "--data", tiny_npz, "--out", str(work), "--steps", "1"], work, capsys, "does not hold a MUCS model")
    refused(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0",
              "--out", tiny_model_dir] + FAST, work, capsys, "would replace the input")
    refused(["generate", "--model", tiny_model_dir, "--label", "0", "--seed", "1", "--steps", "2",
              "--out", str(work / "other.png")], work, capsys, "not written by mucs")
    refused(["evaluate", "--out", str(work / "results.json"), "--cached-only", "--work", str(work / "ev")], work, capsys,
             "--force")
    assert (work / "thesis.tex").read_text() == "precious" and snapshot(tiny_model_dir) == model_before


def test_attribute_out_a_model_folder_is_refused_even_when_not_an_input(tiny_model_dir, tiny_npz, tmp_path, capsys,
                                                                       fast_env):
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    (other / MARKER).unlink(missing_ok=True)          # a model from before the marker: still a model
    assert folder_kind(str(other)) == "model"
    refused(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", query_png(tmp_path, tiny_npz),
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
    q = query_png(tmp_path, tiny_npz)
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
    q = query_png(tmp_path, tiny_npz)
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
    q = query_png(tmp_path, tiny_npz)
    cache = os.environ["MUCS_CACHE_DIR"]
    os.makedirs(cache, exist_ok=True)
    for force in ([], ["--force"]):
        refused(_attr(str(model), tiny_npz, q, model / "unet", *force), tmp_path, capsys, "lies inside the input")
        refused(_attr(str(model), tiny_npz, q, model, *force), tmp_path, capsys, "would replace the input")
        refused(_attr(str(model), str(imgs), q, imgs / "c0", *force), tmp_path, capsys, "lies inside the input")
        refused(_attr(str(model), tiny_npz, q, os.path.join(cache, "x"), *force), tmp_path, capsys,
                 "lies inside the input")
        refused(_attr(str(model), tiny_npz, q, runs, *force), tmp_path, capsys, "is the runs folder")
        refused(["train", "--data", str(imgs), "--out", str(imgs / "c0"), "--steps", "1", *force], tmp_path, capsys,
                 "lies inside the input")
        refused(["train", "--data", str(imgs), "--out", str(imgs), "--steps", "1", *force], tmp_path, capsys,
                 "would replace the input")
        refused(["generate", "--model", str(model), "--label", "0", "--seed", "1", "--steps", "2",
                  "--out", str(model / "x.png"), *force], tmp_path, capsys, "lies inside the input")


def test_force_writes_beside_a_foreign_folders_files_and_never_deletes_one(tiny_model_dir, tiny_npz, tmp_path,
                                                                           capsys, fast_env, monkeypatch):
    q = query_png(tmp_path, tiny_npz)
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    (photos / "2024" / "a.jpg").write_bytes(b"jpeg")
    (photos / "thesis.tex").write_text("precious")
    before = snapshot(photos)
    refused(_attr(tiny_model_dir, tiny_npz, q, photos), photos, capsys, "pass --force to write the run into it")
    assert main(_attr(tiny_model_dir, tiny_npz, q, photos, "--force")) == 0
    after = snapshot(photos)
    assert {k: v for k, v in after.items() if k in before} == before          # every file and folder kept
    assert folder_kind(str(photos)) == "run" and (photos / "scores.csv").exists()
    assert main(_attr(tiny_model_dir, tiny_npz, q, photos)) == 0               # ours now: rewritten, still kept
    assert {k: v for k, v in snapshot(photos).items() if k in before} == before
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
        refused(_attr(tiny_model_dir, tiny_npz, q, clash, *force), clash, capsys,
                 "pass --force" if not force else "holds scores.csv, which mucs did not write")
    # a folder of another MUCS kind, and a symbolic link: refused even with --force
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    link = tmp_path / "link"
    link.symlink_to(photos)
    for force in ([], ["--force"]):
        refused(_attr(tiny_model_dir, tiny_npz, q, model, *force), tmp_path, capsys, "holds a MUCS model, not a run")
        refused(_attr(tiny_model_dir, tiny_npz, q, link, *force), tmp_path, capsys, "is a symbolic link")


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
    kill_when_ready(script, [REPO, str(out), str(ready)], ready)
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
    kill_when_ready(KILL_IN_SWAP, [REPO, str(out), str(ready)], ready)
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
    before = snapshot(out)
    env = dict(os.environ, MUCS_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-m", "mucs", "attribute", "--model", tiny_model_dir, "--data", tiny_npz,
                          "--image", query_png(tmp_path, tiny_npz), "--label", "0", "--out", str(out), "--noises", "4",
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
    assert snapshot(out) == before
    recover_dir(str(out), stale_seconds=0)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []


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
