"""Issue 21, point 8: a disk filling during `mucs train` is one `error:` line with nothing half-written,
and hand-edited run folders (conftest.damaged_runs: wrong types, shapes, NaN, missing keys) give a clean
one-line error in every view of the app (/open_run, /why, /compare_methods, /export, /report,
/compare_runs, /overlap) and in `mucs report`, never a traceback or an "unexpected" error."""
import errno
import os

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr  # noqa: E402

import app  # noqa: E402
from mucs.__main__ import main  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402
from mucs.method.attribute import Attribution  # noqa: E402

FAST = dict(noises=8, batch_size=16, null_batches=2, null_batch_size=16, max_steps=4, top_k=5)


def _snapshot(root):
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = fh.read()
        out.update({os.path.relpath(os.path.join(dirpath, d), root) + "/": None for d in dirnames})
    return out


# --- a disk filling while `mucs train` writes the model ------------------------------------------------------
@pytest.mark.parametrize("where", ["final save", "periodic save over an earlier model"])
def test_a_disk_filling_during_train_is_one_error_line_and_nothing_half_written(where, tiny_npz, tmp_path, capsys,
                                                                                  monkeypatch):
    import safetensors.torch
    out = tmp_path / "w" / "model"
    out.parent.mkdir()
    (out.parent / "thesis.tex").write_text("precious")
    argv = ["train", "--data", tiny_npz, "--out", str(out), "--steps", "3", "--batch-size", "8",
            "--channels", "8,16", "--no-attention"]
    if where != "final save":
        assert main(argv) == 0 and (out / "unet").is_dir()      # an earlier model at --out: it must survive
        argv += ["--force", "--save-every", "2"]
    capsys.readouterr()
    before = _snapshot(out.parent)

    def full(tensors, filename, *a, **k):     # part of the weights reach the disk, then it is full
        with open(filename, "wb") as f:
            f.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device", filename)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err, err
    assert _snapshot(out.parent) == before                        # nothing half-written, no staging left behind


# --- hand-edited runs in every view ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def damaged(tmp_path_factory, tiny_model_dir, tiny_npz):
    """The app on the tiny model, a good run and its damaged copies (conftest.damaged_runs), built once."""
    from conftest import damaged_runs
    root = tmp_path_factory.mktemp("damaged")
    mp = pytest.MonkeyPatch()
    mp.setenv("MUCS_CACHE_DIR", str(root / "cache"))
    ex = Explorer(tiny_model_dir, tiny_npz, FAST, runs_dir=str(root / "runs"), examples_dir=None)
    n = len(ex.data)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=n)
    att = Attribution(scores=scores, top=np.argsort(-scores)[:5], loss_original=rng.random(n) + 0.1,
                      loss_unlearned=rng.random(n) + 0.1, loss_null=1.0, steps=3, converged=True,
                      curve=[dict(step=i, loss_f=0.2 * i, loss_r=0.3) for i in range(3)],
                      stage_times=dict(total=1.0), settings=ex.settings.to_dict(),
                      query=dict(label=1, class_name="b", conversions=[], source="t"), query_image=ex.data.images[0],
                      labels=ex.data.labels, info=dict(data_fingerprint=ex.data.fingerprint(), num_train=n))
    good = ex.store.save(att, dict(kind="test"))
    broken = damaged_runs(ex.store.path(good), ex.store.root)
    fns = {f.api_name: f for f in app.build(ex).fns.values()}
    yield dict(ex=ex, good=good, broken=broken, fns=fns)
    mp.undo()


VIEWS = {
    "open_run": lambda fns, rid, good: fns["open_run"].fn(rid),
    "why": lambda fns, rid, good: fns["why"].fn(rid, 0),
    "compare_methods": lambda fns, rid, good: fns["compare_methods"].fn(rid),
    "export csv": lambda fns, rid, good: fns["export"].fn(rid, "csv"),
    "export json": lambda fns, rid, good: fns["export"].fn(rid, "json"),
    "report": lambda fns, rid, good: fns["report"].fn(rid),
    "compare_runs": lambda fns, rid, good: fns["compare_runs"].fn([good, rid]),
    "overlap": lambda fns, rid, good: fns["overlap"].fn([good, rid]),
}
# what a view may show of a run the checks let through (the report needs no model: its query is shown as is)
OPENS = {"query-wrong-size": ("export csv", "export json"), "meta-list": (), "meta-deep": (), "meta-kind-object": ()}


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_view_of_a_damaged_run_is_one_clean_error(view, damaged):
    fns, good, broken = damaged["fns"], damaged["good"], damaged["broken"]
    if view != "compare_methods":                          # (that one runs every method: tests/test_app.py has it)
        VIEWS[view](fns, good, good)                       # the good run works in this view
    wrong = []
    for name, phrase in broken.items():
        try:
            VIEWS[view](fns, name, good)
        except gr.Error as e:
            text = str(e.message)
            if "unexpected" in text.lower() or (phrase not in text and "made with another model" not in text):
                wrong.append((name, text[:200]))
            continue
        except Exception as e:   # noqa: BLE001 - anything but a clean message is the failure under test
            wrong.append((name, f"{type(e).__name__}: {e}"[:200]))
            continue
        if view not in OPENS.get(name, ()):
            wrong.append((name, "opened"))
    assert wrong == [], wrong


def test_mucs_report_of_every_damaged_run_is_one_error_line(damaged, tmp_path, capsys):
    ex, broken = damaged["ex"], damaged["broken"]
    for name, phrase in broken.items():
        rc = main(["report", os.path.join(ex.store.root, name), "--out", str(tmp_path / "r.html")])
        err = capsys.readouterr().err
        assert "Traceback" not in err and "unexpected" not in err, (name, err)
        if name.startswith("meta-"):                       # the metadata is optional: left out, and said
            assert rc == 0 and phrase in err, (name, err)
        elif name != "query-wrong-size":
            assert rc == 2 and err.count("error:") == 1 and phrase in err, (name, err)
