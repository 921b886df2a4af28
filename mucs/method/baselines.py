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
- ``a+b+...``: rank-averaged ensemble of any registered methods (e.g. ``mucs+pixel_nn``).
"""
import hashlib
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
    _attributor: object = None
    _pixels: object = None
    _features: object = None

    def attributor(self):
        if self._attributor is None:
            from .attribute import Attributor
            self._attributor = Attributor(self.model, self.data, self.settings, self.cache_dir)
            # variants that differ only in scoring share one unlearning per query (L_u kept on disk)
            self._attributor.cache_unlearned = self.cache_dir is not None
        return self._attributor

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
        res = ctx.attributor().attribute(query, label, settings=s)
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


REGISTRY: Dict[str, Callable] = {name: _mucs_variant(ch) for name, ch in ABLATIONS.items()}
REGISTRY.update(random=_random, pixel_nn=_pixel_nn, feature_nn=_feature_nn)


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
