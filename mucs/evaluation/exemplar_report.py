"""The exemplar benchmark's results: a method's row (means and bootstrap intervals over the
generations), the paired MUCS − method differences, the results JSON and its markdown table."""
import os
import time
from dataclasses import asdict

import numpy as np
import torch

from .exemplar_checks import boot_ci, ranking_metrics
from .summary import shown_path


def row(per: list, secs: list, parts=None) -> dict:
    row: dict = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    row.update({f"{k}_ci95": boot_ci([p[k] for p in per]) for k in per[0]})
    row.update(per_generation=per, seconds_mean=float(np.mean(secs)), seconds_first=secs[0],
               components=parts if parts and len(parts) > 1 else None)
    return row


def paired(rows: dict, ref: str = "mucs") -> dict:
    """Per generation, `ref` − each other method in AP and recall@10: means and bootstrap intervals over
    the generations (the generations are shared, so the paired interval is the one that resolves)."""
    if ref not in rows:
        return {}
    out: dict = {}
    for m, r in rows.items():
        if m == ref:
            continue
        d = {k: [a[k] - b[k] for a, b in zip(rows[ref]["per_generation"], r["per_generation"])]
             for k in ("ap", "recall_at_10")}
        out[m] = {f"{k}_difference": float(np.mean(v)) for k, v in d.items()}
        out[m].update({f"{k}_difference_ci95": boot_ci(v) for k, v in d.items()})
    return out


def summary(job, methods, ec, cand, E, removed, out, ft_dir, base, t_start, looks, lambdas, seeds, dev_seeds):
    from .exemplar_checks import same_label_expectation
    from .summary import method_settings
    n = len(cand)
    positives = np.arange(n - E, n)
    known = ec.design == "known-class"
    what = ("model A (the evaluation's recipe on ALL classes: class c is known, the label singles nothing out) "
            "fine-tuned on E unseen exemplars of class c; each method ranks the fine-tuned model's training data "
            "(A's whole subset + the exemplars)" if known else
            "model A' (the evaluation's recipe without one class) fine-tuned on E unseen exemplars of that class; "
            "each method ranks the fine-tuned model's training data (A's subset without the class + the exemplars)")
    n_same = int(np.sum(cand.labels == ec.held_out_class))
    return dict(
        description=f"Exemplar benchmark ({ec.design} design): {what} for G generations of the class; the exemplars "
                    "are the ground truth. recall_at_10 = share of the exemplars in the top 10; mean_rank of the "
                    "exemplars (1 = best); ap = average precision. Means over the generations, 95 % bootstrap "
                    "intervals over generations. same_label_expectation: ranking the items labelled c first, ties at "
                    "random (exact expectation).",
        design=ec.design, config=asdict(ec),
        split=dict(heldout_seeds=[seeds[0], seeds[-1]] if seeds else [], development_seeds=[dev_seeds[0], dev_seeds[-1]]
                   if dev_seeds else [], note="λ (and the fine-tune's strength) chosen on the development generations "
                                             "only; every row is on the held-out generations"),
        scale=dict(job.cfg.to_dict(), data=shown_path(job.cfg.data), candidates=n, exemplars=E,
                   removed_class_items=len(removed),
                   same_label_items=n_same),
        random_expectation=dict(recall_at_10=10 / n, mean_rank=(n + 1) / 2, ap=float(np.mean(
            [ranking_metrics(np.random.default_rng(r).random(n), positives)["ap"] for r in range(200)]))),
        same_label_expectation=same_label_expectation(n_same, E), paired=paired(out),
        resemblance=looks, lambda_selection=lambdas,
        methods=out, method_settings={m: _settings(method_settings(job.cfg, m), lambdas.get(m)) for m in methods},
        finetuned_model=os.path.relpath(ft_dir, job.work), base_model=os.path.relpath(base["path"], job.work),
        timing=dict(this_run_seconds=time.perf_counter() - t_start, torch_threads=torch.get_num_threads()))


def _settings(resolved: dict, lam_pick) -> dict:
    """A method's resolved settings, with the λ its row was scored with when λ was chosen on development data."""
    if lam_pick:
        resolved = dict(resolved, options=dict(resolved["options"], lam=lam_pick["chosen"]),
                        lam_source=f"chosen on the development generations (options' default {lam_pick['default']:g})")
    return resolved


def table(result: dict) -> str:
    rnd = result["random_expectation"]
    lab = "top 10 labelled like the query"
    lines = [f"| method | recall@10 | 95 % interval | mean rank | mAP | 95 % interval | {lab} | s per generation |",
             "|---|---|---|---|---|---|---|---|",
             f"| random (expected) | {rnd['recall_at_10']:.3f} | | {rnd['mean_rank']:.0f} | {rnd['ap']:.3f} | | | |"]
    same = result.get("same_label_expectation")
    if same:
        lines.append(f"| same label, ties at random (expected; {same['same_label_items']} items) | "
                     f"{same['recall_at_10']:.3f} | | {same['mean_rank']:.1f} | {same['ap']:.3f} | | 1.00 | |")
    for m, r in result["methods"].items():
        lam = f" (λ {r['lam']:g})" if "lam" in r else ""
        share = f"{r['same_label_top10']:.2f}" if "same_label_top10" in r else ""
        lines.append(f"| `{m}`{lam} | {r['recall_at_10']:.3f} | {r['recall_at_10_ci95'][0]:.3f}–{r['recall_at_10_ci95'][1]:.3f} "
                     f"| {r['mean_rank']:.1f} | {r['ap']:.3f} | {r['ap_ci95'][0]:.3f}–{r['ap_ci95'][1]:.3f} "
                     f"| {share} | {r['seconds_mean']:.1f} |")
    return "\n".join(lines)
