"""Compute the example runs shipped in assets/examples/ (shown read-only in the app's history):
a few generated queries of different classes and one training image, on the embedded default
model with its default settings.

    python assets/make_examples.py                       # the embedded model -> assets/examples/
    python assets/make_examples.py --model M --data D --out DIR --settings '{"max_steps": 40}'
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mucs.cache import move_dir_into_place  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL  # noqa: E402
from mucs.errors import MucsError  # noqa: E402
from mucs.explorer import Explorer  # noqa: E402
from mucs.progress import TextBar  # noqa: E402


def strip_paths(run_dir: str) -> None:
    """Model and data paths of this machine -> their folder/file names (meta.json and result.json)."""
    for fname in ("meta.json", "result.json"):
        path = os.path.join(run_dir, fname)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            m = json.load(f)
        for k in ("model", "data"):
            if isinstance(m.get(k), str):
                m[k] = os.path.basename(m[k].rstrip("/"))
        with open(path, "w") as f:
            json.dump(m, f, indent=1, allow_nan=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=os.path.join(HERE, "examples"))
    p.add_argument("--classes", default="0,1,7,9", help="classes of the generated queries (conditional models)")
    p.add_argument("--count", type=int, default=4, help="generated queries (unconditional models)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed of the first generated query")
    p.add_argument("--sampler-steps", type=int, default=50)
    p.add_argument("--train-index", type=int, default=0, help="training image used as one more query (-1: none)")
    p.add_argument("--settings", default=None, help="MUCS setting overrides as JSON (default: the model's defaults)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    data = a.data or (DEFAULT_DATA if os.path.abspath(a.model) == DEFAULT_MODEL else None)
    if data is None:
        p.error("--data is required with a model other than the embedded default")
    overrides = json.loads(a.settings) if a.settings else {}
    # build the new examples beside the old ones, then swap: the folder is never half-written
    parent = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".examples-")
    try:
        ex = Explorer(a.model, data, overrides, runs_dir=tmp, examples_dir=None)
        if ex.model.num_classes:
            queries = [ex.generate(int(c), a.seed + i, 1, a.sampler_steps)[0]
                       for i, c in enumerate(a.classes.split(","))]
        else:
            queries = ex.generate(None, a.seed, a.count, a.sampler_steps)
        if a.train_index >= 0:
            queries.append(ex.training_item(a.train_index))
        for q in queries:
            bar = None if a.quiet else TextBar()
            run_id, att = ex.attribute(q, progress=bar)
            if bar:
                bar.close()
            print(f"{run_id}: {ex.summary(att, run_id).splitlines()[0]} steps={att.steps} converged={att.converged}")
        # paths of this machine are not worth shipping
        for name in os.listdir(tmp):
            if name.startswith("."):
                continue
            strip_paths(os.path.join(tmp, name))
        move_dir_into_place(tmp, a.out)
    except MucsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(a.out) for f in fs)
    print(f"wrote {len(queries)} runs to {a.out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
