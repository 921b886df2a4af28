"""The exemplar benchmark: a ground truth without retraining from scratch (after Wang et al.,
*Evaluating data attribution for text-to-image models*, ICCV 2023).

Two designs (`ExemplarConfig.design`):

- ``removed-class`` (the first one): the base model A' is the evaluation's recipe trained *without
  one class* c, so the exemplars are the only items labelled c and "same label as the query" ranks
  them first by construction: a confounded design, kept reproducible.
- ``known-class`` (the fair one): the base is the evaluation's model A itself (all classes), so the
  model already knows class c from its own training items and the label singles nothing out; the
  candidates are A's whole subset plus the exemplars.

1. The base model (A' or A; a model of the counterfactual work folder, cached there).
2. Fine-tune it on E exemplars of class c that no model saw (images of the source set outside the
   subset), mixed half and half with replayed training images, for a few hundred steps.
3. Generate G items of class c from the fine-tuned model (fixed seeds never used elsewhere).
4. Every method ranks the candidates — the fine-tuned model's training data: A's subset (without
   class c in the removed-class design), plus the E exemplars — for every generation; the exemplars
   are the ground truth. D-TRAK / TRAK: λ chosen on separate development generations when
   `lambda_grid` is set (exemplar_checks.choose_lambda).
   Per generation: recall@10 (share of the exemplars in the top 10), mean rank of the exemplars and
   average precision; their means over the generations with percentile bootstrap intervals.
"""
import hashlib
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
from .exemplar_checks import ranking_metrics
from .exemplar_report import row, summary, table


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
    design: str = "removed-class"  # removed-class (confounded by the label) | known-class (fair)
    dev_generations: int = 0      # development generations (seeds dev_seed + j): λ and the fine-tune are chosen on them
    dev_seed: int = 6500
    lambda_grid: tuple = ()       # D-TRAK / TRAK λ values tried on the development generations (empty: the options' λ)

    def validate(self) -> "ExemplarConfig":
        if self.design not in DESIGNS:
            raise MucsError(f"exemplar design must be one of {', '.join(DESIGNS)}, got {self.design!r}")
        if self.lambda_grid and not self.dev_generations:
            raise MucsError("a λ grid needs development generations (dev_generations ≥ 1)")
        if any(not (np.isfinite(x) and x > 0) for x in self.lambda_grid):
            raise MucsError("every λ of the grid must be a finite number > 0")
        return self

    def finetune_key(self) -> dict:
        """What the fine-tuned model depends on (removed-class: the first design's whole config, so its
        cached model is found again)."""
        if self.design == "removed-class":
            return {k: getattr(self, k) for k in _LEGACY_FIELDS}
        return dict(design=self.design, held_out_class=self.held_out_class, exemplars=self.exemplars,
                    exemplar_seed=self.exemplar_seed, finetune_steps=self.finetune_steps,
                    finetune_batch=self.finetune_batch, finetune_lr=self.finetune_lr, finetune_seed=self.finetune_seed)


DESIGNS = ("removed-class", "known-class")
_LEGACY_FIELDS = ("held_out_class", "exemplars", "generations", "gen_seed", "exemplar_seed", "finetune_steps",
                  "finetune_batch", "finetune_lr", "finetune_seed")
LAMBDA_GRID = tuple(10.0 ** e for e in range(1, 8))     # 1e1 … 1e7 (the kernel's mean ‖φ‖² is 1e3–4e4 here)
# The known-class design's defaults: steps chosen on development generations
# (benchmarks/exemplars_finetune_dev.py, benchmarks/results/exemplars_finetune_dev.log)
KNOWN_CLASS = dict(design="known-class", dev_generations=10, lambda_grid=LAMBDA_GRID, finetune_steps=500)


def config_for(design: str, **over) -> ExemplarConfig:
    """The config of a design with its defaults, then `over`."""
    base: dict = dict(KNOWN_CLASS) if design == "known-class" else dict(design=design)
    if over.get("lambda_grid") and "dev_generations" not in over:
        base.setdefault("dev_generations", 10)
    return ExemplarConfig(**dict(base, **over)).validate()


