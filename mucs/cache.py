"""Atomic writes, crash-safe folder swaps that never replace a folder we did not write, and a
small keyed on-disk cache of arrays (.npz with a checksum inside)."""
import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from typing import Iterable, Optional

import numpy as np

from .errors import MucsError
from .leftovers import OWNER_RE, STALE_SECONDS, abandoned, owner_tag

log = logging.getLogger("mucs")

MARKER = ".mucs"          # {"mucs": kind, ...} in every folder we write: how we recognise our own
_RAND = r"[a-z0-9_]{8}"   # tempfile's random part


def default_cache_dir() -> str:
    return os.environ.get("MUCS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mucs")


# --- single files ----------------------------------------------------------------------------------
def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp{owner_tag()}-", suffix=os.path.basename(path))
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
    _drop_stale_file_temps(folder, os.path.basename(path))


def _drop_stale_file_temps(folder: str, base: str) -> None:
    """Remove `.tmp[~owner]-XXXXXXXX<base>` files that a killed atomic_write left behind (mucs.leftovers)."""
    pat = re.compile(r"\.tmp(?:" + OWNER_RE + ")?-" + _RAND + re.escape(base) + "$")
    try:
        names = [n for n in os.listdir(folder) if pat.match(n)]
    except OSError:
        return
    for n in names:
        p = os.path.join(folder, n)
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and abandoned(p):
                os.unlink(p)


# --- which folders are ours ------------------------------------------------------------------------
# What each kind of folder holds when this project writes it: the manifest of a marker written before
# markers listed their files (or of a run/model from before the marker existed).
KIND_FILES = {"run": ("result.json", "scores.csv", "losses.npz", "query.png", "meta.json"),
              "model": ("unet", "scheduler", "model_index.json", "mucs_train.json")}
KEEP = "keep.json"        # in an .old-<name>-* folder: the entries of the old folder to carry into the new one


def marker_bytes(kind: str, files: Iterable[str] = ()) -> bytes:
    """The `.mucs` marker: the folder's kind and the manifest of the entries this project wrote in it."""
    names = sorted(set(files) - {MARKER})
    return json.dumps({"mucs": kind, "version": 2, "files": names}, allow_nan=False).encode()


def write_marker(folder: str, kind: str) -> None:
    """Record in `folder` that it is a `kind` folder whose present entries were all written by us."""
    with open(os.path.join(folder, MARKER), "wb") as f:
        f.write(marker_bytes(kind, os.listdir(folder)))


def write_tree(folder: str, files: dict, kind: Optional[str] = None) -> None:
    """Write {name: bytes} into the new folder `folder` (plus the marker of `kind`)."""
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    if kind:
        write_marker(folder, kind)


def _read_marker(path: str) -> Optional[dict]:
    try:
        with open(os.path.join(path, MARKER)) as f:
            m = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("mucs"), str) and m["mucs"] else None


def folder_kind(path: str) -> Optional[str]:
    """What `path` holds: 'run' or 'model' (or another kind named by its marker) when it is a folder
    written by this project, 'empty' for an empty folder, None for anything else (a file, a folder
    of other files, a missing path). Runs and models written before the marker existed count too:
    a run has result.json, scores.csv and losses.npz, a model mucs_train.json and unet/."""
    if os.path.islink(path) or not os.path.isdir(path):
        return None
    try:
        names = set(os.listdir(path))
    except OSError:
        return None
    if not names:
        return "empty"
    if MARKER in names:
        m = _read_marker(path)
        if m is not None:
            return m["mucs"]
    isfile = lambda n: os.path.isfile(os.path.join(path, n))   # noqa: E731
    if all(isfile(n) for n in ("result.json", "scores.csv", "losses.npz")):
        return "run"
    if isfile("mucs_train.json") and os.path.isdir(os.path.join(path, "unet")):
        return "model"
    return None


