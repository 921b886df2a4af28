"""What happens where a dependency or a system feature is missing: each fallback is explicit (a lock from
another package, a warning with the reason, an error line naming what is missing), never silent."""
import errno
import logging
import sys

import filelock   # imported before any test hides fcntl: filelock picks its lock kind at import
import pytest

from mucs import Settings, cache
from mucs.cache import locks
from mucs.errors import MucsError


@pytest.fixture()
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(locks, "UNLOCKED_WARNED", set())


def test_swap_without_fcntl_is_locked_with_filelock(tmp_path, monkeypatch, fresh_warnings, caplog):
    """Where there is no fcntl (Windows) the folder swap holds filelock's lock on a lock file in the
    parent folder: another locker waits (here: times out) until the swap is done."""
    monkeypatch.setitem(sys.modules, "fcntl", None)            # `import fcntl` raises ImportError
    lock_file = str(tmp_path / cache.SWAP_LOCK_FILE)
    with caplog.at_level(logging.WARNING, logger="mucs"):
        with cache.swap_lock(str(tmp_path / "run")):
            with pytest.raises(filelock.Timeout):
                filelock.FileLock(lock_file, timeout=0).acquire()
        other = filelock.FileLock(lock_file, timeout=0)
        other.acquire()                                          # released after the swap
        other.release()
        cache.atomic_write_dir(str(tmp_path / "run"), {"a.txt": b"1"})
    assert (tmp_path / "run" / "a.txt").read_bytes() == b"1"
    assert "no file lock" not in caplog.text


def test_swap_without_any_lock_warns_once_with_the_reason(tmp_path, monkeypatch, fresh_warnings, caplog):
    """flock failing (some network file systems), or no fcntl and no filelock: the swap goes on
    unlocked, with one warning per folder that names the reason."""
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="mucs"):
        cache.atomic_write_dir(str(tmp_path / "run"), {"a.txt": b"1"})
        cache.atomic_write_dir(str(tmp_path / "run"), {"a.txt": b"2"})
    assert (tmp_path / "run" / "a.txt").read_bytes() == b"2"
    warned = [r.getMessage() for r in caplog.records if "no file lock" in r.getMessage()]
    assert len(warned) == 1 and "No locks available" in warned[0] and str(tmp_path) in warned[0]
    caplog.clear()
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "filelock", None)
    with caplog.at_level(logging.WARNING, logger="mucs"):
        with cache.swap_lock(str(tmp_path / "other" / "x")):
            pass
    assert "filelock package is not installed" in caplog.text


def test_device_memory_check_skipped_with_a_warning(monkeypatch, caplog):
    """A CUDA device whose free memory cannot be read: the device part of the memory check is skipped,
    and a warning says so with the reason (before, the exception was swallowed)."""
    import torch

    from mucs.checks import available_device_memory

    def broken(device=None):
        raise RuntimeError("CUDA driver version is insufficient")
    monkeypatch.setattr(torch.cuda, "mem_get_info", broken)
    with caplog.at_level(logging.WARNING, logger="mucs"):
        assert available_device_memory(torch.device("cuda:0")) is None
    assert "memory check" in caplog.text and "CUDA driver version is insufficient" in caplog.text
    caplog.clear()
    assert available_device_memory(torch.device("cpu")) is None and not caplog.records   # not a CUDA device


def test_evaluate_without_its_dependencies_is_an_error_line(monkeypatch, capsys):
    """`mucs evaluate` whose module cannot be imported (a missing package) stays a command: it exits 2
    with one error line naming what is missing, instead of vanishing from the CLI."""
    from mucs.__main__ import main
    monkeypatch.setitem(sys.modules, "mucs.evaluation.cli", None)
    assert main(["evaluate", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "mucs.evaluation.cli" in err[0]
    assert "evaluate" in err[0] and "requirements" in err[0]


def test_settings_replace_applies_none_or_refuses_it():
    """None is a value, not "keep": it resets `lr` (the model's training lr ÷ lr_factor) and is an error
    for a field that cannot be None; a caller that means "keep" leaves the key out."""
    s = Settings().replace(lr=1e-3)
    assert s.lr == 1e-3 and s.replace(lr=None).lr is None
    assert s.replace(lam=0.5).lr == 1e-3                       # keys left out keep their value
    with pytest.raises(MucsError, match="lam cannot be None"):
        s.replace(lam=None)
