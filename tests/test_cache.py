"""The original-loss cache: hit, miss on any key change, corrupt files rebuilt, atomic writes; the file format
(safetensors, key and checksum in the header, finite numbers only, earlier .npz entries migrated)."""
import os

import numpy as np
import pytest

from mucs import Attributor, load_dataset, load_model
from mucs.method import losses as losses_mod
from mucs.cache import atomic_write, cache_file, load_arrays, save_arrays
from mucs.errors import MucsError
from mucs.sources.data import TrainingSet


@pytest.fixture()
def counted(monkeypatch):
    """Count the calls of loss_matrix made by the Attributor."""
    calls = []
    real = losses_mod.loss_matrix

    def wrapped(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr("mucs.method.attribute.loss_matrix", wrapped)
    return calls


def test_cache_hit_miss_and_invalidation(tiny_model_dir, tiny_npz, fast_settings, tmp_path, counted):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    s = fast_settings
    lo, cached = Attributor(m, d, s, cache_dir=str(tmp_path)).original_losses(s)
    assert not cached and len(counted) == 1
    # a new Attributor (a new process, in effect) reads it back from disk
    lo2, cached = Attributor(m, d, s, cache_dir=str(tmp_path)).original_losses(s)
    assert cached and len(counted) == 1 and np.array_equal(lo, lo2)
    # any key change is a miss: noise-set parameters ...
    for change in (dict(noises=8), dict(seed=1), dict(noise_fraction=0.5)):
        _, cached = Attributor(m, d, s, cache_dir=str(tmp_path)).original_losses(s.replace(**change))
        assert not cached, change
    n = len(counted)
    # ... the dataset content ...
    d2 = TrainingSet(images=d.images.copy(), labels=d.labels.copy(), class_names=d.class_names)
    d2.images[0, 0, 0, 0] ^= 1
    _, cached = Attributor(m, d2, s, cache_dir=str(tmp_path)).original_losses(s)
    assert not cached and len(counted) == n + 1
    # ... and the model weights
    m2 = load_model(tiny_model_dir)
    with __import__("torch").no_grad():
        next(m2.unet.parameters()).add_(1e-3)
    _, cached = Attributor(m2, d, s, cache_dir=str(tmp_path)).original_losses(s)
    assert not cached and len(counted) == n + 2


def test_null_loss_is_cached(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    v1, c1 = Attributor(m, d, fast_settings, cache_dir=str(tmp_path)).null_loss(fast_settings)
    v2, c2 = Attributor(m, d, fast_settings, cache_dir=str(tmp_path)).null_loss(fast_settings)
    assert (c1, c2) == (False, True) and v1 == v2 and v1 > 0.5   # an untrained model is bad at denoising


def test_corrupt_or_partial_cache_is_rebuilt(tiny_model_dir, tiny_npz, fast_settings, tmp_path, counted):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    lo, _ = Attributor(m, d, fast_settings, cache_dir=str(tmp_path)).original_losses(fast_settings)
    (path,) = [p for p in os.listdir(tmp_path) if p.startswith("loss_original")]
    full = (tmp_path / path).read_bytes()
    for bad in (full[: len(full) // 2], b"garbage", b""):
        (tmp_path / path).write_bytes(bad)
        lo2, cached = Attributor(m, d, fast_settings, cache_dir=str(tmp_path)).original_losses(fast_settings)
        assert not cached and np.array_equal(lo, lo2)
    assert (tmp_path / path).read_bytes() != b""


def test_checksum_detects_changed_values(tmp_path):
    p = str(tmp_path / "a.safetensors")
    save_arrays(p, "k", loss=np.arange(6.0))
    assert load_arrays(p, "k")["loss"].tolist() == list(range(6))
    assert load_arrays(p, "other") is None
    raw = bytearray(open(p, "rb").read())
    i = raw.find(np.arange(6.0).tobytes())
    raw[i + 9] ^= 0xFF                                      # flip a byte inside the stored values
    open(p, "wb").write(bytes(raw))
    assert load_arrays(p, "k") is None


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = str(tmp_path / "f.bin")
    atomic_write(p, b"old")

    def boom(*a):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(p, b"new")
    assert open(p, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]                # no temporary left behind


def test_a_model_folder_can_ship_a_read_only_cache(tiny_model_dir, tiny_npz, fast_settings, tmp_path, counted):
    import shutil
    m_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, m_dir)
    m, d = load_model(str(m_dir)), load_dataset(tiny_npz)
    Attributor(m, d, fast_settings, cache_dir=str(m_dir / "cache")).original_losses(fast_settings)
    assert len(counted) == 1
    user_cache = tmp_path / "user"
    _, cached = Attributor(m, d, fast_settings, cache_dir=str(user_cache)).original_losses(fast_settings)
    assert cached and len(counted) == 1 and not user_cache.exists()   # read from the model, nothing written


def test_cache_keys_do_not_depend_on_where_the_model_lies(tiny_model_dir, tiny_npz, fast_settings, tmp_path, counted):
    import shutil
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    a = Attributor(m, d, fast_settings, cache_dir=str(tmp_path / "c"))
    a.original_losses(fast_settings)
    a.null_loss(fast_settings)
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(tiny_model_dir, moved)
    b = Attributor(load_model(str(moved)), d, fast_settings, cache_dir=str(tmp_path / "c"))
    assert b.original_losses(fast_settings)[1] and b.null_loss(fast_settings)[1]


def test_cache_file_format_header_and_values(tmp_path):
    """A safetensors file that the library itself reads back, the key, format, checksum and the caller's
    versions in its header; numbers of every dtype, 0-d arrays and strings come back as saved."""
    from safetensors import safe_open
    p = cache_file(str(tmp_path), "loss_original", "k1")
    assert p.endswith("loss_original-k1.safetensors")
    arrays = dict(loss=np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2], n=np.array(2.5), ok=np.array(True),
                  idx=np.arange(3), empty=np.zeros((0, 2)), record=np.array('{"steps": 3}'))
    save_arrays(p, "k1", dict(loss_version=7), **arrays)
    with safe_open(p, "numpy") as f:
        header = f.metadata()
        assert sorted(f.keys()) == ["empty", "idx", "loss", "n", "ok"]
    assert header["key"] == "k1" and header["loss_version"] == "7" and header["format"].startswith("mucs-cache/")
    assert len(header["sha256"]) == 64 and header["text:record"] == '{"steps": 3}'
    got = load_arrays(p, "k1")
    assert set(got) == set(arrays) and str(got["record"]) == '{"steps": 3}'
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k
    assert os.stat(p).st_mode & 0o777 == 0o644


def test_non_finite_numbers_are_never_saved(tmp_path):
    p = str(tmp_path / "x.safetensors")
    for bad in (np.array([1.0, np.nan]), np.array(np.inf, np.float32)):
        with pytest.raises(MucsError, match="NaN or inf"):
            save_arrays(p, "k", loss=bad)
    assert not os.path.exists(p) and os.listdir(tmp_path) == []
    with pytest.raises(MucsError, match="not supported"):
        save_arrays(p, "k", names=np.array(["a", "b"]))


def test_an_entry_of_the_earlier_npz_format_is_read_and_migrated(tmp_path, caplog):
    """A cache entry written by an earlier version (.npz with __key__ and __checksum__) is served when its key
    and checksum match, rewritten as .safetensors, and the .npz removed; another key's .npz is left alone."""
    import hashlib
    import logging

    def old_format(path, key, **arrays):     # the earlier save_arrays
        h = hashlib.sha256()
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
        np.savez(path, __key__=np.array(key), __checksum__=np.array(h.hexdigest()), **arrays)
    lo = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    old_format(str(tmp_path / "loss_original-k.npz"), "k", loss=lo)
    old_format(str(tmp_path / "loss_original-j.npz"), "other", loss=lo)
    old_format(str(tmp_path / "loss_original-bad.npz"), "bad", loss=lo)
    raw = bytearray((tmp_path / "loss_original-bad.npz").read_bytes())
    i = raw.find(lo.tobytes())
    raw[i + 3] ^= 0xFF
    (tmp_path / "loss_original-bad.npz").write_bytes(bytes(raw))
    with caplog.at_level(logging.INFO, logger="mucs"):
        got = load_arrays(cache_file(str(tmp_path), "loss_original", "k"), "k")
    assert np.array_equal(got["loss"], lo) and "migrated" in caplog.text
    assert not (tmp_path / "loss_original-k.npz").exists()
    assert np.array_equal(load_arrays(cache_file(str(tmp_path), "loss_original", "k"), "k")["loss"], lo)
    assert load_arrays(cache_file(str(tmp_path), "loss_original", "j"), "j") is None        # keyed otherwise
    assert load_arrays(cache_file(str(tmp_path), "loss_original", "bad"), "bad") is None    # checksum fails
    assert sorted(os.listdir(tmp_path)) == ["loss_original-bad.npz", "loss_original-j.npz",
                                            "loss_original-k.safetensors"]