def written_by_us(path: str, kind: str) -> set:
    """The entries of the `kind` folder `path` that this project wrote: its marker's manifest (the
    kind's usual files for a folder from before manifests), and the marker itself."""
    m = _read_marker(path) if os.path.lexists(os.path.join(path, MARKER)) else None
    files = m.get("files") if m is not None and m.get("mucs") == kind else None
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        files = KIND_FILES.get(kind, ())
    return set(files) | ({MARKER} if m is not None else set())


def _same_or_inside(a: str, b: str) -> bool:
    """True when path `a` is `b` or lies inside it (after resolving links)."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def check_not_an_input(path: str, what: str, protect: Iterable[Optional[str]] = (),
                       exact: Iterable[Optional[str]] = (), noun: str = "folder",
                       inside: Iterable[Optional[str]] = ()) -> None:
    """Refuse an output `path` that is one of the `protect` inputs, lies inside one, or holds one;
    that is or lies inside one of the `inside` folders (a cache folder); or that is one of the
    `exact` folders (a runs folder: a run may go inside it, not on it)."""
    protect, inside = list(protect), list(inside)
    for p in protect + inside:
        if not p or not os.path.exists(p):
            continue
        if p in protect and _same_or_inside(p, path):
            raise MucsError(f"{what} {path} would replace the input {p}: nothing was written; choose another {noun}")
        if _same_or_inside(path, p):
            raise MucsError(f"{what} {path} lies inside the input {p}: nothing was written; choose a {noun} "
                            "outside it")
    for p in exact:
        if p and os.path.realpath(p) == os.path.realpath(path):
            raise MucsError(f"{what} {path} is the runs folder {p}: nothing was written; choose a new folder "
                            "(a folder inside the runs folder is listed by the app)")


def check_out_dir(path: str, kind: str, force: bool = False, what: str = "--out",
                  protect: Iterable[Optional[str]] = (), exact: Iterable[Optional[str]] = (),
                  inside: Iterable[Optional[str]] = ()) -> None:
    """Refuse, before anything is computed, an output folder whose writing would lose data. `path`
    may be missing, empty or a folder this project wrote of the same `kind` ('run' or 'model'):
    the files we wrote there are replaced, any other file in it is kept. A folder we did not write
    is refused unless `force`, and then written into beside its files (all kept). Refused even with
    `force`: a file or a symbolic link at `path`, a folder of another MUCS kind, a file of ours to be
    written whose name a file we did not write takes, and a `path` that is, holds or lies inside one
    of the `protect` inputs (model, data, cache, query), is or lies inside one of the `inside` folders,
    or is one of the `exact` folders (check_not_an_input). Also
    recovers the leftovers of an interrupted swap and checks that the parent folder is writable."""
    path = os.fspath(path)
    if not path or not path.strip():
        raise MucsError(f"{what} must name a folder")
    check_not_an_input(path, what, protect, exact, inside=inside)
    recover_dir(path)
    # Read the folder under the swap lock: a concurrent writer's swap briefly leaves `path` missing
    # or half-listed, which would read as "not ours" and refuse a run that is ours.
    with _swap_lock(path):
        _kept_entries(path, kind, force, what, KIND_FILES.get(kind, ()))
    check_writable_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {what}")


def _kept_entries(path: str, kind: str, force: bool, what: str, names: Iterable[str]) -> list:
    """The entries of the existing folder `path` that were not written by us and are to be kept when
    a `kind` folder of `names` is written there; MucsError when writing there would lose data."""
    if not os.path.lexists(path):
        return []
    if os.path.islink(path):
        raise MucsError(f"{what} {path} is a symbolic link: nothing was written; give the folder it points to, "
                        "or a new folder")
    if not os.path.isdir(path):
        raise MucsError(f"{what} {path} is an existing file, not a folder: nothing was written")
    found = folder_kind(path)
    if found == "empty":
        return []
    try:
        entries = set(os.listdir(path))
    except OSError as e:
        raise MucsError(f"{what} {path} cannot be read: {e.strerror or e}") from e
    if found == kind:
        foreign = entries - written_by_us(path, kind)
    elif found is not None:
        raise MucsError(f"{what} {path} holds a MUCS {found}, not a {kind}: nothing was written; choose another "
                        "folder")
    else:
        foreign = entries
        if not force:
            names_ = sorted(entries)
            shown = ", ".join(names_[:3]) + (", ..." if len(names_) > 3 else "")
            count = f"{len(names_)} entr{'y' if len(names_) == 1 else 'ies'}"
            raise MucsError(f"{what} {path} exists and does not hold a MUCS {kind} ({count}: {shown}): nothing was "
                            f"written; choose a new folder, or pass --force to write the {kind} into it beside "
                            "these files (they are kept)")
    clash = sorted(foreign & (set(names) | {MARKER}))
    if clash:
        raise MucsError(f"{what} {path} holds {clash[0]}, which mucs did not write and the {kind} would replace: "
                        "nothing was written; move it away or choose another folder")
    return sorted(foreign)


def check_out_file(path: str, what: str = "--out", force: bool = False, ours=None,
                   protect: Iterable[Optional[str]] = ()) -> None:
    """Refuse an output file path that is a folder, lies under a file, is or lies inside one of the
    `protect` inputs, or would replace a file that `ours(path)` does not recognise as written by this
    project (unless `force`: the one file the user named is replaced)."""
    path = os.fspath(path)
    check_not_an_input(path, what, protect, noun="file")
    if os.path.lexists(path):
        if os.path.isdir(path):
            raise MucsError(f"{what} {path} is an existing folder, not a file: nothing was written")
        if not force and not os.path.isfile(path):
            raise MucsError(f"{what} {path} is not a regular file: nothing was written")
        if not force and not (ours is not None and ours(path)):
            raise MucsError(f"{what} {path} exists and was not written by mucs: nothing was written; "
                            "choose a new file or pass --force to replace it")
    check_writable_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {what}")


def check_writable_dir(path: str, what: str = "folder", min_free_bytes: int = 1 << 20) -> None:
    """Raise one clear MucsError, before anything is computed, when folder `path` cannot be created
    or written: a file in the way (at `path` or at a parent), no write permission, a read-only
    file system, a folder that takes no new files (/proc), or less than `min_free_bytes` free. Leaves
    nothing behind (a probe file is made and removed at once)."""
    path = os.path.abspath(os.fspath(path))
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        detail = "is not a folder" if probe == path else f"cannot be created: {probe} is not a folder"
        raise MucsError(f"{what} {path} {detail}")
    if not os.access(probe, os.W_OK | os.X_OK):
        reason = "is on a read-only file system" if _read_only_fs(probe) else "is not writable"
        where = path if probe == path else f"{path} cannot be created: {probe}"
        raise MucsError(f"{what} {where} {reason}")
    if _read_only_fs(probe):
        raise MucsError(f"{what} {path} is on a read-only file system")
    try:   # the one sure test: write a file (a pseudo file system such as /proc passes the checks above)
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".mucs-probe-")
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        where = path if probe == path else f"{path} cannot be created: {probe}"
        raise MucsError(f"{what} {where} does not take new files ({e.strerror or e})") from None
    try:
        st = os.statvfs(probe)
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    if st.f_blocks and free < min_free_bytes:
        raise MucsError(f"{what} {path}: its file system is full ({free} bytes free)")


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
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


# --- folder swaps -------------------------------------------------------------------------------
def _tag(path: str) -> str:
    base = os.path.basename(os.path.abspath(path))
    if len(base) <= 80 and re.fullmatch(r"[\w.@+=,-]+", base):
        return base
    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _staging(path: str, which: str) -> str:
    """mkdtemp prefix for `path`'s staging folders: .tmp-<name>- (new content) / .old-<name>- (old)."""
    return f".{which}-{_tag(path)}-"


