"""Who left a staging folder or temporary file behind, and whether it may go. Every staging name this
project makes carries its writer (`owner_tag`: host, boot, process id and start time); a leftover
whose writer is provably gone (this host, and another boot or a process no longer running) is
removed at the next write or read that meets it, at once; one of an unknown writer (another host
sharing the folder, or a name from before the tag) only once it is older than STALE_SECONDS."""
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from typing import Optional

STALE_SECONDS = 3600.0    # a leftover of an unknown writer older than this is a crash's, not a writer's at work
OWNER_RE = r"~(?P<host>[0-9a-f]{8})(?P<boot>[0-9a-f]{8})p(?P<pid>\d+)s(?P<start>\d+)"
# staging folders in $TMPDIR: runs of earlier versions (`mucs-run-*`, never cleaned before) and the app's downloads
TEMP_PREFIXES = ("mucs-run-", "mucs-downloads-")


def _short(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return _short(socket.gethostname())


@functools.lru_cache(maxsize=1)
def _boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return _short(f.read().strip())
    except OSError:
        return "0" * 8   # no boot id here (not Linux): the process id and start time decide alone


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux), 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def owner_tag() -> str:
    """This process as a part of a file name: ~<host><boot>p<pid>s<start time>."""
    pid = os.getpid()
    return f"~{_host()}{_boot()}p{pid}s{_start_time(pid)}"


def writer_gone(name: str) -> Optional[bool]:
    """True when the writer tagged in `name` is provably gone (this host: another boot, or its process
    is not running), False when it is running, None when unknown (no tag, or another host's)."""
    m = re.search(OWNER_RE, name)
    if m is None or m["host"] != _host():
        return None
    if m["boot"] != _boot():
        return True
    pid, start = int(m["pid"]), int(m["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass   # running, under another user
    return bool(start) and _start_time(pid) not in (0, start)   # the id taken by a later process


def abandoned(path: str, stale_seconds: float = STALE_SECONDS) -> bool:
    """May the leftover `path` be removed: its writer is gone, or unknown and it is older than `stale_seconds`."""
    gone = writer_gone(os.path.basename(path))
    if gone is not None:
        return gone
    try:
        return time.time() - os.lstat(path).st_mtime > stale_seconds
    except OSError:
        return False


def remove(path: str) -> None:
    """Remove a leftover file or folder (never following a symbolic link); errors are left for the next try."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def clean_tempdir(folder: Optional[str] = None, stale_seconds: float = STALE_SECONDS) -> int:
    """Remove this project's abandoned staging folders in $TMPDIR (TEMP_PREFIXES). Returns how many."""
    folder = folder or tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIXES)]
    except OSError:
        return 0
    done = 0
    for n in names:
        p = os.path.join(folder, n)
        if os.path.isdir(p) and not os.path.islink(p) and abandoned(p, stale_seconds):
            remove(p)
            done += 1
    return done
