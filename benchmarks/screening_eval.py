"""Screened scoring on the counterfactual evaluation's model: top-k agreement of `mucs_screened`
with `mucs` over the evaluation's targets, and the L_u forwards it saves.

Reads the attributions an `evaluate` run left in its work folder (run it first with
`--methods mucs,mucs_screened,...`; both attribute the same targets with the same model A, and the
screened one reads its entries off mucs's cached full L_u, so the difference is screening alone).
Usage: python benchmarks/screening_eval.py [--work benchmarks/work/cf-full] [--targets 40]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs.defaults import DEFAULT_DATA  # noqa: E402
from mucs.evaluation.config import preset  # noqa: E402
from mucs.evaluation.plan import make_job  # noqa: E402
from mucs.evaluation.steps import _model_a  # noqa: E402
from mucs.method.baselines import ABLATIONS  # noqa: E402
from mucs.method.unlearn import top_k  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="benchmarks/work/cf-full")
    ap.add_argument("--preset", default="full")
    ap.add_argument("--targets", type=int, default=40)
    ap.add_argument("--target-block", type=int, default=20)
    a = ap.parse_args()
    cfg = preset(a.preset, targets=a.targets, target_block=a.target_block, data=DEFAULT_DATA)
    job = make_job(cfg, a.work, verbose=False)
    model = _model_a(job, job.model_dir([]))
    gen = job.cached_generation(job.model_dir([]))
    images = gen["images"] if "images" in gen else gen
    N, K = len(job.data()), cfg.noises
    S, M = ABLATIONS["mucs_screened"]["screen_noises"], ABLATIONS["mucs_screened"]["screen_keep"]
    forwards = N * S + M * (K - S)
    print(f"evaluation model A: N = {N}, K = {K}; screening S = {S}, M = {M}: {forwards} L_u forwards instead of "
          f"{N * K} ({N * K / forwards:.1f}x fewer)")
    agree = {5: [], 10: []}
    for i in range(cfg.targets):
        img = images["targets"][i]
        full = job.cached_attribution("mucs", model.fingerprint(), i, img)
        scr = job.cached_attribution("mucs_screened", model.fingerprint(), i, img)
        if full is None or scr is None:
            sys.exit(f"target {i}: no cached attribution of mucs and mucs_screened in {a.work}; run evaluate first")
        for k in agree:
            agree[k].append(len(set(top_k(full["scores"], k)) & set(top_k(scr["scores"], k))) / k)
    for k, v in agree.items():
        print(f"top-{k} agreement over {len(v)} targets: mean {np.mean(v):.3f}, median {np.median(v):.2f}, "
              f"min {np.min(v):.2f}; below 0.9 for {sum(x < 0.9 for x in v)}")


if __name__ == "__main__":
    main()
