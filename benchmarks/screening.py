"""Screened scoring (beyond the paper): how many L_u forwards it saves and how often it finds the
same top-k as scoring every item on every noise level.

For each query the model is unlearned once and the full L_u matrix (N × K) computed; screening with
S levels and M kept items is then read off that matrix (the losses of an (item, level) pair do not
depend on which other pairs are computed), so every (S, M) is compared on the same unlearned model.
One screened attribution per model is also run end to end to check it gives the same top-k.
Usage: python benchmarks/screening.py [--model M --data D] [--queries 8] [--out benchmarks/results/screening.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs import Attributor, QueryImage, load_dataset, load_model  # noqa: E402
from mucs.cache import atomic_write  # noqa: E402
from mucs.sources.data import to_model_range  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL, cache_dir_for, settings_for  # noqa: E402
from mucs.sources.generate import generate  # noqa: E402
from mucs.method.losses import loss_matrix, screen_columns  # noqa: E402
from mucs.method.unlearn import skew, top_k, unlearn  # noqa: E402


def screened_top(lu, lo, S, M, k, normalised=True):
    """Top-k that screened scoring with S levels and M kept items finds, from the full matrices."""
    N, K = lo.shape
    cols = screen_columns(K, S)
    keep = top_k(skew(lu[:, cols], lo[:, cols], normalised), M)
    full = skew(lu[keep], lo[keep], normalised)
    top = keep[top_k(full, min(k, len(keep)))]
    forwards = N * len(cols) + len(keep) * (K - len(cols))
    return top, N * K / forwards


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=8, help="generated queries (classes cycle), plus 2 training images")
    ap.add_argument("--settings", default=None, help="JSON overrides of the model's settings")
    ap.add_argument("--grid", default="1:50,2:50,2:100,3:100,4:100,4:200", help="S:M pairs to compare")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    model, data = load_model(a.model), load_dataset(a.data)
    s = settings_for(a.model, **(json.loads(a.settings) if a.settings else {})).replace(screen_noises=0)
    att = Attributor(model, data, s, cache_dir=cache_dir_for(a.model))
    lo, _ = att.original_losses(s)
    lnull, _ = att.null_loss(s)
    ns = att.noise_set(s)
    N, K = lo.shape
    C = model.num_classes
    labels = [q % C for q in range(a.queries)] if C else [None] * a.queries
    queries = [(to_model_range(img), y, f"generated seed {300 + q}") for q, (img, y) in
               enumerate(zip(generate(model, labels, [300 + q for q in range(a.queries)], steps=50), labels))]
    for i in (11, 600):
        if i < N:
            queries.append((data.tensor([i])[0], None if data.labels is None else int(data.labels[i]), f"training {i}"))
    grid = [tuple(int(v) for v in p.split(":")) for p in a.grid.split(",")]
    rows = []
    for x, y, name in queries:
        t0 = time.perf_counter()
        u = unlearn(model, data, x, y, lnull, s)
        t_un = time.perf_counter() - t0
        t0 = time.perf_counter()
        lu = loss_matrix(u.unet, model, data, ns, s.eval_batch_size, weighting=s.loss_weighting, sigma_data=s.sigma_data)
        t_lu = time.perf_counter() - t0
        ref = top_k(skew(lu, lo, s.normalised), s.top_k)
        row = dict(query=name, steps=u.steps, converged=u.converged, unlearning_s=t_un, full_lu_s=t_lu)
        for S, M in grid:
            top, saving = screened_top(lu, lo, S, M, s.top_k, s.normalised)
            row[f"S{S}_M{M}"] = dict(top_agreement=len(set(top.tolist()) & set(ref.tolist())) / len(ref), saving=saving)
        rows.append(row)
        print(json.dumps(dict(query=name, steps=u.steps, **{k: v["top_agreement"] for k, v in row.items()
                                                              if k.startswith("S")})), flush=True)
    summary = {}
    for S, M in grid:
        key = f"S{S}_M{M}"
        ag = [r[key]["top_agreement"] for r in rows]
        summary[key] = dict(screen_noises=S, screen_keep=M, mean_top_agreement=float(np.mean(ag)),
                            min_top_agreement=float(np.min(ag)), forwards_saved=rows[0][key]["saving"])
        print(f"S={S:2d} M={M:4d}: top-{s.top_k} agreement mean {np.mean(ag):.2f} (min {np.min(ag):.2f}), "
              f"{rows[0][key]['saving']:.1f}x fewer L_u forwards")
    # one screened attribution end to end: the same top-k as read off the full matrix
    S, M = grid[len(grid) // 2]
    x, y, name = queries[0]
    r = att.attribute(QueryImage(x, []), y, settings=s.replace(screen_noises=S, screen_keep=M))
    print(f"end-to-end screened run (S={S}, M={M}) on {name}: {r.info['screening']}")
    out = dict(model=os.path.basename(a.model), N=N, K=K, settings=s.to_dict(), per_query=rows, summary=summary,
               end_to_end=dict(query=name, screening=r.info["screening"], top=r.top.tolist()),
               torch_threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"))
    if a.out:
        atomic_write(a.out, json.dumps(out, indent=1, allow_nan=False).encode())
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