def _leftovers(path: str, which: str) -> list:
    parent = os.path.dirname(os.path.abspath(path))
    pat = re.compile(re.escape(_staging(path, which)) + _RAND + "(?:" + OWNER_RE + ")?$")
    try:
        return [os.path.join(parent, n) for n in os.listdir(parent) if pat.match(n)]
    except OSError:
        return []


SWAP_LOCK_FILE = ".mucs-swap.lock"   # where flock is unavailable: the filelock package's lock file
_UNLOCKED_WARNED: set = set()       # folders already warned about (once each per process)


@contextlib.contextmanager
def _swap_lock(path: str):
    """An exclusive lock on the parent folder of `path`: flock on the directory itself (no lock file to
    leave behind; released by the kernel when a writer is killed); where there is no fcntl (Windows),
    the `filelock` package's lock on `SWAP_LOCK_FILE` in that folder; where neither can lock (some
    network file systems), unlocked, with a warning that concurrent writers are not serialised."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        import fcntl
    except ImportError:
        fcntl = None   # type: ignore[assignment]
    if fcntl is None:
        with _filelock(parent):
            yield
        return
    fd = None
    try:
        fd = os.open(parent, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        if fd is not None:
            os.close(fd)
        fd = None
        _warn_unlocked(parent, f"flock failed: {e}")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)   # closing releases the flock


@contextlib.contextmanager
def _filelock(parent: str):
    """The swap lock without fcntl: filelock's FileLock on a lock file in `parent`, else none (warned)."""
    try:
        import filelock
        lock = filelock.FileLock(os.path.join(parent, SWAP_LOCK_FILE))
        lock.acquire()
    except ImportError:
        lock = None
        _warn_unlocked(parent, "no flock here and the filelock package is not installed")
    except OSError as e:
        lock = None
        _warn_unlocked(parent, f"no flock here and filelock failed: {e}")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _warn_unlocked(parent: str, why: str) -> None:
    if parent not in _UNLOCKED_WARNED:
        _UNLOCKED_WARNED.add(parent)
        log.warning("cache folder %s: no file lock (%s): writers of this folder in other processes are not "
                    "serialised, so run one writer at a time", parent, why)


