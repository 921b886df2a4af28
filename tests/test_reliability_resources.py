"""Reliability: never hang or exhaust the machine: FIFOs and devices as inputs, broken caches, memory
estimates checked before any work, pickle-only weights, damaged runs in reports, NaN caches, error lines."""
import json
import logging
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from mucs.__main__ import main
from mucs.cache import (load_arrays,
                        save_arrays, save_arrays_best_effort)
from mucs.checks import dumps_strict, require_finite
from mucs.errors import MucsError
from refusals import FAST, one_error, query_png, refused, snapshot


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
    refused(["attribute", "--image", str(q), "--label", "1", "--noises", "300000", "--out", str(work / "run")],
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
        before = snapshot(work)
        assert _main_unblocked(["train", "--data", data, "--out", str(work / "m"), "--steps", "1"], fifos) == 2
        one_error(capsys, expect)
        assert snapshot(work) == before
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
    one_error(capsys, "is not a regular file")


def test_a_nan_cache_with_a_valid_checksum_is_rebuilt(tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env):
    """Issue 21, point 11: not "try a smaller λ" on every run, but the cache recomputed."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from mucs.cache import load_arrays
    from mucs.cache.arrays import digest
    argv = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", query_png(tmp_path, tiny_npz),
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
    assert main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", query_png(tmp_path, tiny_npz),
                 "--label", "0", "--out", str(work / "run")] + FAST) == 2
    one_error(capsys, "error: the null loss failed")
