"""Warnings about a run that a reader should see next to its top-k: tied top scores, same-class
scores that saturate, unlearning that hit its step cap. Shown by the app and printed by the CLI."""
from typing import Optional

import numpy as np


def tie_stats(scores: np.ndarray, top, labels: Optional[np.ndarray] = None, query_label=None) -> dict:
    """Distinct top-k scores at 4 decimals, and the share of the query class's items whose score is
    within 5 % of the top score (1.0 means the whole class scores like the best item)."""
    scores = np.asarray(scores, np.float64)
    top = np.asarray(top, int)
    out: dict = dict(k=int(len(top)), distinct_top=int(len(set(np.round(scores[top], 4)))) if len(top) else 0)
    if len(top) and labels is not None and query_label is not None:
        same = np.asarray(labels) == int(query_label)
        best = float(scores[top[0]])
        if same.any():
            out["same_class_within_5pct"] = float(np.mean(scores[same] >= best - 0.05 * abs(best)))
    return out


def warnings(scores: np.ndarray, top, labels=None, query_label=None, converged: bool = True,
             steps: Optional[int] = None) -> list:
    """Plain-language warnings (empty when the run looks healthy)."""
    st = tie_stats(scores, top, labels, query_label)
    out = []
    k = st["k"]
    if k >= 2 and st["distinct_top"] < max(2, int(np.ceil(0.8 * k))):
        out.append(f"The top-{k} scores are nearly tied: only {st['distinct_top']} distinct values at 4 decimals, "
                   "so their order means little.")
    frac = st.get("same_class_within_5pct")
    if frac is not None and frac >= 0.6:
        out.append(f"Same-class scores saturate: {frac:.0%} of the query class's training images score within 5 % of "
                   "the top score, so this run mostly says 'same class'; the ranking inside the class is weak.")
    if not converged:
        out.append(f"Unlearning hit its step cap after {steps} steps before the query was forgotten; raise the cap "
                   "(or the lr) for scores the method stands behind.")
    return out