def recover_dir(path: str, stale_seconds: float = STALE_SECONDS) -> None:
    """Undo what an interrupted swap of `path` left: when `path` is missing and a moved-aside
    `.old-<name>-*/x` exists, move it back; drop `.old-<name>-*` folders once `path` is in place,
    and `.tmp-<name>-*` staging folders older than `stale_seconds` (a live writer's are younger)."""
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return
    olds, tmps = _leftovers(path, "old"), _leftovers(path, "tmp")
    if not olds and not tmps:
        return
    with _swap_lock(path):
        _recover_locked(path, stale_seconds)


def recover_for_reading(path: str) -> None:
    """What a reader does first: a folder that an interrupted swap left moved aside (`path` missing,
    its old copy in .old-<name>-*/x) is moved back, as the next writer would, and leftovers of a writer
    that is gone are removed (mucs.leftovers). Never raises: a folder this process cannot write is left
    for a writer."""
    olds = _leftovers(path, "old")
    if os.path.lexists(path):
        if not any(abandoned(p) for p in olds + _leftovers(path, "tmp")):
            return   # in place, and no leftover of a writer that is gone
    elif not olds:
        return
    try:
        recover_dir(path)
    except (OSError, MucsError) as e:
        log.info("could not recover %s from an interrupted replacement: %s", path, e)


def recover_moved_aside(folder: str) -> None:
    """recover_for_reading for every entry of `folder` that an interrupted swap left moved aside or staged."""
    pat = re.compile(r"\.(?:old|tmp)-(.+)-" + _RAND + "(?:" + OWNER_RE + ")?$")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for n in names:
        m = pat.match(n)
        if m:
            recover_for_reading(os.path.join(folder, m.group(1)))


