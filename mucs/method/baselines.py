"""Attribution methods with MUCS's interface: a score for every training item (higher = more
influential), so every view, top-k and metric works on any of them.

Registry (name -> function(ctx, query, label, query_id) -> (N,) scores):
- ``mucs``: the method (ctx.settings);
- ``mucs_plain_ga``: plain gradient ascent (no retain term, no L_null bound);
- ``mucs_unnormalised``: score = mean_k (L_u − L_o);
- ``mucs_fresh_noise``: fresh noise for the unlearned losses instead of the consistent set;
- ``mucs_lognormal`` / ``mucs_uniform`` / ``mucs_range`` / ``mucs_edm``: unlearning and L_null noise
  log-normal in σ (the default) / uniform in t (the DDPM recipe) / uniform over the steps in the
  sampler's σ range / log-normal with EDM's loss weighting;
- ``mucs_fragile`` / ``mucs_unnormalised_fragile``: minus each item's mean skew over one generated
  reference query per other class (the fragile-item correction);
- ``mucs_frozen_emb``: unlearning with the class/time embedding pathway frozen as well as the biases;
- ``mucs_tol02``: unlearning to a tighter tolerance, τ = 0.02;
- ``random``: uniform random scores (seeded by ctx.seed and the query id);
- ``pixel_nn`` / ``feature_nn``: −squared L2 distance to the query in pixel space / in the model's
  own mid-block features (faiss, no pretrained network);
- ``dtrak`` / ``trak``: D-TRAK (gradient of the mean squared denoiser output) and TRAK (gradient of the
  diffusion loss), projected, with the (ΦᵀΦ + λI)⁻¹ kernel (mucs.method.dtrak; options ctx.options[name]);
- ``abu``: attribution by unlearning, one Fisher-preconditioned ascent step, scored by the loss increase
  (mucs.method.abu; options ctx.options["abu"]);
- ``a+b+...``: rank-averaged ensemble of any registered methods (e.g. ``mucs+pixel_nn``).

`attribution(name, ctx, ...)` runs any of them into an `Attribution` (the one run format).
"""
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..errors import MucsError
from ..settings import Settings

# ablations of MUCS that the paper studies, as Settings changes
ABLATIONS: Dict[str, dict] = {
    "mucs": {},
    "mucs_plain_ga": dict(bounded=False, retain=False),
    "mucs_unnormalised": dict(normalised=False),
    "mucs_fresh_noise": dict(consistent_noise=False),
    # the reference's EDM choices (docs/method.md, "Reference details"), measured rather than assumed
    "mucs_lognormal": dict(train_noise="lognormal"),
    "mucs_uniform": dict(train_noise="uniform"),   # the DDPM recipe (uniform t), the default before 2026-11-30
    "mucs_range": dict(train_noise="uniform_range"),
    "mucs_edm": dict(train_noise="lognormal", loss_weighting="edm"),
    # beyond the paper: subtract each item's mean skew over generated references of other classes
    "mucs_fragile": dict(fragile_refs=1),
    "mucs_unnormalised_fragile": dict(fragile_refs=1, normalised=False),
    # issue 9's remaining options: keep the class/time embedding pathway fixed during unlearning (so the
    # ascent cannot raise the loss of a whole class through the label), and a tighter tolerance τ
    "mucs_frozen_emb": dict(frozen=("bias", "time_embedding", "class_embedding", "time_emb_proj")),
    "mucs_tol02": dict(tol=0.02),
    "mucs_lam05": dict(lam=0.5),   # λ = 0.5: a stronger forget term against the retain term (fewer steps)
    # issue 10: screened scoring (every item on 2 levels, the 50 most skewed on all K), read off the cached
    # full L_u of `mucs` when there is one (the same unlearned model and noise; see Attributor.unlearned)
    "mucs_screened": dict(screen_noises=2, screen_keep=50),
}


