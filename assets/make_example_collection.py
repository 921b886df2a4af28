"""Compute the example collection shipped in assets/examples/ (shown read-only in the app's History
and Batch & collections, with every overlap analysis): a few classes × a few seeds generated and
attributed as one batch on the embedded default model, with the fast profile, the same way
`mucs attribute --seeds S --label C ... --fast` does.

    python assets/make_example_collection.py                 # 3 classes × 4 seeds -> assets/examples/
    python assets/make_example_collection.py --classes 0,5,9 --seeds 0-7
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from make_examples import strip_paths  # noqa: E402  (the same path stripping as the example runs)

from mucs.__main__ import main as mucs_main  # noqa: E402
from mucs.cache import move_dir_into_place  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL  # noqa: E402
from mucs.explorer import collection as coll  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="0,5,9", help="classes of the generated queries (default 0,5,9)")
    p.add_argument("--seeds", default="0-3", help="seeds per class (default 0-3)")
    p.add_argument("--sampler-steps", type=int, default=50)
    p.add_argument("--out", default=os.path.join(HERE, "examples"), help="the examples folder")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=a.out, prefix=".collection-")
    cid = "collection-" + coll.new_id()
    folder = os.path.join(tmp, cid)
    try:
        rc = mucs_main(["attribute", "--model", DEFAULT_MODEL, "--data", DEFAULT_DATA, "--fast",
                        "--seeds", a.seeds, "--label", *a.classes.split(","), "--sampler-steps", str(a.sampler_steps),
                        "--out", folder])
        if rc:
            return rc
        # paths of this machine are not worth shipping: names only, as in the example runs
        record = coll.load_record(folder)
        for k in ("model", "data"):
            if isinstance(record.get(k), str):
                record[k] = os.path.basename(record[k].rstrip("/"))
        record["id"] = cid
        coll.save_record(folder, record)
        for name in os.listdir(folder):
            if os.path.isdir(os.path.join(folder, name)):
                strip_paths(os.path.join(folder, name))
        move_dir_into_place(folder, os.path.join(a.out, cid))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(a.out, cid)) for f in fs)
    print(json.dumps(dict(collection=os.path.join(a.out, cid), kib=round(size / 1024))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