def _recover_locked(path: str, stale_seconds: float) -> None:
    olds = sorted(_leftovers(path, "old"), key=lambda p: _mtime(p), reverse=True)
    for old in olds:
        inner = os.path.join(old, "x")
        if not os.path.lexists(path) and os.path.lexists(inner):
            os.rename(inner, path)
            log.warning("recovered %s from an interrupted replacement (%s)", path, old)
        elif os.path.lexists(inner) and not _carry_kept(old, path):
            continue   # a kept file could not be moved back: leave the folder for the next try
        shutil.rmtree(old, ignore_errors=True)
    for tmp in _leftovers(path, "tmp"):
        if abandoned(tmp, stale_seconds):   # its writer is gone (or unknown, and it is old)
            shutil.rmtree(tmp, ignore_errors=True)


def _carry_kept(old: str, path: str) -> bool:
    """Move the entries listed in `old`/keep.json (files we did not write) from the moved-aside folder
    `old`/x into `path`. False when one of them is still left there."""
    try:
        with open(os.path.join(old, KEEP)) as f:
            names = json.load(f)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    inner, done = os.path.join(old, "x"), True
    for n in names if isinstance(names, list) else ():
        src = os.path.join(inner, str(n))
        if not os.path.lexists(src):
            continue
        try:
            if os.path.lexists(os.path.join(path, str(n))):
                raise FileExistsError(n)
            os.rename(src, os.path.join(path, str(n)))
        except OSError as e:
            log.warning("could not move %s back into %s (%s): it is kept in %s", n, path, e, inner)
            done = False
    return done


def _mtime(p: str) -> float:
    try:
        return os.lstat(p).st_mtime
    except OSError:
        return 0.0