@dataclass
class Context:
    """What the methods need, with lazily built, shared pieces (attributor, faiss indexes) and a
    memo of scores per (method, query id) so that ensembles reuse their components' scores."""
    model: Any                 # a DiffusionModel
    data: Any                  # a TrainingSet
    settings: Settings = field(default_factory=Settings)
    cache_dir: Optional[str] = None
    seed: int = 0
    memo: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)   # per query: unlearning steps and convergence of the last MUCS run
    options: dict = field(default_factory=dict)   # per method name: D-TRAK / TRAK / AbU options (a dict)
    _attributor: object = None
    _tda: dict = field(default_factory=dict)      # D-TRAK features per (output, options), the AbU object
    _pixels: object = None
    _features: object = None

    def attributor(self):
        if self._attributor is None:
            from .attribute import Attributor
            self._attributor = Attributor(self.model, self.data, self.settings, self.cache_dir)
            # variants that differ only in scoring share one unlearning per query (L_u kept on disk)
            self._attributor.cache_unlearned = self.cache_dir is not None
        return self._attributor

    def folder(self) -> str:
        from ..cache import default_cache_dir
        return self.cache_dir or default_cache_dir()

    def dtrak_features(self, output: str, o, report=None):
        """Φ for `output` and options `o` (computed once per context, cached on disk)."""
        from .dtrak import training_features
        key = ("dtrak", output, tuple(sorted(o.key().items())))
        if key not in self._tda:
            self._tda[key] = training_features(self.model, self.data, output, o, self.folder(), report)
        return self._tda[key]

    def abu(self, o):
        from .abu import Abu
        key = ("abu", o)
        if key not in self._tda:
            self._tda[key] = Abu(self.model, self.data, self.folder(), o)
        return self._tda[key]

    def pixel_index(self):
        if self._pixels is None:
            from .neighbours import NeighbourIndex
            self._pixels = NeighbourIndex.pixels(self.data)
        return self._pixels

    def feature_index(self):
        if self._features is None:
            from .neighbours import NeighbourIndex
            self._features = NeighbourIndex.features(self.model, self.data)
        return self._features


def _mucs_variant(changes: dict) -> Callable:
    def fn(ctx: Context, query, label, query_id=0) -> np.ndarray:
        s = ctx.settings.replace(**changes) if changes else ctx.settings
        res = ctx.attributor().attribute(query, label, settings=s, prompt=getattr(query, "prompt", None))
        ctx.info[("mucs", int(query_id))] = dict(steps=res.steps, converged=res.converged)
        return np.asarray(res.scores, np.float64)
    return fn


def random_scores(n: int, seed: int = 0, query_id: int = 0) -> np.ndarray:
    """Uniform random scores for n items, reproducible from (seed, query id)."""
    return np.random.default_rng([int(seed), int(query_id)]).random(n)


def _random(ctx: Context, query, label, query_id=0) -> np.ndarray:
    return random_scores(len(ctx.data), ctx.seed, query_id)


def _pixel_nn(ctx: Context, query, label, query_id=0) -> np.ndarray:
    from .neighbours import pixel_features
    return ctx.pixel_index().scores(pixel_features(query.x[None]))


def _feature_nn(ctx: Context, query, label, query_id=0) -> np.ndarray:
    from .neighbours import model_features
    m = ctx.model
    cond = m.condition(label if m.conditioning == "class" else None, getattr(query, "prompt", None))
    return ctx.feature_index().scores(model_features(m, m.encode_images(query.x[None]), cond))


GRADIENT_METHODS = ("dtrak", "trak", "abu")   # call the UNet2DModel directly: pixel models only


def unsupported(name: str, model) -> Optional[str]:
    """Why method `name` (or an ensemble holding it) cannot score `model`, None when it can. D-TRAK, TRAK and
    AbU differentiate a pixel UNet2DModel (unconditional or class-conditional) directly; latent, text-conditional,
    DiT/PixArt and LoRA models are refused rather than attributed with the wrong inputs."""
    parts = [p for p in components(name) if p in GRADIENT_METHODS]
    if not parts or (model.family.name == "unet2d" and not model.latent and not model.lora):
        return None
    return (f"{parts[0]}: D-TRAK, TRAK and AbU support pixel UNet2DModel models (unconditional or class-conditional) "
            f"only; this model is {model.describe()}")


def check_supported(name: str, model) -> None:
    why = unsupported(name, model)
    if why:
        raise MucsError(why)


