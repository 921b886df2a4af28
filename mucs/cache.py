"""Atomic writes and a small keyed on-disk cache of arrays (.npz with a checksum inside)."""
import hashlib
import io
import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np


def default_cache_dir() -> str:
    return os.environ.get("MUCS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mucs")


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.chmod(tmp, 0o644)   # mkstemp makes 0600 files; results and caches are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_dir(path: str, files: dict) -> None:
    """Write a whole folder of {name: bytes} at once: build it beside `path`, then rename it in."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    os.chmod(tmp, 0o755)
    try:
        for name, data in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        move_dir_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_dir_into_place(tmp: str, path: str) -> None:
    """Rename the finished folder `tmp` to `path` (same filesystem). An older `path` is first moved
    aside and dropped afterwards, so `path` is never missing nor half-written for long."""
    if os.path.isdir(path):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".old-")
        os.rename(path, os.path.join(old, "x"))
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


def cache_key(**parts) -> str:
    """A stable hex key from JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path: str, key: str, **arrays) -> None:
    """Save arrays with their key and checksum, atomically."""
    buf = io.BytesIO()
    np.savez(buf, __key__=np.array(key), __checksum__=np.array(_checksum(arrays)), **arrays)
    atomic_write(path, buf.getvalue())


def load_arrays(path: str, key: str) -> Optional[dict]:
    """The arrays saved under `key`, or None when missing, keyed otherwise, partial or corrupt."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["__key__"]) != key:
                return None
            arrays = {k: z[k] for k in z.files if not k.startswith("__")}
            if str(z["__checksum__"]) != _checksum(arrays):
                return None
            return arrays
    except Exception:   # truncated zip, bad header, missing member ...: treat as a miss
        return None