def staging_dir(path: str) -> str:
    """A new empty folder beside `path` to build its next content in (for move_dir_into_place)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=_staging(path, "tmp"), suffix=owner_tag())
    os.chmod(tmp, 0o755)
    return tmp


def atomic_write_dir(path: str, files: dict, kind: str = "run", force: bool = False) -> None:
    """Write a whole folder of {name: bytes} at once: build it beside `path`, then swap it in.
    The marker file records that the folder is ours (of `kind`) and which files we wrote; an existing
    `path` is checked as check_out_dir does (see move_dir_into_place)."""
    if kind:   # refuse early, before writing anything
        check_out_dir(path, kind, force=force, what="output folder")
    tmp = staging_dir(path)
    try:
        write_tree(tmp, {n: d for n, d in files.items() if n != MARKER}, kind)
        move_dir_into_place(tmp, path, kind=kind, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_dir_into_place(tmp: str, path: str, kind: Optional[str] = None, force: bool = False) -> None:
    """Rename the finished folder `tmp` to `path` (same file system). An older `path` is moved aside
    to `.old-<name>-*/x` and dropped afterwards, so `path` is never half-written; a kill between the
    two renames is undone by recover_dir (called here and by check_out_dir). Writers to the same
    `path` are serialised by a lock, so concurrent swaps neither fail nor leak `.old-*` folders.

    With `kind`, `tmp` gets the marker of that kind listing its entries, and only what we wrote in an
    existing `path` is replaced: entries we did not write (a user's notes in a run folder; with
    `force`, the files of a folder we did not make) are carried into the new folder (listed in the
    moved-aside folder's keep.json first, so a kill mid-way is recovered). What check_out_dir refuses,
    this refuses too. Without `kind` (the project's own folders only), `path` is replaced whole."""
    parent = os.path.dirname(os.path.abspath(path))
    old = None
    if kind:
        write_marker(tmp, kind)
    with _swap_lock(path):
        _recover_locked(path, STALE_SECONDS)
        if os.path.lexists(path):
            kept = _kept_entries(path, kind, force, "output folder", os.listdir(tmp)) if kind else []
            if not kind and (not os.path.isdir(path) or os.path.islink(path)):
                raise MucsError(f"refusing to replace {path}: it is not a folder")
            old = tempfile.mkdtemp(dir=parent, prefix=_staging(path, "old"), suffix=owner_tag())
            if kept:
                with open(os.path.join(old, KEEP), "w") as f:
                    json.dump(kept, f)
                    f.flush()
                    os.fsync(f.fileno())
            os.rename(path, os.path.join(old, "x"))
            try:
                os.rename(tmp, path)
            except BaseException:
                if not os.path.lexists(path):
                    os.rename(os.path.join(old, "x"), path)   # put the old one back
                raise
            if kept and not _carry_kept(old, path):
                return    # leave `old` for recover_dir: it still holds a file we did not write
        else:
            os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- keyed array cache ------------------------------------------------------------------------------
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


def save_arrays_best_effort(path: str, key: str, **arrays) -> bool:
    """save_arrays that never raises for a cache that cannot be written (read-only or full folder,
    a folder or FIFO at `path`): logs one warning and returns False, so a finished result is kept."""
    try:
        if os.path.lexists(path) and not os.path.isfile(path):
            check_cache_file(path)          # raises a clear MucsError for a FIFO, folder, ...
        save_arrays(path, key, **arrays)
        return True
    except (OSError, MucsError, ValueError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        log.warning("could not write the cache file %s (%s); the result is kept, only not cached", path, msg)
        return False


def load_arrays(path: str, key: str) -> Optional[dict]:
    """The arrays saved under `key`, or None when missing, keyed otherwise, partial or corrupt.
    Something other than a regular file at `path` (a FIFO would block forever) raises MucsError."""
    try:   # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then says what it is
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        check_cache_file(path)
        raise
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
            return None
        raise MucsError(f"cache path {path} cannot be read: {e.strerror or e}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            check_cache_file(path)
            raise MucsError(f"cache path {path} is not a regular file")
        f = os.fdopen(fd, "rb")    # f owns fd from here
    except BaseException:
        os.close(fd)
        raise
    try:
        with f, np.load(f, allow_pickle=False) as z:
            if str(z["__key__"]) != key:
                return None
            arrays = {k: z[k] for k in z.files if not k.startswith("__")}
            if str(z["__checksum__"]) != _checksum(arrays):
                return None
            return arrays
    except Exception:   # truncated zip, bad header, missing member ...: treat as a miss
        return None


def nbytes(value) -> int:
    """Bytes held by a numpy array, a torch tensor or an object whose fields are such (a NoiseSet)."""
    if hasattr(value, "nbytes") and not callable(value.nbytes):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.element_size() * value.numel())
    fields_ = getattr(value, "__dict__", None)
    return sum(nbytes(v) for v in fields_.values()) if isinstance(fields_, dict) else 0


class BoundedMemo:
    """A small in-memory LRU memo: at most `max_entries` entries and `max_bytes` bytes (the most
    recently used entry is always kept, however large, so that a request can reuse what it just made).

    `request()` is a context manager for one request: entries added inside it are dropped again when
    the request fails (an exception, cancellation included), so a failed oversized request leaves
    nothing behind."""

    def __init__(self, max_entries: int = 4, max_bytes: int = 1 << 30):
        import threading
        from collections import OrderedDict
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self._local = threading.local()    # the keys added by the request running in this thread

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __getitem__(self, key):
        with self._lock:
            value = self._items[key][0]
            self._items.move_to_end(key)
            return value

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._items[key] = (value, nbytes(value))
            self._items.move_to_end(key)
            added = getattr(self._local, "added", None)
            if added is not None:
                added.append(key)
            self._evict()

    def pop(self, key, default=None):
        with self._lock:
            item = self._items.pop(key, None)
        return default if item is None else item[0]

    def total_bytes(self) -> int:
        with self._lock:
            return sum(b for _, b in self._items.values())

    def _evict(self) -> None:
        while len(self._items) > 1 and (len(self._items) > self.max_entries or self.total_bytes() > self.max_bytes):
            self._items.popitem(last=False)

    @contextlib.contextmanager
    def request(self):
        outer = getattr(self._local, "added", None)
        mine: list = []
        self._local.added = mine
        try:
            yield self
        except BaseException:
            for key in mine:
                self.pop(key)
            raise
        finally:
            self._local.added = outer
            if outer is not None:
                outer.extend(mine)
