"""Time one MUCS attribution on a model (default: the embedded Fashion-MNIST model) with its
recommended settings: each stage, from query image to scores, median of several queries.

First the query-independent stages are computed from scratch in an empty cache (original losses,
null loss) and timed; then every query reuses them, as in the app and the CLI.
With --compare-paper N, N of the queries are also attributed with the paper's settings (K=100,
B=100, lr ÷ 10, a high step cap) and the top-k of both are compared.
Usage: python benchmarks/attribution_speed.py [--queries 5] [--compare-paper 0]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs import Attributor, QueryImage, Settings, load_dataset, load_model  # noqa: E402
from mucs.sources.data import to_model_range  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL, settings_for  # noqa: E402
from mucs.sources.generate import generate  # noqa: E402
from mucs.method.losses import loss_matrix, null_loss  # noqa: E402
from mucs.method.overlap import overlap  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--compare-paper", type=int, default=0, help="also run N queries with the paper's settings")
    ap.add_argument("--paper-max-steps", type=int, default=400)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    model, data = load_model(a.model), load_dataset(a.data)
    s = settings_for(a.model)
    print(f"model {a.model} ({sum(p.numel() for p in model.unet.parameters())} parameters), N={len(data)}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in s.to_dict().items()))
    with tempfile.TemporaryDirectory() as cache:
        att = Attributor(model, data, s, cache_dir=cache)
        # time the query-independent stages from scratch (the Attributor would read the shipped cache)
        t0 = time.perf_counter()
        loss_matrix(model.unet, model, data, att.noise_set(s), s.eval_batch_size)
        t_lo = time.perf_counter() - t0
        t0 = time.perf_counter()
        null_loss(model, data, s)
        t_null = time.perf_counter() - t0
        print(f"query-independent, computed once and cached: original losses {t_lo:.1f} s, null loss {t_null:.1f} s")
        labels = [q % model.num_classes for q in range(a.queries)] if model.num_classes else [None] * a.queries
        imgs = generate(model, labels, [100 + q for q in range(a.queries)], steps=50)
        totals, results = [], []
        for q, (img, y) in enumerate(zip(imgs, labels)):
            t0 = time.perf_counter()
            r = att.attribute(QueryImage(to_model_range(img), []), y)
            totals.append(time.perf_counter() - t0)
            results.append(r)
            st = r.stage_times
            print(f"query {q} (class {y}, seed {100 + q}): total {totals[-1]:.1f} s = unlearning {st['unlearning']:.1f} s "
                  f"({r.steps} steps, converged={r.converged}) + unlearned losses {st['unlearned_losses']:.1f} s "
                  f"+ cached L_o/L_null {st['original_losses'] + st['null_loss']:.2f} s; top-5 {r.top[:5].tolist()}")
        print(f"median time per attribution: {statistics.median(totals):.1f} s over {a.queries} queries "
              f"(min {min(totals):.1f}, max {max(totals):.1f})")
        if a.compare_paper:
            paper = Settings(max_steps=a.paper_max_steps, top_k=s.top_k)
            patt = Attributor(model, data, paper, cache_dir=cache)
            for q in range(min(a.compare_paper, a.queries)):
                t0 = time.perf_counter()
                p = patt.attribute(QueryImage(to_model_range(imgs[q]), []), labels[q])
                r = results[q]
                rho = spearmanr(r.scores, p.scores).statistic      # ties share their average rank
                print(f"paper settings, query {q}: {time.perf_counter() - t0:.0f} s, {p.steps} steps "
                      f"(converged={p.converged}); top-{s.top_k} overlap with the defaults "
                      f"{overlap(r.top, p.top):.0%}; Spearman rank correlation of all scores {rho:.3f}; "
                      f"top-5 {p.top[:5].tolist()}")


if __name__ == "__main__":
    main()
