"""Overlap of influential images across queries: |A ∩ B| / min(|A|, |B|), its pairwise matrix,
what random top-k sets would give, and the images that recur most; for a collection of G top-k
sets, how many distinct images they cover (against random sets), how concentrated the top-k slots
are (top 1 % / 10 % share, Gini), overlaps within and across groups, a clustering order, a 2-D map
(classical MDS) and the agreement of several methods over the same queries."""
import math
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


# --- a collection of G top-k sets: coverage, concentration, groups, structure ---------------------------
def counts(sets: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """(n_items,) in how many of the sets each training item is (an item counts once per set)."""
    c = np.zeros(int(n_items), np.int64)
    for s in sets:
        idx = np.unique(np.asarray(list(s), np.int64))
        c[idx] += 1
    return c


def coverage_curve(sets: Sequence[Sequence[int]]) -> np.ndarray:
    """(G,) how many distinct items the first g sets cover together, g = 1..G (in the given order)."""
    seen: set = set()
    out = []
    for s in sets:
        seen.update(int(i) for i in s)
        out.append(len(seen))
    return np.asarray(out, np.int64)


def expected_random_coverage(n_items: int, sizes: Sequence[int]) -> np.ndarray:
    """(G,) the expected number of distinct items covered by the first g of G independent uniformly
    random sets of the given sizes: an item escapes a set of size k with probability 1 − k/N, so
    E[covered by g sets] = N·(1 − Π_{h≤g} (1 − k_h/N))."""
    n = float(n_items)
    miss = np.cumprod([1.0 - k / n for k in sizes])
    return n * (1.0 - miss)


def random_sets(n_items: int, sizes: Sequence[int], rng) -> list:
    """Independent uniformly random sets (without repeats) of the given sizes from range(n_items)."""
    return [rng.choice(int(n_items), int(k), replace=False) for k in sizes]


def random_coverage(n_items: int, sizes: Sequence[int], draws: int = 200, seed: int = 0) -> np.ndarray:
    """(draws, G) coverage curves of random top-k sets of the given sizes: the random band."""
    rng = np.random.default_rng(seed)
    return np.stack([coverage_curve(random_sets(n_items, sizes, rng)) for _ in range(draws)])


def top_share(c: np.ndarray, share: float) -> float:
    """The fraction of all top-k slots (Σ counts) taken by the ceil(share·N) most frequent items."""
    c = np.asarray(c, float)
    total = c.sum()
    if total <= 0:
        return 0.0
    m = max(1, int(math.ceil(share * len(c) - 1e-9)))
    return float(np.sort(c)[::-1][:m].sum() / total)


def gini(c: np.ndarray) -> float:
    """Gini coefficient of the counts over all N items (0: every item equally often; → 1: all slots
    on one item): Σ_i Σ_j |c_i − c_j| / (2·N²·mean c), computed from the sorted counts."""
    x = np.sort(np.asarray(c, float))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(2.0 * np.sum(i * x) / (n * total) - (n + 1.0) / n)


def concentration(sets: Sequence[Sequence[int]], n_items: int, shares: Sequence[float] = (0.01, 0.1)) -> dict:
    """How concentrated influence is: {'top 1 %': share of slots, 'top 10 %': ..., 'gini': ...}."""
    c = counts(sets, n_items)
    out = {f"top {share * 100:g} %": top_share(c, share) for share in shares}
    out["gini"] = gini(c)
    return out


def random_concentration(n_items: int, sizes: Sequence[int], draws: int = 200, seed: int = 0,
                         shares: Sequence[float] = (0.01, 0.1)) -> dict:
    """{measure: (draws,) values} of `concentration` for random top-k sets of the given sizes."""
    rng = np.random.default_rng(seed)
    rows = [concentration(random_sets(n_items, sizes, rng), n_items, shares) for _ in range(draws)]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


def grouped_overlaps(matrix: np.ndarray, groups: Sequence) -> dict:
    """The pairwise overlaps split by whether the two queries share a group (class or prompt):
    {'within': (n_w,) values, 'across': (n_a,) values}."""
    m = np.asarray(matrix, float)
    within: list = []
    across: list = []
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            (within if groups[i] == groups[j] else across).append(m[i, j])
    return dict(within=np.asarray(within), across=np.asarray(across))


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """An order of the queries that puts similar top-k sets next to each other: the leaves of an
    average-linkage clustering on the distance 1 − overlap (scipy.cluster.hierarchy), optimally
    ordered. Fewer than three queries keep their order."""
    m = np.asarray(matrix, float)
    q = len(m)
    if q < 3:
        return np.arange(q)
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform
    d = np.clip(1.0 - (m + m.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(d, 0.0)
    cond = squareform(d, checks=False)
    z = linkage(cond, method="average")
    return np.asarray(leaves_list(optimal_leaf_ordering(z, cond)), np.int64)


def classical_mds(distance: np.ndarray, dims: int = 2) -> np.ndarray:
    """(Q, dims) coordinates whose Euclidean distances approximate `distance` (classical MDS:
    the top eigenvectors of −½·J·D²·J, scaled by the square roots of their eigenvalues; a
    dimension with no positive eigenvalue is 0). The sign of each axis is fixed so that its largest
    coordinate is positive."""
    d = np.asarray(distance, float)
    q = len(d)
    if q == 0:
        return np.zeros((0, dims))
    j = np.eye(q) - np.ones((q, q)) / q
    b = -0.5 * j @ (d ** 2) @ j
    w, v = np.linalg.eigh((b + b.T) / 2.0)
    order = np.argsort(w)[::-1][:dims]
    out = np.zeros((q, dims))
    for a, k in enumerate(order):
        if w[k] > 1e-12:
            col = v[:, k] * math.sqrt(w[k])
            if col[np.argmax(np.abs(col))] < 0:
                col = -col
            out[:, a] = col
    return out


def agreement(tops: dict, reference: str = "mucs") -> dict:
    """Methods over a collection: `tops` = {method: [top-k set per query]} (same queries, same order).
    Per method: the overlap with the reference method's set for each query, and, per method, how
    often each image is in that method's top-k for a query while no other method has it there
    ({index: queries})."""
    names = list(tops)
    q = len(tops[names[0]]) if names else 0
    if any(len(tops[n]) != q for n in names):
        raise ValueError("every method needs one top-k set per query")
    per_query = {n: np.array([overlap(a, b) for a, b in zip(tops[reference], tops[n])]) for n in names}
    alone: dict = {n: Counter() for n in names}
    for g in range(q):
        sets = {n: set(int(i) for i in tops[n][g]) for n in names}
        for n in names:
            others = set().union(*(sets[m] for m in names if m != n)) if len(names) > 1 else set()
            alone[n].update(sets[n] - others)
    return dict(overlap=per_query, alone={n: dict(c) for n, c in alone.items()})
