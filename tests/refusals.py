"""Shared by the reliability tests: the fast settings, a query file, and "refused with one line,
nothing changed"."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from mucs.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--noises", "4", "--max-steps", "2", "--batch-size", "16", "--top-k", "3"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def query_png(folder, tiny_npz):
    """The first training image as a PNG query in `folder`."""
    p = folder / "q.png"
    Image.fromarray(np.load(tiny_npz)["images"][0]).save(p)
    return str(p)


def snapshot(root):
    """Every file's bytes and every folder under `root`: what must not change."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
    return out


def refused(argv, root, capsys, expect):
    """main(argv) exits 2 with one `error:` line containing `expect`, and nothing under `root` changes."""
    before = snapshot(root)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("error:")]
    assert len(err) == 1 and expect in err[0], err
    assert snapshot(root) == before


def one_error(capsys, expect):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in err, err
    return lines[0]


def kill_when_ready(script: str, args, ready) -> None:
    """Run `script` (python -c, with `args`) until it creates the file `ready` (the point it was told
    to reach), then SIGKILL it: a crash at that exact point."""
    p = subprocess.Popen([sys.executable, "-c", script, *map(str, args)])
    try:
        t0 = time.time()
        while not ready.exists():
            assert p.poll() is None and time.time() - t0 < 120, "the writer never reached the point"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
