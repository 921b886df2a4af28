"""Time one MUCS attribution on a model (default: the embedded Fashion-MNIST model) with its
recommended settings: each stage, from query image to scores, median of several queries.

First the query-independent stages are computed from scratch in an empty cache (original losses,
null loss) and timed; then every query reuses them, as in the app and the CLI.
With --compare-paper N, N of the queries are also attributed with the paper's settings (K=100,
B=100, lr ÷ 10, a high step cap) and the top-k of both are compared.
With --compare-fast, every query is also attributed with the fast profile (mucs.defaults.PROFILES),
right after its recommended run, and the top-k of both compared; with --seed-floor the recommended
run is repeated with another unlearning seed, to show how far the full way's own top-k moves.
Usage: python benchmarks/attribution_speed.py [--queries 5] [--compare-paper 0] [--compare-fast --seed-floor]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs import Attributor, QueryImage, Settings, load_dataset, load_model  # noqa: E402
from mucs.cache import atomic_write  # noqa: E402
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
    ap.add_argument("--compare-fast", action="store_true", help="also run every query with the fast profile")
    ap.add_argument("--seed-floor", action="store_true", help="and with the recommended settings at seed + 1")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
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
        totals, results, rows = [], [], []
        fast = settings_for(a.model, "fast")
        floor = s.replace(seed=s.seed + 1)
        for q, (img, y) in enumerate(zip(imgs, labels)):
            t0 = time.perf_counter()
            r = att.attribute(QueryImage(to_model_range(img), []), y)
            totals.append(time.perf_counter() - t0)
            results.append(r)
            st = r.stage_times
            print(f"query {q} (class {y}, seed {100 + q}): total {totals[-1]:.1f} s = unlearning {st['unlearning']:.1f} s "
                  f"({r.steps} steps, converged={r.converged}) + unlearned losses {st['unlearned_losses']:.1f} s "
                  f"+ cached L_o/L_null {st['original_losses'] + st['null_loss']:.2f} s; top-5 {r.top[:5].tolist()}",
                  flush=True)
            row = dict(query=q, label=y, recommended=_record(r, totals[-1]))
            for name, extra in (("fast", fast if a.compare_fast else None), ("seed_floor", floor if a.seed_floor else None)):
                if extra is None:
                    continue
                t0 = time.perf_counter()
                f = att.attribute(QueryImage(to_model_range(img), []), y, settings=extra)
                row[name] = _record(f, time.perf_counter() - t0, agreement=overlap(r.top, f.top))
                print(f"  {name}: total {row[name]['seconds']:.1f} s = unlearning {f.stage_times['unlearning']:.1f} s "
                      f"({f.steps} steps, converged={f.converged}) + unlearned losses "
                      f"{f.stage_times['unlearned_losses']:.1f} s; top-{s.top_k} agreement with the recommended run "
                      f"{row[name]['agreement']:.0%}", flush=True)
            rows.append(row)
        print(f"median time per attribution: {statistics.median(totals):.1f} s over {a.queries} queries "
              f"(min {min(totals):.1f}, max {max(totals):.1f})")
        summary = _summary(rows, totals, s.top_k)
        if a.out:
            out = dict(date=time.strftime("%Y-%m-%d"), torch=torch.__version__, threads=torch.get_num_threads(),
                       settings=s.to_dict(), fast=fast.to_dict(), per_query=rows, summary=summary,
                       query_independent=dict(original_losses=t_lo, null_loss=t_null))
            atomic_write(a.out, json.dumps(out, indent=1, allow_nan=False).encode())
            print(f"wrote {a.out}")
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


def _summary(rows, totals, top_k) -> dict:
    """Median seconds of the recommended runs, and of each compared profile with its top-k agreement."""
    summary = dict(recommended=dict(median_seconds=statistics.median(totals)))
    for name in ("fast", "seed_floor"):
        if rows and name in rows[0]:
            secs, agr = [r_[name]["seconds"] for r_ in rows], [r_[name]["agreement"] for r_ in rows]
            summary[name] = dict(median_seconds=statistics.median(secs), min_seconds=min(secs),
                                 max_seconds=max(secs), mean_agreement=statistics.mean(agr), min_agreement=min(agr))
            print(f"{name}: median {statistics.median(secs):.1f} s (min {min(secs):.1f}, max {max(secs):.1f}); "
                  f"top-{top_k} agreement with the recommended run: mean {statistics.mean(agr):.2f}, "
                  f"min {min(agr):.2f}")
    return summary


def _record(r, seconds, agreement=None) -> dict:
    st = r.stage_times
    d = dict(seconds=seconds, model_work=st["unlearning"] + st["unlearned_losses"], unlearning=st["unlearning"],
             unlearned_losses=st["unlearned_losses"], steps=r.steps, converged=r.converged, top=r.top.tolist())
    if agreement is not None:
        d["agreement"] = float(agreement)
    return d


if __name__ == "__main__":
    main()
