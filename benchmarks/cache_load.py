"""Load time of a keyed cache entry: the shipped L_o of the embedded models (and a larger synthetic one)
in the cache format (safetensors, sha256 from the header checked on each read) against the earlier one
(.npz with the key and a sha256 inside, summed again on each read).

    nice -n 19 python3 benchmarks/cache_load.py [--repeat 50] [--big 50000x64]
"""
import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mucs.cache import load_arrays, save_arrays  # noqa: E402
from mucs.cache.arrays import _npz_checksum  # noqa: E402  (the earlier format, as the migration reads it)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def save_npz(path: str, key: str, **arrays) -> None:
    """The earlier format, as the earlier save_arrays wrote it."""
    np.savez(path, __key__=np.array(key), __checksum__=np.array(_npz_checksum(arrays)), **arrays)


def load_npz(path: str, key: str):
    """The earlier load_arrays (less its FIFO guard): np.load, then the checksum over every array."""
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
        if str(z["__key__"]) != key:
            return None
        arrays = {k: z[k] for k in z.files if not k.startswith("__")}
        return arrays if str(z["__checksum__"]) == _npz_checksum(arrays) else None


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls (the file is in the page cache after the first)."""
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        assert fn() is not None
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--big", default="50000x64", help="a synthetic L_o of N x K float32 as well ('' = none)")
    a = p.parse_args()
    cases = []
    for path in sorted(glob.glob(os.path.join(ROOT, "assets", "*", "cache", "loss_original-*.safetensors"))):
        key = os.path.basename(path)[len("loss_original-"):-len(".safetensors")]
        cases.append((os.path.relpath(path, ROOT), key, load_arrays(path, key)))
    if a.big:
        n, k = (int(v) for v in a.big.split("x"))
        cases.append((f"synthetic {n}x{k} float32", "big",
                      {"loss": np.random.default_rng(0).random((n, k), dtype=np.float32)}))
    with tempfile.TemporaryDirectory() as tmp:
        for name, key, arrays in cases:
            new, old = os.path.join(tmp, "x.safetensors"), os.path.join(tmp, "x.npz")
            save_arrays(new, key, **arrays)
            save_npz(old, key, **arrays)
            t_new = timed(lambda: load_arrays(new, key), a.repeat)
            t_old = timed(lambda: load_npz(old, key), a.repeat)
            mb = sum(v.nbytes for v in arrays.values()) / 1e6
            print(f"{name} ({mb:.2f} MB): npz+sha256 {t_old * 1e3:.2f} ms, safetensors+sha256 {t_new * 1e3:.2f} ms "
                  f"({t_old / t_new:.1f}x)")


if __name__ == "__main__":
    main()
