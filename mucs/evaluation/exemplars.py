"""The exemplar benchmark: a ground truth without retraining from scratch (after Wang et al.,
*Evaluating data attribution for text-to-image models*, ICCV 2023).

1. Model A' = the evaluation's recipe trained on its training subset *without one class* c (a retrain
   of the counterfactual work folder, cached there), so A' has never seen class c.
2. Fine-tune A' on E exemplars of class c that no model saw (images of the source set outside the
   subset), mixed half and half with replayed training images, for a few hundred steps.
3. Generate G items of class c from the fine-tuned model (fixed seeds never used elsewhere).
4. Every method ranks the candidates — the fine-tuned model's training data: A's subset without
   class c, plus the E exemplars — for every generation; the exemplars are the ground truth.
   Per generation: recall@10 (share of the exemplars in the top 10), mean rank of the exemplars and
   average precision; their means over the generations with percentile bootstrap intervals.
"""
import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from ..cache import CACHE_EXT, atomic_write, cache_key, load_arrays, move_dir_into_place, save_arrays, staging_dir
from ..errors import MucsError


@dataclass
class ExemplarConfig:
    held_out_class: int = 8       # Fashion-MNIST "Bag": unlike every other class
    exemplars: int = 8            # E
    generations: int = 20         # G (≥ 20)
    gen_seed: int = 6000          # generation j: seed gen_seed + j (never used by any other evaluation)
    exemplar_seed: int = 0        # which unseen images of the class become the exemplars
    finetune_steps: int = 300
    finetune_batch: int = 32      # half exemplars (repeated), half replayed training images
    finetune_lr: float = 5e-4
    finetune_seed: int = 0