def _rng_pick(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(pool) < n:
        raise MucsError(f"only {len(pool)} unseen images of the held-out class, {n} exemplars asked for")
    return np.sort(np.random.default_rng(seed).choice(pool, n, replace=False))


def candidates(job, ec: ExemplarConfig) -> tuple:
    """(path of the candidate set .npz, indices of the class-c items removed from A's subset, E).
    The candidate set: A's subset (removed-class: without class c; known-class: all of it, nothing
    removed), then the E exemplars (the last E indices)."""
    from ..sources.data import load_dataset
    data = job.data()
    if data.labels is None:
        raise MucsError("the exemplar benchmark needs a class-conditional training set")
    src = load_dataset(job.cfg.data)
    with np.load(job.data_path) as z:
        used = z["source_indices"] if "source_indices" in z.files else np.arange(len(src))
    c = int(ec.held_out_class)
    removed = np.flatnonzero(data.labels == c) if ec.design == "removed-class" else np.zeros(0, np.int64)
    if not np.any(data.labels == c):
        raise MucsError(f"class {c} has no training items")
    if src.labels is None:
        raise MucsError("the exemplar benchmark needs a labelled source set")
    pool = np.setdiff1d(np.flatnonzero(src.labels == c), used)
    ex = _rng_pick(pool, ec.exemplars, ec.exemplar_seed)
    keep = np.setdiff1d(np.arange(len(data)), removed)
    key = cache_key(kind="exemplar_candidates", data=data.fingerprint(), c=c, ex=ex.tolist(),
                    **({} if ec.design == "removed-class" else dict(design=ec.design)))
    path = os.path.join(job.work, "exemplars", f"candidates-{key[:12]}.npz")
    if not os.path.exists(path):
        buf = io.BytesIO()
        np.savez(buf, images=np.concatenate([data.images[keep], src.images[ex]]),
                 labels=np.concatenate([data.labels[keep], src.labels[ex]]).astype(np.int64),
                 class_names=np.array(data.class_names or [str(i) for i in range(data.num_classes)]),
                 source_indices=np.concatenate([used[keep], ex]))
        atomic_write(path, buf.getvalue())
    return path, removed, ec.exemplars


def finetune(base_dir: str, cand, E: int, ec: ExemplarConfig, out: str, on_step=None) -> str:
    """Fine-tune the model in `base_dir` on the candidate set, each batch half exemplars (the last E
    items) and half replayed items, with the model's own loss and uniform-t noise; saved to `out`
    (a copy of the model folder with the new weights), atomically. Cached: an existing `out` is kept.
    `on_step(step, model)` after every step (development checks of the fine-tune's strength)."""
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
        if on_step is not None:
            on_step(step + 1, model)
    tmp = staging_dir(out)
    try:
        shutil.rmtree(tmp)
        shutil.copytree(base_dir, tmp)
        unet.eval().save_pretrained(os.path.join(tmp, "unet"))
        with open(os.path.join(tmp, "finetune.json"), "w") as f:
            json.dump(dict(base=os.path.basename(base_dir), config=asdict(ec), seconds=time.perf_counter() - t0,
                           final_loss=float(loss.detach())), f)
        move_dir_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def generations(job, model, label: int, seeds) -> np.ndarray:
    """(G, H, W, C) uint8 images of `label` from `model`, one per seed, cached in exemplars/."""
    from ..sources.generate import generate
    seeds = [int(x) for x in seeds]
    gkey = cache_key(kind="exemplar_generations", model=model.fingerprint(), seeds=seeds, steps=job.cfg.sample_steps)
    gpath = os.path.join(job.work, "exemplars", f"generated-{gkey[:12]}{CACHE_EXT}")
    hit = load_arrays(gpath, gkey)
    if hit is None:
        hit = dict(images=generate(model, [label] * len(seeds), seeds, job.cfg.sample_steps))
        save_arrays(gpath, gkey, **hit)
    return hit["images"]


def others_of(cand, E: int, c: int) -> np.ndarray:
    """The candidates that are not exemplars and share their class c (all non-exemplars when none do)."""
    rest = np.arange(len(cand) - E)
    same = rest[cand.labels[rest] == c]
    return same if len(same) else rest


def base_model(job, ec: ExemplarConfig, removed) -> dict:
    from . import steps
    if ec.design == "known-class":
        return steps.retrained(job, [], "model A")
    return steps.retrained(job, removed, f"model A without class {ec.held_out_class}")


def finetuned_dir(job, ec: ExemplarConfig, base: dict, cand) -> str:
    return os.path.join(job.work, "exemplars", "finetuned-" + cache_key(
        base=os.path.basename(base["path"]), cand=cand.fingerprint(), ec=ec.finetune_key())[:12])


def _kernel_inputs(job, ctx, m: str, images, seeds, label, log) -> tuple:
    """D-TRAK / TRAK: z = Φ·φ(q) per generation (the λ-free part, cached) and its seconds."""
    from ..method.baselines import check_supported
    from ..method.dtrak import OUTPUTS, options_from, query_kernel_input
    from ..sources.data import to_model_range
    check_supported(m, ctx.model)
    o = options_from(ctx.options.get(m))
    zs, secs = [], []
    for img, seed in zip(images, seeds):
        key = cache_key(kind="exemplar_kernel_input", method=m, model=ctx.model.fingerprint(), data=ctx.data.fingerprint(),
                        options=o.key(), seed=int(seed), image=hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest())
        path = os.path.join(job.work, "exemplars", "scores", m, f"z-{int(seed)}-{key[:16]}{CACHE_EXT}")
        got = load_arrays(path, key)
        if got is None:
            t0 = time.perf_counter()
            feats = ctx.dtrak_features(OUTPUTS[m], o)
            z = query_kernel_input(ctx.model, feats, to_model_range(img), label)
            got = dict(z=np.asarray(z, np.float64), seconds=np.array(time.perf_counter() - t0))
            save_arrays(path, key, **got)
            log(f"  {m} seed {int(seed)}: {float(got['seconds']):.1f} s")
        zs.append(got["z"])
        secs.append(float(got["seconds"]))
    return zs, secs, ctx.dtrak_features(OUTPUTS[m], o)


def _lambda_row(job, ctx, m: str, c: int, metrics, dev: tuple, heldout: tuple, grid, log) -> tuple:
    """D-TRAK / TRAK for generations of class c: λ chosen on the development generations `dev` =
    (images, seeds) by mean AP, then the `heldout` ones scored with it (and with the options' default
    λ, for the record): (row, record)."""
    from ..method.dtrak import options_from, solve_scores
    from .exemplar_checks import choose_lambda
    default = options_from(ctx.options.get(m)).lam
    dz, _, feats = _kernel_inputs(job, ctx, m, dev[0], dev[1], c, log)
    grid = [float(x) for x in grid]
    pick = choose_lambda(grid, [[metrics(solve_scores(feats, z, lam)) for z in dz] for lam in grid])
    hz, secs, _ = _kernel_inputs(job, ctx, m, heldout[0], heldout[1], c, log)
    per = [metrics(solve_scores(feats, z, pick["chosen"])) for z in hz]
    at_default = row([metrics(solve_scores(feats, z, default)) for z in hz], secs)
    log(f"  {m}: λ chosen on {len(dev[1])} development generations: {pick['chosen']:g} "
        f"(mean ‖φ‖² {feats.kernel_scale():.3g}; default {default:g})")
    keep = ("recall_at_10", "recall_at_10_ci95", "mean_rank", "mean_rank_ci95", "ap", "ap_ci95", "same_label_top10")
    return (dict(row(per, secs), lam=pick["chosen"]),
            dict(pick, default=default, kernel_scale=feats.kernel_scale(),
                 heldout_at_default={k: at_default[k] for k in keep}))


def _plain_row(job, ctx, m: str, c: int, metrics, images, seeds, log) -> dict:
    """Any method through baselines.scores, per generation, scores cached in exemplars/scores/<m>/."""
    from ..method import baselines
    from ..sources.data import QueryImage, to_model_range
    from .plan import settings_key
    per, secs = [], []
    for j, img in enumerate(images):
        key = cache_key(kind="exemplar_scores", method=m, model=ctx.model.fingerprint(), data=ctx.data.fingerprint(),
                        settings=settings_key(job.cfg.mucs_settings()) if m.startswith("mucs") else None,
                        options=job.cfg.resolved_options(m), seed=seeds[j])
        path = os.path.join(job.work, "exemplars", "scores", m, f"gen{j:03d}-{key[:16]}{CACHE_EXT}")
        got = load_arrays(path, key)
        if got is None:
            t0 = time.perf_counter()
            sc = baselines.scores(m, ctx, QueryImage(to_model_range(img), []), c, query_id=10_000 + j)
            got = dict(scores=np.asarray(sc, np.float64), seconds=np.array(time.perf_counter() - t0))
            save_arrays(path, key, **got)
            log(f"  {m} generation {j}: {float(got['seconds']):.1f} s")
        per.append(metrics(got["scores"]))
        secs.append(float(got["seconds"]))
    return row(per, secs, baselines.components(m))


def run(job, methods, ec: ExemplarConfig, log=print, on_method=None) -> dict:
    """The whole benchmark in this process; every artefact cached in the work folder's exemplars/."""
    from ..method import baselines
    from ..method.unlearn import top_k
    from ..sources.data import load_dataset
    from ..sources.models import load_model
    from .exemplar_checks import resemblance
    ec = ec.validate()
    t_start = time.perf_counter()
    c = ec.held_out_class
    cand_path, removed, E = candidates(job, ec)
    base = base_model(job, ec, removed)
    log(f"[{time.strftime('%H:%M:%S')}] base model ({ec.design}): {base['path']}")
    cand = load_dataset(cand_path)
    ft_dir = finetuned_dir(job, ec, base, cand)
    finetune(base["path"], cand, E, ec, ft_dir)
    model = load_model(ft_dir, "cpu")
    seeds = [ec.gen_seed + j for j in range(ec.generations)]
    dev_seeds = [ec.dev_seed + j for j in range(ec.dev_generations)]
    images = generations(job, model, c, seeds)
    dev_images = generations(job, model, c, dev_seeds) if dev_seeds else None
    log(f"[{time.strftime('%H:%M:%S')}] fine-tuned model {ft_dir}; {len(images)} generations of class {c}"
        + (f" (+ {len(dev_seeds)} development)" if dev_seeds else ""))
    others = cand.images[others_of(cand, E, c)]
    looks = dict(heldout=resemblance(images, cand.images[-E:], others))
    if dev_images is not None:
        looks["development"] = resemblance(dev_images, cand.images[-E:], others)
    ctx = baselines.Context(model=model, data=cand, settings=job.cfg.mucs_settings(),
                            cache_dir=os.path.join(job.work, "cache"), seed=0,
                            options={k: dict(v) for k, v in job.cfg.method_options.items()})
    ctx._attributor = None
    positives = np.arange(len(cand) - E, len(cand))
    labels = np.asarray(cand.labels)    # candidates() refuses an unlabelled set
    out: dict = {}
    lambdas: dict = {}

    def metrics(scores):
        """The ranking metrics, and the share of the top 10 labelled c (how much the label drives it)."""
        top = top_k(np.asarray(scores, np.float64), 10)
        return dict(ranking_metrics(scores, positives), same_label_top10=float(np.mean(labels[top] == c)))
    for m in methods:
        if m in ("dtrak", "trak") and ec.lambda_grid:
            out[m], lambdas[m] = _lambda_row(job, ctx, m, c, metrics, (dev_images, dev_seeds), (images, seeds),
                                             ec.lambda_grid, log)
        else:
            out[m] = _plain_row(job, ctx, m, c, metrics, images, seeds, log)
        if on_method is not None:       # the table so far, after each method
            on_method(summary(job, [x for x in methods if x in out], ec, cand, E, removed, out, ft_dir, base,
                              t_start, looks, lambdas, seeds, dev_seeds))
    return summary(job, methods, ec, cand, E, removed, out, ft_dir, base, t_start, looks, lambdas, seeds, dev_seeds)


def cmd_exemplars(a, method_options: Optional[dict] = None) -> None:
    """`mucs evaluate --protocol exemplars` (every option checked before anything is written)."""
    from ..defaults import DEFAULT_DATA
    from .config import preset
    from .plan import make_job
    from .report import check_out, write_json
    cfg = preset(a.preset, data=a.data or DEFAULT_DATA, n_train=a.n_train, train_steps=a.train_steps,
                 method_options=method_options).validate()
    over: dict = {} if a.targets is None else dict(generations=a.targets)
    if getattr(a, "exemplar_class", None) is not None:
        over["held_out_class"] = a.exemplar_class
    if getattr(a, "lambda_grid", None) is not None:
        try:
            over["lambda_grid"] = tuple(float(x) for x in a.lambda_grid.split(",") if x.strip())
        except ValueError:
            raise MucsError(f"--lambda-grid takes comma-separated numbers, got {a.lambda_grid!r}") from None
    ec = config_for(getattr(a, "exemplar_design", None) or "removed-class", **over)
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
    result = run(job, methods, ec, on_method=lambda r: write_json(out, r))
    write_json(out, result)
    print(table(result))
    print(f"wrote {out}")
