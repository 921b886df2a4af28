"""Undoing what an interrupted folder swap left behind: a folder moved aside to `.old-<name>-*/x` is
moved back, finished `.old-*` folders and stale `.tmp-*` staging folders are dropped."""
import hashlib
import json
import logging
import os
import re
import shutil

from ..errors import MucsError
from ..leftovers import OWNER_RE, abandoned
from .atomic import RAND, STALE_SECONDS
from .locks import swap_lock
from .ownership import KEEP

log = logging.getLogger("mucs")


def _tag(path: str) -> str:
    base = os.path.basename(os.path.abspath(path))
    if len(base) <= 80 and re.fullmatch(r"[\w.@+=,-]+", base):
        return base
    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def staging_prefix(path: str, which: str) -> str:
    """mkdtemp prefix for `path`'s staging folders: .tmp-<name>- (new content) / .old-<name>- (old)."""
    return f".{which}-{_tag(path)}-"


def leftovers(path: str, which: str) -> list:
    parent = os.path.dirname(os.path.abspath(path))
    pat = re.compile(re.escape(staging_prefix(path, which)) + RAND + "(?:" + OWNER_RE + ")?$")
    try:
        return [os.path.join(parent, n) for n in os.listdir(parent) if pat.match(n)]
    except OSError:
        return []


def recover_dir(path: str, stale_seconds: float = STALE_SECONDS) -> None:
    """Undo what an interrupted swap of `path` left: when `path` is missing and a moved-aside
    `.old-<name>-*/x` exists, move it back; drop `.old-<name>-*` folders once `path` is in place,
    and `.tmp-<name>-*` staging folders older than `stale_seconds` (a live writer's are younger)."""
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return
    olds, tmps = leftovers(path, "old"), leftovers(path, "tmp")
    if not olds and not tmps:
        return
    with swap_lock(path):
        recover_locked(path, stale_seconds)


def recover_for_reading(path: str) -> None:
    """What a reader does first: a folder that an interrupted swap left moved aside (`path` missing,
    its old copy in .old-<name>-*/x) is moved back, as the next writer would, and leftovers of a writer
    that is gone are removed (mucs.leftovers). Never raises: a folder this process cannot write is left
    for a writer."""
    olds = leftovers(path, "old")
    if os.path.lexists(path):
        if not any(abandoned(p) for p in olds + leftovers(path, "tmp")):
            return   # in place, and no leftover of a writer that is gone
    elif not olds:
        return
    try:
        recover_dir(path)
    except (OSError, MucsError) as e:
        log.info("could not recover %s from an interrupted replacement: %s", path, e)


def recover_moved_aside(folder: str) -> None:
    """recover_for_reading for every entry of `folder` that an interrupted swap left moved aside or staged."""
    pat = re.compile(r"\.(?:old|tmp)-(.+)-" + RAND + "(?:" + OWNER_RE + ")?$")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for n in names:
        m = pat.match(n)
        if m:
            recover_for_reading(os.path.join(folder, m.group(1)))


def recover_locked(path: str, stale_seconds: float) -> None:
    olds = sorted(leftovers(path, "old"), key=lambda p: _mtime(p), reverse=True)
    for old in olds:
        inner = os.path.join(old, "x")
        if not os.path.lexists(path) and os.path.lexists(inner):
            os.rename(inner, path)
            log.warning("recovered %s from an interrupted replacement (%s)", path, old)
        elif os.path.lexists(inner) and not carry_kept(old, path):
            continue   # a kept file could not be moved back: leave the folder for the next try
        shutil.rmtree(old, ignore_errors=True)
    for tmp in leftovers(path, "tmp"):
        if abandoned(tmp, stale_seconds):   # its writer is gone (or unknown, and it is old)
            shutil.rmtree(tmp, ignore_errors=True)


def carry_kept(old: str, path: str) -> bool:
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
