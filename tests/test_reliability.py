"""Reliability: one `error:` line (exit 2, nothing written) for every family of bad input: options, model
files, data, settings, evaluate's options, formulas in names, oversized archives."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mucs.__main__ import main
from mucs.settings import check_settings_dict
from mucs.errors import MucsError
from refusals import FAST, one_error, query_png, refused, snapshot


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
    refused(["train", "--data", tiny_npz, "--out", str(work / "model")] + extra, work, capsys, expect)


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
    refused(argv, work, capsys, expect)


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
    q = query_png(tmp_path, tiny_npz)
    argv = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0",
            "--out", str(work / "run")] + FAST + [e.format(w=work, model=tiny_model_dir) for e in extra]
    before_model = snapshot(tiny_model_dir)
    refused(argv, work, capsys, expect)
    assert snapshot(tiny_model_dir) == before_model


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
    q = query_png(tmp_path, tiny_npz)
    refused(["attribute", "--model", str(model), "--data", tiny_npz, "--image", q, "--label", "0",
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
    refused(["train", "--data", str(bad), "--out", str(work / "model"), "--steps", "1"], work, capsys, expect)


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
    refused(["generate", "--model", model, "--label", "1", "--seed", "1", "--steps", "2", "--out", str(work / "g.png")],
             work, capsys, expect)
    refused(["attribute", "--model", model, "--data", tiny_npz, "--image", query_png(tmp_path, tiny_npz), "--label", "0",
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
    refused(["train", "--data", str(folder), "--out", str(work / "model"), "--steps", "1"], work, capsys,
             "1 pixel(s) are NaN or inf")
    refused(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", str(folder / "b" / "1.tif"),
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
    one_error(capsys, expect)
    assert not work.exists() and (tmp_path / "file").read_text() == "mine"


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
    refused(["train", "--data", str(bomb), "--out", str(work / "m"), "--steps", "1"], work, capsys,
             "its arrays take 256.5 KiB once decompressed, more than the 100.0 KiB")
    np.savez_compressed(bomb, images=np.zeros((64, 8, 8), np.uint8), labels=np.zeros(10**5, np.int64))
    refused(["train", "--data", str(bomb), "--out", str(work / "m"), "--steps", "1"], work, capsys,
             "labels must have shape (64,), got (100000,)")