def _dtrak_variant(name: str) -> Callable:
    def fn(ctx: Context, query, label, query_id=0, report=None) -> np.ndarray:
        from .dtrak import OUTPUTS, options_from, query_scores
        check_supported(name, ctx.model)
        o = options_from(ctx.options.get(name))
        t0 = time.perf_counter()
        feats = ctx.dtrak_features(OUTPUTS[name], o, report)
        t1 = time.perf_counter()
        s = query_scores(ctx.model, feats, query.x, label, o.lam)
        ctx.info[(name, int(query_id))] = dict(
            stage_times=dict(features=t1 - t0, query=time.perf_counter() - t1),
            features_seconds=feats.seconds, features_cached=feats.cached, kernel_scale=feats.kernel_scale(),
            backprojection=feats.back is not None, options=dict(o.__dict__), output=OUTPUTS[name])
        return s
    return fn


def _abu(ctx: Context, query, label, query_id=0, report=None) -> np.ndarray:
    from .abu import abu_options
    check_supported("abu", ctx.model)
    o = abu_options(ctx.options.get("abu"))
    s, rec = ctx.abu(o).scores(query.x, label, report)
    ctx.info[("abu", int(query_id))] = dict(rec, options=dict(o.__dict__))
    return s


REGISTRY: Dict[str, Callable] = {name: _mucs_variant(ch) for name, ch in ABLATIONS.items()}
REGISTRY.update(random=_random, pixel_nn=_pixel_nn, feature_nn=_feature_nn, dtrak=_dtrak_variant("dtrak"),
                trak=_dtrak_variant("trak"), abu=_abu)
# D-TRAK/TRAK/AbU options for a 2-core CPU, used by the evaluation presets and the app's side-by-side view:
# d = 4096 (the authors' quickstart) instead of 32768, AbU's step from 80 × 50 draws instead of 80 × 625
CPU_OPTIONS = {"dtrak": {"dim": 4096}, "trak": {"dim": 4096}, "abu": {"accum": 50}}
# one line per method, for the app, the CLI help and the report
DESCRIPTIONS = {
    "mucs": "MUCS: unlearn the query from a copy of the model (bounded ascent, retain term), rank by the "
            "normalised loss rise on fixed noise",
    "dtrak": "D-TRAK (Zheng et al., ICLR 2024): projected gradients of the mean squared denoiser output, "
             "TRAK kernel (ΦᵀΦ + λI)⁻¹",
    "trak": "TRAK for diffusion: D-TRAK's recipe with the gradient of the diffusion loss",
    "abu": "AbU (Wang et al., NeurIPS 2024): one Fisher-preconditioned ascent step on the query, rank by "
           "the loss increase",
    "pixel_nn": "pixel NN: nearest training images in pixel space",
    "feature_nn": "feature NN: nearest training images in the model's own mid-block features",
    "random": "random scores",
}


def description(name: str) -> str:
    """One line saying what the method (or ensemble) is."""
    parts = components(name)
    if len(parts) > 1:
        return "rank average of " + " and ".join(parts)
    return DESCRIPTIONS.get(name) or (f"MUCS ablation {name}: {ABLATIONS[name]}" if name in ABLATIONS else name)


def ranks(scores: np.ndarray) -> np.ndarray:
    """Normalised ranks in [0, 1] (1 = highest score), ties sharing their average rank."""
    from scipy.stats import rankdata
    s = np.asarray(scores, np.float64)
    n = len(s)
    if n <= 1:
        return np.ones(n)
    return (rankdata(s, method="average") - 1) / (n - 1)


def rank_average(score_lists) -> np.ndarray:
    """Rank-averaged ensemble: the mean of the components' normalised ranks."""
    score_lists = list(score_lists)
    if not score_lists:
        raise ValueError("an ensemble needs at least one component")
    n = len(score_lists[0])
    if any(len(s) != n for s in score_lists):
        raise ValueError("ensemble components must score the same number of items")
    return np.mean([ranks(s) for s in score_lists], axis=0)


def components(name: str) -> list:
    """The registered methods a name stands for ('a+b' -> ['a', 'b']); checks that they exist."""
    parts = [p.strip() for p in name.split("+")]
    for p in parts:
        if p not in REGISTRY:
            raise MucsError(f"unknown attribution method {p!r}; known: {', '.join(sorted(REGISTRY))} "
                            f"(and ensembles 'a+b' of them)")
    if len(parts) > 1 and len(set(parts)) != len(parts):
        raise MucsError(f"ensemble {name!r} repeats a component")
    return parts


