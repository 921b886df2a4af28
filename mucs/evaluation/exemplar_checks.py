"""What makes an exemplar-benchmark result readable: the "same label" control's expected metrics
(rank the items labelled like the query first, ties at random), how much the fine-tuned model's
generations resemble the exemplars (is the ground truth real?), and λ chosen on development
generations for D-TRAK / TRAK."""
import numpy as np


def same_label_expectation(n_same: int, positives: int, k: int = 10) -> dict:
    """Expected recall@k, mean rank and AP of ranking the `n_same` items that share the query's label
    first, in random order, when the `positives` exemplars are among them (exact, not sampled).
    AP: E[(1/R) Σ_i rel_i·prec@i] over a random order of n items with R relevant
    = (1/n) Σ_{i=1}^{n} (1/i)·(1 + (i − 1)(R − 1)/(n − 1))."""
    n, R = int(n_same), int(positives)
    if not 1 <= R <= n:
        raise ValueError(f"{R} positives among {n} same-label items")
    i = np.arange(1, n + 1, dtype=np.float64)
    ap = float(np.mean((1 + (i - 1) * (R - 1) / max(n - 1, 1)) / i))
    return dict(recall_at_10=min(k, n) / n, mean_rank=(n + 1) / 2, ap=ap, same_label_items=n)


def resemblance(generations: np.ndarray, exemplars: np.ndarray, others: np.ndarray) -> dict:
    """Per generation, the SSIM (higher = closer) and pixel MSE (lower = closer) of its nearest exemplar
    and of its nearest `others` item (the training items of the exemplars' class that are not
    exemplars, or all other items); the share of generations nearer an exemplar than any other item.
    If a fine-tune is too weak to pull the generations towards the exemplars, the share is near
    E / (E + len(others)) and the exemplars are no ground truth."""
    from .metrics import mse, ssim

    def nearest(g, bag, fn, best):
        vals = fn(np.repeat(g[None], len(bag), 0), bag)
        return float(best(vals))
    out: dict = dict(generations=len(generations), exemplars=len(exemplars), others=len(others))
    for name, fn, best, better in (("ssim", ssim, np.max, np.greater), ("mse", mse, np.min, np.less)):
        ex = np.array([nearest(g, exemplars, fn, best) for g in generations])
        ot = np.array([nearest(g, others, fn, best) for g in generations])
        out[name] = dict(nearest_exemplar_mean=float(ex.mean()), nearest_other_mean=float(ot.mean()),
                         share_nearer_exemplar=float(np.mean(better(ex, ot))),
                         per_generation=[[float(a), float(b)] for a, b in zip(ex, ot)])
    return out


def choose_lambda(grid, dev_metrics: list) -> dict:
    """λ of the grid with the highest mean development AP (ties: the first, i.e. the smaller λ);
    `dev_metrics[i]` is the list of per-generation metric dicts at grid[i]."""
    rows = [dict(lam=float(lam), **{k: float(np.mean([p[k] for p in per])) for k in per[0]})
            for lam, per in zip(grid, dev_metrics)]
    best = max(range(len(rows)), key=lambda i: (rows[i]["ap"], -i))
    return dict(grid=rows, chosen=rows[best]["lam"], criterion="mean development AP (ties: smaller λ)")


def ranking_metrics(scores: np.ndarray, positives: np.ndarray, k: int = 10) -> dict:
    """recall@k, mean rank (1 = best) and average precision of the positives under `scores`."""
    from ..method.unlearn import top_k
    order = top_k(np.asarray(scores, np.float64), len(scores))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    r = np.sort(rank[positives])
    return dict(recall_at_10=float(np.mean(r <= k)), mean_rank=float(r.mean()),
                ap=float(np.mean(np.arange(1, len(r) + 1) / r)))


def boot_ci(values, n_boot=2000, seed=0) -> list:
    v = np.asarray(values, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))
    return [float(x) for x in np.quantile(v[idx].mean(1), [0.025, 0.975])]
