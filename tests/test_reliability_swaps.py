"""Reliability: folder swaps under concurrency, stale staging, unwritable and read-only places."""
import os
import threading
import time

import pytest

from mucs.cache import (MARKER, atomic_write_dir, check_out_dir, check_writable_dir, recover_dir)
from mucs.errors import MucsError
from refusals import FAST, IS_ROOT, query_png, refused


def test_concurrent_writers_neither_fail_nor_leak(tmp_path):
    out = str(tmp_path / "run")
    errors = []

    def writer(i):
        try:
            for j in range(15):
                atomic_write_dir(out, {"result.json": f"{i}-{j}".encode(), "scores.csv": b"x" * 1000})
        except Exception as e:   # noqa: BLE001 - any failure is the bug under test
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(os.listdir(tmp_path)) == ["run"]
    assert sorted(os.listdir(out)) == [MARKER, "result.json", "scores.csv"]


def test_out_check_waits_for_a_swap_in_progress(tmp_path):
    """CI caught it once: a check that read the folder between a concurrent writer's two renames saw
    the run half-gone and refused it as "not a MUCS run". The check now reads under the swap lock."""
    from mucs.cache import swap_lock
    out = str(tmp_path / "run")
    atomic_write_dir(out, {"result.json": b"1", "scores.csv": b"x"})
    done, errors = threading.Event(), []

    def check():
        try:
            check_out_dir(out, "run")
        except MucsError as e:
            errors.append(e)
        done.set()
    with swap_lock(out):   # a writer between its two renames: `out` is briefly missing
        os.rename(out, str(tmp_path / "aside"))
        t = threading.Thread(target=check)
        t.start()
        assert not done.wait(0.3), "the check read the folder while a swap was under way"
        os.rename(str(tmp_path / "aside"), out)
    t.join(10)
    assert done.is_set() and errors == []


def test_stale_staging_of_a_crash_is_removed_but_a_live_one_is_kept(tmp_path):
    out = tmp_path / "run"
    atomic_write_dir(str(out), {"result.json": b"1"})
    stale, live = tmp_path / ".tmp-run-aaaaaaaa", tmp_path / ".tmp-run-bbbbbbbb"
    foreign = tmp_path / ".tmp-mine"
    for d in (stale, live, foreign):
        d.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    os.utime(foreign, (time.time() - 7200, time.time() - 7200))
    recover_dir(str(out))
    assert not stale.exists() and live.exists() and foreign.exists()


# --- write failures and special files -------------------------------------------------------------
def test_unwritable_out_and_cache_fail_before_computing(tiny_model_dir, tiny_npz, tmp_path, work, capsys, fast_env,
                                                        monkeypatch):
    calls = []
    monkeypatch.setattr("mucs.sources.models.load_model", lambda *a, **k: calls.append(1))
    q = query_png(tmp_path, tiny_npz)
    base = ["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", q, "--label", "0"] + FAST
    refused(base + ["--out", str(work / "thesis.tex" / "run")], work, capsys, "not a folder")
    refused(base + ["--out", str(work / "run"), "--cache-dir", str(work / "thesis.tex")], work, capsys, "--cache-dir")
    assert calls == []          # refused before the model was even loaded


@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod does not stop root from writing (the file-in-the-way "
                                    "variant above covers the check)")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(MucsError, match="not writable"):
            check_writable_dir(str(ro / "out"), "--out")
        with pytest.raises(MucsError, match="not writable"):
            check_out_dir(str(ro / "out"), "run")
    finally:
        ro.chmod(0o755)


def _read_only_mount():
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 3 and "ro" in parts[3].split(",") and os.path.isdir(parts[1]):
                    return parts[1]
    except OSError:
        pass
    return None


@pytest.mark.skipif(_read_only_mount() is None, reason="no read-only mount on this machine")
def test_read_only_file_system_is_refused():
    with pytest.raises(MucsError, match="read-only|not writable"):
        check_writable_dir(os.path.join(_read_only_mount(), "mucs-out"), "--out")