def method_names() -> list:
    return sorted(REGISTRY)


def scores(name: str, ctx: Context, query, label=None, query_id: Optional[int] = None) -> np.ndarray:
    """Scores for every training item of `ctx.data` by method `name`, memoised per query: by
    `query_id` when given, else by the query's pixels and label (so two queries without ids never
    share scores)."""
    parts = components(name)
    if query_id is None:
        digest = hashlib.sha256(query.x.detach().cpu().float().numpy().tobytes() + repr(label).encode()).hexdigest()
        query_id = int(digest[:12], 16)       # also seeds `random` per query
    if len(parts) > 1:
        return rank_average([scores(p, ctx, query, label, query_id) for p in parts])
    key = (name, int(query_id))
    if key not in ctx.memo:
        ctx.memo[key] = np.asarray(REGISTRY[name](ctx, query, label, query_id), np.float64)
    return ctx.memo[key]


def attribution(name: str, ctx: Context, query, label=None, source: str = "", top_k: Optional[int] = None,
                progress=None, cancel=None):
    """Any method's result as an `Attribution`, the one run format (scores.csv, result.json, ...), so the
    app's history reopens it. MUCS (and its ablations) run the full pipeline; for the other methods the
    losses are AbU's own (L_before, L_after) or absent (NaN: D-TRAK, TRAK, NN), there is no L_null and no
    unlearning curve, and result.json records the method, its options and its stage times."""
    import torch

    from .. import __version__
    from ..progress import Reporter
    from ..sources.data import to_uint8
    from .attribute import Attribution
    from .unlearn import top_k as best
    parts = components(name)
    check_supported(name, ctx.model)
    s = ctx.settings.validate()
    label = ctx.model.check_label(label)
    prompt = ctx.model.check_prompt(getattr(query, "prompt", None))
    if len(parts) == 1 and name in ABLATIONS:
        att = ctx.attributor().attribute(query, label, settings=s.replace(**ABLATIONS[name]) if ABLATIONS[name] else s,
                                         progress=progress, cancel=cancel, source=source,
                                         prompt=getattr(query, "prompt", None))
        att.info.update(method=name, method_description=description(name))
        return att
    report = Reporter(progress, cancel)
    t0 = time.perf_counter()
    qid = int(hashlib.sha256(query.x.detach().cpu().float().numpy().tobytes() + repr(label).encode()).hexdigest()[:12], 16)
    if len(parts) == 1:
        sc = np.asarray(REGISTRY[name](ctx, query, label, qid, report=report) if name in ("dtrak", "trak", "abu")
                        else REGISTRY[name](ctx, query, label, qid), np.float64)
    else:
        sc = scores(name, ctx, query, label, qid)
    if not np.isfinite(sc).all():
        raise MucsError(f"{name}: the scores are not finite")
    rec = dict(ctx.info.get((name, qid), {}))
    times = dict(rec.pop("stage_times", {}))
    times["total"] = time.perf_counter() - t0
    n = len(sc)
    nan = np.full(n, np.nan)
    lo, lu = rec.pop("loss_original", nan), rec.pop("loss_unlearned", nan)
    k = min(int(top_k or s.top_k), n)
    report("done", 1.0)
    return Attribution(
        scores=sc, top=best(sc, k), loss_original=np.asarray(lo, np.float64), loss_unlearned=np.asarray(lu, np.float64),
        loss_null=None, steps=int(rec.get("options", {}).get("steps", 0)) if name == "abu" else 0, converged=True,
        curve=[], stage_times=times, settings=dict(s.to_dict(), top_k=k),
        query=dict(label=label, class_name=ctx.data.class_name(label) if label is not None else None,
                   conversions=list(query.conversions), source=source, **({} if prompt is None else dict(prompt=prompt))),
        query_image=to_uint8(query.x), labels=ctx.data.labels,
        info=dict(method=name, method_description=description(name), method_record=rec, model=ctx.model.path,
                  model_fingerprint=ctx.model.fingerprint(), data=ctx.data.source,
                  data_fingerprint=ctx.data.fingerprint(), num_train=n, device=str(ctx.model.device),
                  torch_threads=torch.get_num_threads(), mucs_version=__version__))
