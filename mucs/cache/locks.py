"""The lock that serialises the writers of one folder's entries (folder swaps and the checks that
read a folder a swap may be replacing)."""
import contextlib
import logging
import os

log = logging.getLogger("mucs")

SWAP_LOCK_FILE = ".mucs-swap.lock"   # where flock is unavailable: the filelock package's lock file
UNLOCKED_WARNED: set = set()        # folders already warned about (once each per process)


@contextlib.contextmanager
def swap_lock(path: str):
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
    if parent not in UNLOCKED_WARNED:
        UNLOCKED_WARNED.add(parent)
        log.warning("cache folder %s: no file lock (%s): writers of this folder in other processes are not "
                    "serialised, so run one writer at a time", parent, why)