def _rng_pick(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(pool) < n:
        raise MucsError(f"only {len(pool)} unseen images of the held-out class, {n} exemplars asked for")
    return np.sort(np.random.default_rng(seed).choice(pool, n, replace=False))


def candidates(job, ec: ExemplarConfig) -> tuple:
    """(path of the candidate set .npz, indices of the class-c items removed from A's subset, E).
    The candidate set: A's subset without class c, then the E exemplars (the last E indices)."""
    from ..sources.data import load_dataset
    data = job.data()
    if data.labels is None:
        raise MucsError("the exemplar benchmark needs a class-conditional training set")
    src = load_dataset(job.cfg.data)
    with np.load(job.data_path) as z:
        used = z["source_indices"] if "source_indices" in z.files else np.arange(len(src))
    c = int(ec.held_out_class)
    removed = np.flatnonzero(data.labels == c)
    if src.labels is None:
        raise MucsError("the exemplar benchmark needs a labelled source set")
    pool = np.setdiff1d(np.flatnonzero(src.labels == c), used)
    ex = _rng_pick(pool, ec.exemplars, ec.exemplar_seed)
    keep = np.setdiff1d(np.arange(len(data)), removed)
    key = cache_key(kind="exemplar_candidates", data=data.fingerprint(), c=c, ex=ex.tolist())
    path = os.path.join(job.work, "exemplars", f"candidates-{key[:12]}.npz")
    if not os.path.exists(path):
        buf = io.BytesIO()
        np.savez(buf, images=np.concatenate([data.images[keep], src.images[ex]]),
                 labels=np.concatenate([data.labels[keep], src.labels[ex]]).astype(np.int64),
                 class_names=np.array(data.class_names or [str(i) for i in range(data.num_classes)]),
                 source_indices=np.concatenate([used[keep], ex]))
        atomic_write(path, buf.getvalue())
    return path, removed, ec.exemplars


def finetune(base_dir: str, cand, E: int, ec: ExemplarConfig, out: str) -> str:
    """Fine-tune the model in `base_dir` on the candidate set, each batch half exemplars (the last E
    items) and half replayed items, with the model's own loss and uniform-t noise; saved to `out`
    (a copy of the model folder with the new weights), atomically. Cached: an existing `out` is kept."""
    from ..sources.models import alphas_cumprod, load_model, per_item_loss
    if os.path.isfile(os.path.join(out, "finetune.json")):
        return out
    model = load_model(base_dir, "cpu")
    unet = model.unet.train()
    g = torch.Generator().manual_seed(int(ec.finetune_seed))
    opt = torch.optim.AdamW(unet.parameters(), lr=ec.finetune_lr)
    ac = alphas_cumprod(model)
    N, B = len(cand), ec.finetune_batch
    t0 = time.perf_counter()
    for step in range(ec.finetune_steps):
        idx = np.concatenate([N - E + torch.randint(0, E, (B // 2,), generator=g).numpy(),
                              torch.randint(0, N - E, (B - B // 2,), generator=g).numpy()])
        t = torch.randint(0, len(ac), (B,), generator=g)
        eps = torch.randn((B, model.channels, model.size, model.size), generator=g)
        loss = per_item_loss(model.predictor(unet), ac, model.prediction_type, cand.tensor(idx),
                             model.label_cond(cand.label_tensor(idx)), t, eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tmp = staging_dir(out)
    try:
        shutil.rmtree(tmp)
        shutil.copytree(base_dir, tmp)
        unet.eval().save_pretrained(os.path.join(tmp, "unet"))
        with open(os.path.join(tmp, "finetune.json"), "w") as f:
            json.dump(dict(base=os.path.basename(base_dir), config=asdict(ec), seconds=time.perf_counter() - t0,
                           final_loss=float(loss)), f)
        move_dir_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ranking_metrics(scores: np.ndarray, positives: np.ndarray, k: int = 10) -> dict:
    """recall@k, mean rank (1 = best) and average precision of the positives under `scores`."""
    from ..method.unlearn import top_k
    order = top_k(np.asarray(scores, np.float64), len(scores))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    r = np.sort(rank[positives])
    return dict(recall_at_10=float(np.mean(r <= k)), mean_rank=float(r.mean()),
                ap=float(np.mean(np.arange(1, len(r) + 1) / r)))


def _boot(values, n_boot=2000, seed=0) -> list:
    v = np.asarray(values, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))
    return [float(x) for x in np.quantile(v[idx].mean(1), [0.025, 0.975])]


def run(job, methods, ec: ExemplarConfig, log=print, on_method=None) -> dict:
    """The whole benchmark in this process; every artefact cached in the work folder's exemplars/."""
    from ..method import baselines
    from ..sources.data import QueryImage, load_dataset, to_model_range
    from ..sources.generate import generate
    from ..sources.models import load_model
    from . import steps
    t_start = time.perf_counter()
    cand_path, removed, E = candidates(job, ec)
    base = steps.retrained(job, removed, f"model A without class {ec.held_out_class}")
    log(f"[{time.strftime('%H:%M:%S')}] model A' (no class {ec.held_out_class}): {base['path']}")
    cand = load_dataset(cand_path)
    ft_dir = os.path.join(job.work, "exemplars", "finetuned-" + cache_key(
        base=os.path.basename(base["path"]), cand=cand.fingerprint(), ec=asdict(ec))[:12])
    finetune(base["path"], cand, E, ec, ft_dir)
    model = load_model(ft_dir, "cpu")
    labels, seeds = [ec.held_out_class] * ec.generations, [ec.gen_seed + j for j in range(ec.generations)]
    gkey = cache_key(kind="exemplar_generations", model=model.fingerprint(), seeds=seeds, steps=job.cfg.sample_steps)
    gpath = os.path.join(job.work, "exemplars", f"generated-{gkey[:12]}{CACHE_EXT}")
    hit = load_arrays(gpath, gkey)
    if hit is None:
        hit = dict(images=generate(model, labels, seeds, job.cfg.sample_steps))
        save_arrays(gpath, gkey, **hit)
    images = hit["images"]
    log(f"[{time.strftime('%H:%M:%S')}] fine-tuned model {ft_dir}; {len(images)} generations of class {ec.held_out_class}")
    ctx = baselines.Context(model=model, data=cand, settings=job.cfg.mucs_settings(),
                            cache_dir=os.path.join(job.work, "cache"), seed=0,
                            options={k: dict(v) for k, v in job.cfg.method_options.items()})
    ctx._attributor = None
    positives = np.arange(len(cand) - E, len(cand))
    out = {}

    def result(rows):
        return _summary(job, [m for m in methods if m in rows], ec, cand, E, removed, rows, ft_dir, base, t_start)
    for m in methods:
        parts = baselines.components(m)
        per, secs = [], []
        for j, img in enumerate(images):
            opts = job.cfg.resolved_options(m)
            from .plan import settings_key
            key = cache_key(kind="exemplar_scores", method=m, model=model.fingerprint(), data=cand.fingerprint(),
                            settings=settings_key(job.cfg.mucs_settings()) if m.startswith("mucs") else None,
                            options=opts, seed=seeds[j])
            path = os.path.join(job.work, "exemplars", "scores", m, f"gen{j:03d}-{key[:16]}{CACHE_EXT}")
            got = load_arrays(path, key)
            if got is None:
                t0 = time.perf_counter()
                sc = baselines.scores(m, ctx, QueryImage(to_model_range(img), []), ec.held_out_class, query_id=10_000 + j)
                got = dict(scores=np.asarray(sc, np.float64), seconds=np.array(time.perf_counter() - t0))
                save_arrays(path, key, **got)
                log(f"  {m} generation {j}: {float(got['seconds']):.1f} s")
            per.append(ranking_metrics(got["scores"], positives))
            secs.append(float(got["seconds"]))
        row: dict = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
        row.update({f"{k}_ci95": _boot([p[k] for p in per]) for k in per[0]})
        row.update(per_generation=per, seconds_mean=float(np.mean(secs)), seconds_first=secs[0],
                   components=parts if len(parts) > 1 else None)
        out[m] = row
        if on_method is not None:       # the table so far, after each method
            on_method(result(out))
    return result(out)


def _summary(job, methods, ec, cand, E, removed, out, ft_dir, base, t_start):
    from .summary import method_settings
    n = len(cand)
    positives = np.arange(n - E, n)
    return dict(
        description="Exemplar benchmark: model A' (the evaluation's recipe without one class) fine-tuned on E unseen "
                    "exemplars of that class; each method ranks the fine-tuned model's training data (A's subset "
                    "without the class + the exemplars) for G generations of the class; the exemplars are the ground "
                    "truth. recall_at_10 = share of the exemplars in the top 10; mean_rank of the exemplars (1 = best); "
                    "ap = average precision. Means over the generations, 95 % bootstrap intervals over generations.",
        config=asdict(ec), scale=dict(job.cfg.to_dict(), candidates=n, exemplars=E, removed_class_items=len(removed)),
        random_expectation=dict(recall_at_10=10 / n, mean_rank=(n + 1) / 2, ap=float(np.mean(
            [ranking_metrics(np.random.default_rng(r).random(n), positives)["ap"] for r in range(200)]))),
        methods=out, method_settings={m: method_settings(job.cfg, m) for m in methods},
        finetuned_model=os.path.relpath(ft_dir, job.work), base_model=os.path.relpath(base["path"], job.work),
        timing=dict(this_run_seconds=time.perf_counter() - t_start, torch_threads=torch.get_num_threads()))


def table(result: dict) -> str:
    rnd = result["random_expectation"]
    lines = ["| method | recall@10 | 95 % interval | mean rank | mAP | 95 % interval | s per generation |",
             "|---|---|---|---|---|---|---|",
             f"| random (expected) | {rnd['recall_at_10']:.3f} | | {rnd['mean_rank']:.0f} | {rnd['ap']:.3f} | | |"]
    for m, r in result["methods"].items():
        lines.append(f"| `{m}` | {r['recall_at_10']:.3f} | {r['recall_at_10_ci95'][0]:.3f}–{r['recall_at_10_ci95'][1]:.3f} "
                     f"| {r['mean_rank']:.1f} | {r['ap']:.3f} | {r['ap_ci95'][0]:.3f}–{r['ap_ci95'][1]:.3f} "
                     f"| {r['seconds_mean']:.1f} |")
    return "\n".join(lines)


def cmd_exemplars(a, method_options: Optional[dict] = None) -> None:
    """`mucs evaluate --protocol exemplars`."""
    from ..defaults import DEFAULT_DATA
    from .config import preset
    from .plan import make_job
    from .report import check_out, write_json
    cfg = preset(a.preset, data=a.data or DEFAULT_DATA, n_train=a.n_train, train_steps=a.train_steps,
                 method_options=method_options).validate()
    methods = [m.strip() for m in a.methods.split(",") if m.strip() and m.strip() != "random"]
    from ..method import baselines
    for m in methods:
        baselines.components(m)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    work = a.work or os.path.join(root, "benchmarks", "work", f"counterfactual-{a.preset}")
    out = a.out or os.path.join(work, "exemplars", "results.json")
    check_out(out, work, a.force)
    if a.threads:
        torch.set_num_threads(a.threads)
    job = make_job(cfg, work, threads=a.threads)
    result = run(job, methods, ExemplarConfig(**({} if a.targets is None else dict(generations=a.targets))),
                 on_method=lambda r: write_json(out, r))
    write_json(out, result)
    print(table(result))
    print(f"wrote {out}")
