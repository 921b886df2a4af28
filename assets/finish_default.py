"""After training the embedded model: write its sample grid, its recommended MUCS settings and
the query-independent caches (original losses for the default noise set, null loss) next to it.

Usage: python assets/finish_default.py [--model assets/fashion16] [--noises K] [--batch-size B] ...
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs import Attributor, TextBar, load_dataset, load_model  # noqa: E402
from mucs.cache import atomic_write  # noqa: E402
from mucs.sources.data import save_png  # noqa: E402
from mucs.method.attribute import SHIPPED_CACHE  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL, RECOMMENDED, settings_for  # noqa: E402
from mucs.sources.generate import sample_grid  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--settings", default=None, help="JSON object of recommended overrides of the paper's defaults")
    ap.add_argument("--why", default="", help="one sentence saved with the settings")
    ap.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling of the sample grid")
    a = ap.parse_args()
    model, data = load_model(a.model), load_dataset(a.data)
    prompts = None
    if model.conditioning == "text":   # one row per class, each from a caption of that class
        names = data.class_names or []
        prompts = [f"a large grey {n.lower().split('/')[0]}" for n in names] or sorted(set(data.captions))[:10]
    grid = sample_grid(model, per_class=10, seed=0, steps=50, prompts=prompts)
    grid = grid.repeat(a.scale, 0).repeat(a.scale, 1)
    save_png(grid, os.path.join(a.model, "samples.png"))
    if a.settings is not None:
        body = {"settings": json.loads(a.settings), "why": a.why}
        atomic_write(os.path.join(a.model, RECOMMENDED), (json.dumps(body, indent=1) + "\n").encode())
    s = settings_for(a.model)
    bar = TextBar()
    Attributor(model, data, s, cache_dir=os.path.join(a.model, SHIPPED_CACHE)).prepare(s, progress=bar)
    bar.close()
    print(f"wrote {a.model}/samples.png, settings {s.to_dict()}, caches in {os.path.join(a.model, SHIPPED_CACHE)}")


if __name__ == "__main__":
    main()
