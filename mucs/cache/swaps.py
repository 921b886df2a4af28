"""Crash-safe folder swaps: a folder is built beside its place and renamed in, the older one moved
aside first and dropped after, so a folder is never half-written and never replaces one we did not write."""
import json
import os
import shutil
import tempfile
from typing import Optional

from ..errors import MucsError
from ..leftovers import owner_tag
from .atomic import STALE_SECONDS
from .locks import swap_lock
from .outputs import check_out_dir
from .ownership import KEEP, MARKER, kept_entries, write_marker, write_tree
from .recovery import carry_kept, recover_locked, staging_prefix


def staging_dir(path: str) -> str:
    """A new empty folder beside `path` to build its next content in (for move_dir_into_place)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=staging_prefix(path, "tmp"), suffix=owner_tag())
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
    with swap_lock(path):
        recover_locked(path, STALE_SECONDS)
        if os.path.lexists(path):
            kept = kept_entries(path, kind, force, "output folder", os.listdir(tmp)) if kind else []
            if not kind and (not os.path.isdir(path) or os.path.islink(path)):
                raise MucsError(f"refusing to replace {path}: it is not a folder")
            old = tempfile.mkdtemp(dir=parent, prefix=staging_prefix(path, "old"), suffix=owner_tag())
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
            if kept and not carry_kept(old, path):
                return    # leave `old` for recover_dir: it still holds a file we did not write
        else:
            os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
