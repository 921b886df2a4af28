"""Overlap of influential images across queries: |A ∩ B| / min(|A|, |B|), its pairwise matrix,
what random top-k sets would give, and the images that recur most."""
from collections import Counter
from typing import Sequence

import numpy as np


def overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """|A ∩ B| / min(|A|, |B|) of two top-k sets (0 when either is empty)."""
    sa, sb = set(int(i) for i in a), set(int(i) for i in b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / min(len(sa), len(sb))


def overlap_matrix(sets: Sequence[Sequence[int]]) -> np.ndarray:
    """(Q, Q) symmetric matrix of pairwise overlaps, 1 on the diagonal."""
    q = len(sets)
    m = np.eye(q)
    for i in range(q):
        for j in range(i + 1, q):
            m[i, j] = m[j, i] = overlap(sets[i], sets[j])
    return m


def pairwise_overlaps(sets: Sequence[Sequence[int]]) -> np.ndarray:
    """The overlaps of all unordered pairs (upper triangle of overlap_matrix)."""
    m = overlap_matrix(sets)
    return m[np.triu_indices(len(sets), 1)]


def mean_pairwise_overlap(sets: Sequence[Sequence[int]]) -> float:
    """The paper's summary: mean overlap over all pairs of queries (nan with fewer than two)."""
    p = pairwise_overlaps(sets)
    return float(p.mean()) if len(p) else float("nan")


def random_overlaps(n_items: int, sizes: Sequence[int], pairs: int = 2000, seed: int = 0) -> np.ndarray:
    """Overlaps of random top-k sets with the given sizes, drawn from n_items: the null distribution."""
    rng = np.random.default_rng(seed)
    sizes = list(sizes)
    out = np.empty(pairs)
    for p in range(pairs):
        i, j = rng.choice(len(sizes), 2, replace=len(sizes) < 2)
        out[p] = overlap(rng.choice(n_items, sizes[i], replace=False), rng.choice(n_items, sizes[j], replace=False))
    return out


def between_methods(sets_a: Sequence[Sequence[int]], sets_b: Sequence[Sequence[int]]) -> float:
    """Mean overlap between two methods' top-k sets for the same queries (paired by position)."""
    if len(sets_a) != len(sets_b):
        raise ValueError("both methods must have one top-k set per query")
    return float(np.mean([overlap(a, b) for a, b in zip(sets_a, sets_b)])) if sets_a else float("nan")


def recurring(sets: Sequence[Sequence[int]], n: int = 10, min_count: int = 2) -> list:
    """The training indices found in at least `min_count` (default two) of the top-k sets:
    [(index, count), ...], most first, then by index. An image in one set only does not recur."""
    c = Counter(int(i) for s in sets for i in set(s))
    return sorted(((i, k) for i, k in c.items() if k >= min_count), key=lambda kv: (-kv[1], kv[0]))[:n]


def shared_counts(sets: Sequence[Sequence[int]]) -> dict:
    """{index: number of sets it is in} for every index found in two or more sets."""
    c = Counter(int(i) for s in sets for i in set(s))
    return {i: k for i, k in c.items() if k >= 2}
