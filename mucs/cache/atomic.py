"""Single files written atomically: a temporary file in the same folder, fsync, then a rename, so a
reader sees the old file or the new one, never half of one."""
import contextlib
import os
import re
import stat
import tempfile
from typing import Callable

from ..leftovers import OWNER_RE, STALE_SECONDS, abandoned, owner_tag  # noqa: F401  (STALE_SECONDS: re-exported)
RAND = r"[a-z0-9_]{8}"    # tempfile's random part


def default_cache_dir() -> str:
    return os.environ.get("MUCS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mucs")


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to a temporary file in the same folder, fsync, then rename it over `path`."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write_with(path, write)


def atomic_write_with(path: str, write: Callable[[str], None]) -> None:
    """atomic_write where `write(tmp)` writes the content into the file at the temporary path `tmp`
    (a library's own writer: a large file is streamed to disk instead of being built in memory)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp{owner_tag()}-", suffix=os.path.basename(path))
    try:
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o644)   # mkstemp makes 0600 files (so may a writer); results and caches are meant to be shared
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _drop_stale_file_temps(folder, os.path.basename(path))


def _drop_stale_file_temps(folder: str, base: str) -> None:
    """Remove `.tmp-XXXXXXXX<base>` files that a killed atomic_write left behind (only old ones)."""
    pat = re.compile(r"\.tmp(?:" + OWNER_RE + ")?-" + RAND + re.escape(base) + "$")
    try:
        names = [n for n in os.listdir(folder) if pat.match(n)]
    except OSError:
        return
    for n in names:
        p = os.path.join(folder, n)
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and abandoned(p):   # its writer is gone (mucs.leftovers)
                os.unlink(p)
