"""Issue 21, point 10: leftovers of a writer that is gone (a killed `mucs` command or app) are removed at
the next write or read that meets them, at once, not after an hour; a leftover of an unknown writer
(no owner in its name: another host, an earlier version) still waits the hour (mucs.leftovers)."""
import os
import subprocess
import sys
import tempfile
import time

import pytest
from refusals import REPO, kill_when_ready

from mucs import leftovers
from mucs.cache import atomic_write, atomic_write_dir, recover_for_reading


# a writer stopped at a chosen point (then killed): after the first rename of a folder swap, before the
# removal of the moved-aside folder, or before the rename of an atomic file write
STOPPED_WRITER = r"""
import os, shutil, sys, time
sys.path.insert(0, sys.argv[1])
from mucs import cache
where, target, ready = sys.argv[2], sys.argv[3], sys.argv[4]
def stop():
    open(ready, "w").close()
    time.sleep(120)
if where == "swap":
    real = os.rename
    def rename(a, b):
        real(a, b)
        if os.path.basename(os.path.dirname(b)).startswith(".old-"):
            stop()
    os.rename = rename
elif where == "cleanup":
    real_rm = shutil.rmtree
    def rmtree(p, *a, **k):
        if os.path.basename(p).startswith(".old-"):
            stop()
        real_rm(p, *a, **k)
    shutil.rmtree = rmtree
else:
    os.replace = lambda a, b: stop()
if where == "file":
    cache.atomic_write(target, b"new")
else:
    cache.atomic_write_dir(target, {"result.json": b"new"})
"""


def _kill_at(where, target, tmp_path):
    ready = tmp_path / f"ready-{where}"
    kill_when_ready(STOPPED_WRITER, [REPO, where, str(target), str(ready)], ready)
    ready.unlink()


def _hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def test_a_killed_swaps_leftovers_go_at_the_next_read_not_after_an_hour(tmp_path):
    out = tmp_path / "run"
    atomic_write_dir(str(out), {"result.json": b"old"})
    _kill_at("swap", out, tmp_path)                       # killed between the two renames
    assert not out.exists() and len(_hidden(tmp_path)) == 2   # .old-run-* (the old copy) and .tmp-run-* (the new)
    recover_for_reading(str(out))                         # a reader: the old copy back, the dead writer's staging gone
    assert (out / "result.json").read_bytes() == b"old" and _hidden(tmp_path) == []
    _kill_at("cleanup", out, tmp_path)                    # killed after the swap, before removing the old copy
    assert (out / "result.json").read_bytes() == b"new" and [n[:9] for n in _hidden(tmp_path)] == [".old-run-"]
    recover_for_reading(str(out))                         # the new one stays; the moved-aside old one goes
    assert (out / "result.json").read_bytes() == b"new" and _hidden(tmp_path) == []


def test_a_killed_file_writes_temporary_file_goes_at_the_next_write(tmp_path):
    target = tmp_path / "cache.npz"
    _kill_at("file", target, tmp_path)
    (left,) = _hidden(tmp_path)
    assert left.startswith(".tmp~") and left.endswith("cache.npz")
    atomic_write(str(target), b"again")
    assert target.read_bytes() == b"again" and _hidden(tmp_path) == []


def _dead_owner() -> str:
    """The owner tag of a process that has ended."""
    return subprocess.run([sys.executable, "-c", "from mucs.leftovers import owner_tag; print(owner_tag())"],
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          check=True).stdout.strip()


def test_staging_of_dead_writers_in_tmpdir_and_the_runs_folder_is_removed(tmp_path, monkeypatch):
    from mucs.explorer.history import RunStore
    tmp, runs = tmp_path / "tmp", tmp_path / "runs"
    tmp.mkdir()
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    dead, me = _dead_owner(), leftovers.owner_tag()
    assert dead != me and leftovers.writer_gone("x" + dead) is True and leftovers.writer_gone("x" + me) is False
    hour_ago = time.time() - 2 * 3600
    made = {}
    for folder, name, age in ((tmp, "mucs-run-legacy1", hour_ago), (tmp, "mucs-run-legacy2", None),
                              (tmp, "mucs-downloads-abc" + dead, None), (tmp, "mucs-downloads-def" + me, None),
                              (tmp, "not-ours-run-x", hour_ago), (runs, ".staging-abc" + dead, None),
                              (runs, ".staging-def" + me, None), (runs, ".staging-old", hour_ago),
                              (runs, ".staging-young", None)):
        (folder / name).mkdir()
        (folder / name / "f").write_text("x")
        if age:
            os.utime(folder / name, (age, age))
        made[name] = folder / name
    RunStore(str(runs), examples=None)                    # the app's start (and every run written)
    gone = {n for n, p in made.items() if not p.exists()}
    assert gone == {"mucs-run-legacy1", "mucs-downloads-abc" + dead, ".staging-abc" + dead, ".staging-old"}


def test_a_running_writers_staging_is_kept(tmp_path):
    """The other side: a writer at work (this process, or another running one) keeps its staging folder
    however old it is, and an unknown writer's young one is kept too."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = leftovers._start_time(sleeper.pid)
        other = f"~{leftovers._host()}{leftovers._boot()}p{sleeper.pid}s{start}"
        out = tmp_path / "run"
        atomic_write_dir(str(out), {"result.json": b"1"})
        kept = [tmp_path / (".tmp-run-abcdefgh" + leftovers.owner_tag()), tmp_path / (".tmp-run-bcdefghi" + other),
                tmp_path / ".tmp-run-cdefghij"]
        for k in kept:
            k.mkdir()
            os.utime(k, (time.time() - 7200, time.time() - 7200) if k != kept[-1] else None)
        atomic_write_dir(str(out), {"result.json": b"2"})
        assert all(k.exists() for k in kept)
        assert leftovers.writer_gone("x" + other) is False
    finally:
        sleeper.kill()
        sleeper.wait()
    assert leftovers.writer_gone("x" + other) is True          # its process ended: provably gone


@pytest.mark.parametrize("name,expect", [("plain", None), ("x~0123456701234567p1s1", None)])
def test_unknown_writers_are_unknown(name, expect):
    """No tag, or another host's: not known to be gone (the hour decides)."""
    assert leftovers.writer_gone(name) is expect
