"""Checks on an output path before anything is computed: refuse one whose writing would lose data
(a folder we did not write, an input, a file in the way) or that cannot be written at all."""
import os
import tempfile
from typing import Iterable, Optional

from ..errors import MucsError
from .locks import swap_lock
from .ownership import KIND_FILES, kept_entries
from .recovery import recover_dir


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
    with swap_lock(path):
        kept_entries(path, kind, force, what, KIND_FILES.get(kind, ()))
    check_writable_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {what}")


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
