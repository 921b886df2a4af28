"""Similarity of an item before and after retraining, and the counterfactual summaries.

Similarities (one value per item, computed between the image model A generated and the image
the retrained model generates from the same seed and class):
- ``ssim``: structural similarity (Gaussian window, σ = 1.5, implemented here in torch);
- ``mse``: pixel mean squared error in [0, 1] units — a *distance* (lower = more similar);
- ``feature_cosine``: cosine of model A's own mid-block features of the two images.

Summaries (docs/method.md, "How attribution quality is judged"):
- ``auc``: P(similarity after random removal > similarity after the method's removal), ties
  counting 1/2 (scipy's Mann–Whitney U over n_random·n_method); for a distance the inequality is
  reversed, so 0.5 = no better than random and 1 = the method always changes the item more than
  random removal does;
- ``mean_relative_change``: 100·(mean(sim_method) / median(sim_random) − 1) %, the metric's own
  value (negative for a similarity when the method changes items more; positive for a distance).
"""
from typing import Optional, Sequence

import numpy as np
import torch

# metric name -> True when higher values mean "more similar"
HIGHER_IS_SIMILAR = {"ssim": True, "mse": False, "feature_cosine": True}


def _as_float01(images) -> torch.Tensor:
    """uint8 (n, H, W, C) or (H, W, C) -> float (n, C, H, W) in [0, 1]."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"expected (n, H, W, C) images, got shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a)).double()
    if a.dtype == np.uint8:
        t = t / 255.0
    return t.permute(0, 3, 1, 2)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a, b, window: int = 7, sigma: float = 1.5, data_range: float = 1.0) -> np.ndarray:
    """SSIM per image pair (n,), averaged over the valid window positions and channels.

    `a`, `b`: uint8 (n, H, W, C) (scaled to [0, 1]) or float arrays already in [0, 1].
    The window shrinks (odd size) when the images are smaller than it."""
    # Ours, not skimage/torchmetrics: both filter with 11 taps at σ 1.5; at 16×16 the nearest is up to 0.031 off
    x, y = _as_float01(a), _as_float01(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
    n, c, h, w = x.shape
    size = min(window, h, w)
    size = size if size % 2 == 1 else size - 1
    k = _gaussian_window(size, sigma).expand(c, 1, size, size).contiguous()
    f = lambda t: torch.nn.functional.conv2d(t, k, groups=c)  # noqa: E731  (valid positions only)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = f(x), f(y)
    sxx = f(x * x) - mx * mx
    syy = f(y * y) - my * my
    sxy = f(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.flatten(1).mean(1).numpy()


def mse(a, b) -> np.ndarray:
    """Pixel mean squared error per image pair (n,), in [0, 1] units (a distance)."""
    x, y = _as_float01(a), _as_float01(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
    return ((x - y) ** 2).flatten(1).mean(1).numpy()


def cosine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, D) arrays."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    num = (u * v).sum(1)
    den = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    return num / np.maximum(den, 1e-12)


def feature_cosine(model, a, b, labels: Optional[Sequence[int]] = None,
                   timestep: Optional[int] = None) -> np.ndarray:
    """Cosine of `model`'s mid-block features (mucs.method.neighbours.model_features) of two image sets."""
    from ..sources.data import to_model_range
    from ..method.neighbours import model_features
    y = None if labels is None or model.num_classes is None else model.label_cond(list(labels))
    fa = model_features(model, model.encode_images(to_model_range(np.asarray(a))), y, timestep)
    fb = model_features(model, model.encode_images(to_model_range(np.asarray(b))), y, timestep)
    return cosine(fa, fb)


def similarities(before, after, model=None, labels=None) -> dict:
    """All available metrics between `before` and `after` uint8 image sets: {metric: (n,)}."""
    out = {"ssim": ssim(before, after), "mse": mse(before, after)}
    if model is not None:
        out["feature_cosine"] = feature_cosine(model, before, after, labels)
    return out


def auc(sim_random, sim_method, higher_is_similar: bool = True) -> float:
    """P(sim_random > sim_method) over all (random, method) pairs, ties counted 1/2.

    For a distance (higher_is_similar=False) it is P(dist_random < dist_method): in both cases
    0.5 means "no better than random removal", 1 means "always changes the item more"."""
    r = np.asarray(sim_random, np.float64).ravel()
    m = np.asarray(sim_method, np.float64).ravel()
    if len(r) == 0 or len(m) == 0:
        return float("nan")
    return float(_auc_rows(r[None], m[None], higher_is_similar)[0])


