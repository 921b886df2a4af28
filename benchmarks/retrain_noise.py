"""How much of the counterfactual test's signal is retraining noise: two removals that differ by a few
items give each target a different retrain; for targets whose own top-k is the same under both, the
change of SSIM(original, retrained) is noise of the protocol, not of the attribution.

Compares `mucs` with `mucs_screened` (top-k overlap 0.97: the block unions differ by 2-4 of ~75
items) from an `evaluate` work folder that holds both (nothing is computed: cached results only).
Usage: python benchmarks/retrain_noise.py [--work benchmarks/work/cf-full] [--a mucs --b mucs_screened]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs.defaults import DEFAULT_DATA  # noqa: E402
from mucs.evaluation.config import preset  # noqa: E402
from mucs.evaluation.engine import SerialEngine  # noqa: E402
from mucs.evaluation.metrics import summarise  # noqa: E402
from mucs.evaluation.plan import make_job  # noqa: E402
from mucs.evaluation.run import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="benchmarks/work/cf-full")
    ap.add_argument("--targets", type=int, default=40)
    ap.add_argument("--target-block", type=int, default=20)
    ap.add_argument("--a", default="mucs")
    ap.add_argument("--b", default="mucs_screened")
    a = ap.parse_args()
    job = make_job(preset("full", targets=a.targets, target_block=a.target_block, data=DEFAULT_DATA), a.work,
                   verbose=False)
    job.read_only = True
    st = run(job, [a.a, a.b], SerialEngine(), cached_only=True)
    if a.a not in st.sims or a.b not in st.sims:
        sys.exit(f"{a.work} does not hold both {a.a} and {a.b}: run evaluate with --methods {a.a},{a.b} first")
    sa, sb = st.sims[a.a]["targets"]["ssim"], st.sims[a.b]["targets"]["ssim"]
    rnd = np.concatenate([st.sims[n]["targets"]["ssim"] for n in st.random])
    T = len(sa)
    for blk in range(0, T, a.target_block or T):
        ua = set().union(*[set(st.sets[a.a][i]) for i in range(blk, min(T, blk + (a.target_block or T)))])
        ub = set().union(*[set(st.sets[a.b][i]) for i in range(blk, min(T, blk + (a.target_block or T)))])
        print(f"block from target {blk}: {a.a} removes {len(ua)}, {a.b} {len(ub)}; {len(ua - ub)} and {len(ub - ua)} "
              "items differ")
    same = [i for i in range(T) if set(st.sets[a.a][i]) == set(st.sets[a.b][i])]
    d = np.abs(sa - sb)[same]
    print(f"targets whose own top-k is the same under both: {len(same)} of {T}")
    print(f"their SSIM(original, retrained) under the two retrains: mean |difference| {d.mean():.4f}, median "
          f"{np.median(d):.4f}, max {d.max():.4f}")
    print(f"the attribution's effect it compares with: mean SSIM after random removal {rnd.mean():.4f}, after "
          f"{a.a}'s {sa.mean():.4f} (a drop of {rnd.mean() - sa.mean():.4f}), after {a.b}'s {sb.mean():.4f}")
    for name, s in ((a.a, sa), (a.b, sb)):
        r = summarise(rnd, s, "ssim")
        print(f"{name}: targets SSIM AUC {r['auc']:.2f} [{r['auc_ci95'][0]:.2f}-{r['auc_ci95'][1]:.2f}]")


if __name__ == "__main__":
    main()
