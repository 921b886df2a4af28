"""Keyed on-disk caches of arrays (L_o, L_null, L_u, an evaluation's generations and scores): one
safetensors file per entry, `<kind>-<key>.safetensors`, whose header holds the key, the format, the
writer's version and the sha256 of the content, recorded at write time and checked on every read
(one pass over bytes that the read brings in anyway). Every number saved is finite (a reader still
checks what it needs: a file may be edited). Entries in the
earlier format (`.npz` with the key and a checksum inside) are read once, checked, and migrated."""
import errno
import hashlib
import json
import logging
import os
import stat
from typing import Optional

import numpy as np

from ..errors import MucsError
from .atomic import atomic_write_with

log = logging.getLogger("mucs")

EXT = ".safetensors"
FORMAT = "mucs-cache/1"
_TEXT = "text:"           # header entry of a string value (safetensors holds numbers only)


def cache_key(**parts) -> str:
    """A stable hex key from JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_file(folder: str, kind: str, key: str) -> str:
    """Where the entry `kind` with `key` lies in `folder`."""
    return os.path.join(folder, f"{kind}-{key}{EXT}")


def digest(arrays: dict, texts: dict) -> str:
    """sha256 of the arrays (name, dtype, shape and bytes, by name) and the strings of one entry."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.require(arrays[name], requirements="C")     # (ascontiguousarray would make a 0-d array 1-d)
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    for name in sorted(texts):
        h.update(b"\0text\0" + name.encode() + b"\0" + texts[name].encode())
    return h.hexdigest()


def _split(arrays: dict) -> tuple:
    """({name: numeric array}, {name: str}) of the values to save; MucsError for a value that cannot
    be saved (an object array, an array of strings) or a float that is not finite."""
    nums, texts = {}, {}
    for name, v in arrays.items():
        a = np.asarray(v)
        if a.dtype.kind in "US" and a.ndim == 0:
            texts[name] = str(a)
        elif a.dtype.kind not in "biuf":
            raise MucsError(f"cannot cache {name}: arrays of {a.dtype} are not supported")
        elif a.dtype.kind == "f" and not np.isfinite(a).all():
            raise MucsError(f"refusing to cache {name}: it holds NaN or inf")
        else:
            nums[name] = np.require(a, requirements="C")
    return nums, texts


def save_arrays(path: str, key: str, meta: Optional[dict] = None, **arrays) -> None:
    """Save `arrays` (numbers, or 0-d strings) under `key`, atomically, streamed to disk by safetensors.
    `meta` ({name: str}) goes into the header beside the key (e.g. the loss definition's version)."""
    from safetensors.numpy import save_file
    nums, texts = _split(arrays)
    header = {str(k): str(v) for k, v in (meta or {}).items()}
    header.update({_TEXT + k: v for k, v in texts.items()})
    header.update(format=FORMAT, key=key, sha256=digest(nums, texts), mucs=_version())
    atomic_write_with(path, lambda tmp: save_file(nums, tmp, metadata=header))


def _version() -> str:
    from .. import __version__
    return __version__


def save_arrays_best_effort(path: str, key: str, meta: Optional[dict] = None, **arrays) -> bool:
    """save_arrays that never raises for a cache that cannot be written (read-only or full folder,
    a folder or FIFO at `path`): logs one warning and returns False, so a finished result is kept."""
    try:
        if os.path.lexists(path) and not os.path.isfile(path):
            check_cache_file(path)          # raises a clear MucsError for a FIFO, folder, ...
        save_arrays(path, key, meta, **arrays)
        return True
    except (OSError, MucsError, ValueError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        log.warning("could not write the cache file %s (%s); the result is kept, only not cached", path, msg)
        return False


def check_cache_file(path: str) -> None:
    """Raise MucsError when something that is not a regular file (a FIFO, a folder, a device)
    sits at a cache path: opening a FIFO would block forever."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise MucsError(f"cache path {path} cannot be read: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or special file")
        raise MucsError(f"cache path {path} is {kind}, not a regular file: remove it or use another --cache-dir")


def _regular_file(path: str) -> bool:
    """True for a readable regular file at `path`, False when there is none; MucsError for something
    else there (a FIFO would block a reader forever: it is opened without waiting, then looked at)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        check_cache_file(path)
        raise
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
            return False
        raise MucsError(f"cache path {path} cannot be read: {e.strerror or e}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            check_cache_file(path)
            raise MucsError(f"cache path {path} is not a regular file")
    finally:
        os.close(fd)
    return True


def load_arrays(path: str, key: str) -> Optional[dict]:
    """The arrays saved under `key` ({name: array}; a saved string comes back as a 0-d str array), or
    None when missing, keyed otherwise, partial or corrupt. Something other than a regular
    file at `path` raises MucsError. An entry of the earlier .npz format is migrated (see _legacy)."""
    if not _regular_file(path):
        return _legacy(path, key) if path.endswith(EXT) else None
    from safetensors import safe_open
    try:
        with safe_open(path, framework="numpy") as f:    # memory-mapped: only the tensors are read
            header = f.metadata() or {}
            if header.get("format") != FORMAT or header.get("key") != key:
                return None
            nums = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:   # truncated file, bad header ...: a miss
        log.info("cache file %s is unreadable (%s): ignored", path, e)
        return None
    texts = {k[len(_TEXT):]: v for k, v in header.items() if k.startswith(_TEXT)}
    if header.get("sha256") != digest(nums, texts):
        return None
    return {**nums, **{k: np.array(v) for k, v in texts.items()}}


def _legacy(path: str, key: str) -> Optional[dict]:
    """The entry at `path` in the earlier format (`.npz` beside it: __key__, __checksum__ and the
    arrays), when its key and checksum match; migrated: written as `path` and the .npz removed once
    the new file reads back (best effort: a read-only folder keeps the .npz, which is read again)."""
    old = path[:-len(EXT)] + ".npz"
    if not os.path.isfile(old):
        return None
    try:
        with np.load(old, allow_pickle=False) as z:
            if str(z["__key__"]) != key:
                return None
            arrays = {k: z[k] for k in z.files if not k.startswith("__")}
            if str(z["__checksum__"]) != _npz_checksum(arrays):
                return None
    except Exception:   # truncated zip, bad header, missing member ...: a miss
        return None
    try:
        save_arrays(path, key, **arrays)
        if load_arrays(path, key) is not None:
            os.unlink(old)
            log.info("cache file %s migrated to %s", old, path)
    except (OSError, MucsError) as e:
        log.info("cache file %s read in its earlier format; not migrated (%s)", old, e)
    return arrays


def _npz_checksum(arrays: dict) -> str:
    """The earlier format's checksum (sha256 over name, dtype, shape and bytes of each array)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()