def _auc_rows(r: np.ndarray, m: np.ndarray, higher_is_similar: bool) -> np.ndarray:
    """The AUC of every row pair of (B, n_r) and (B, n_m): the Mann–Whitney U of the random side
    over n_r·n_m (U counts the pairs r > m, ties 1/2; scipy ranks with ties averaged, exact in float64)."""
    from scipy.stats import mannwhitneyu
    if not higher_is_similar:
        r, m = -r, -m
    u = mannwhitneyu(r, m, alternative="two-sided", method="asymptotic", axis=-1).statistic
    return np.asarray(u, np.float64) / (r.shape[-1] * m.shape[-1])


def mean_relative_change(sim_random, sim_method) -> float:
    """100·(mean(sim_method) / median(sim_random) − 1), in %."""
    r = np.asarray(sim_random, np.float64).ravel()
    m = np.asarray(sim_method, np.float64).ravel()
    if len(r) == 0 or len(m) == 0:
        return float("nan")
    med = float(np.median(r))
    if med == 0:
        return float("nan")
    return float(100.0 * (m.mean() / med - 1.0))


def auc_bootstrap_ci(sim_random, sim_method, higher_is_similar: bool = True, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> tuple:
    """Percentile bootstrap interval of the AUC, resampling the random and the method's items."""
    r = np.asarray(sim_random, np.float64).ravel()
    m = np.asarray(sim_method, np.float64).ravel()
    if len(r) == 0 or len(m) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # Our resampling, not scipy.stats.bootstrap: its draws differ (14 of the 24 published 40-target intervals moved at 2 decimals)
    draws = [(rng.integers(0, len(r), len(r)), rng.integers(0, len(m), len(m))) for _ in range(n_boot)]
    vals = _auc_rows(r[np.stack([i for i, _ in draws])], m[np.stack([j for _, j in draws])], higher_is_similar)
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def summarise(sim_random, sim_method, metric: str) -> dict:
    """{auc, auc_ci95, mean_relative_change, mean, median_random, n} for one method, group and metric."""
    hi = HIGHER_IS_SIMILAR.get(metric, True)
    m = np.asarray(sim_method, np.float64).ravel()
    return dict(auc=auc(sim_random, sim_method, hi), auc_ci95=list(auc_bootstrap_ci(sim_random, sim_method, hi)),
                mean_relative_change=mean_relative_change(sim_random, sim_method),
                mean=float(m.mean()) if len(m) else float("nan"),
                median_random=float(np.median(sim_random)) if len(np.ravel(sim_random)) else float("nan"),
                n=int(len(m)), higher_is_similar=hi)


def per_item_auc(sim_random, sim_method, higher_is_similar: bool = True) -> np.ndarray:
    """For each of the method's items, P(sim_random > its similarity) over the pooled random items
    (ties ½): the items' contributions to the AUC, whose mean is the AUC itself."""
    r = np.sort(np.asarray(sim_random, np.float64).ravel())
    m = np.asarray(sim_method, np.float64).ravel()
    if not higher_is_similar:
        r, m = np.sort(-r), -m
    above = len(r) - np.searchsorted(r, m, side="right")
    ties = np.searchsorted(r, m, side="right") - np.searchsorted(r, m, side="left")
    return (above + 0.5 * ties) / len(r)


def paired_difference(sim_random, sim_a, sim_b, metric: str, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Method a − method b on the same items (targets): the per-item AUC difference (its mean is
    AUC_a − AUC_b) and the similarity difference sim_b − sim_a (positive when a changes the item
    more), each with a percentile bootstrap interval over the items, and how many items favour a."""
    hi = HIGHER_IS_SIMILAR.get(metric, True)
    da = per_item_auc(sim_random, sim_a, hi) - per_item_auc(sim_random, sim_b, hi)
    ds = (np.asarray(sim_b, np.float64) - np.asarray(sim_a, np.float64)) * (1 if hi else -1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(da), (n_boot, len(da)))
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    return dict(auc_difference=float(da.mean()), auc_difference_ci95=[float(v) for v in np.quantile(da[idx].mean(1), q)],
                similarity_drop_difference=float(ds.mean()),
                similarity_drop_difference_ci95=[float(v) for v in np.quantile(ds[idx].mean(1), q)],
                items_favouring_a=int((da > 0).sum()), items_favouring_b=int((da < 0).sum()), n=int(len(da)))
