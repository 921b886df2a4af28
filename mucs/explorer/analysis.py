"""The overlap analyses of a collection (G generations with top-k sets), as numbers: distinct
coverage against random top-k sets, the recurring images, concentration (top 1 % / 10 % share,
Gini) against random, overlap within and across classes, the pairwise matrix in clustering order,
a 2-D map of the generations and the agreement of methods over the collection. Each analysis also
comes as rows for a CSV and as a dict for JSON (`tables`); the figures are in collection_figures."""
import csv
import io
from typing import Optional, Sequence

import numpy as np

from ..method import overlap as ov

DRAWS = 200            # random top-k collections drawn for each band
MAX_HEATMAP = 60       # the pairwise heatmap shows at most this many runs (the first ones in clustering order)
RECURRING = 24         # images listed as recurring
# The methods a collection's agreement figure compares (the app and `mucs report COLLECTION`). Not D-TRAK
# or AbU: a collection would run AbU's unlearning for every generation and D-TRAK's one-off gradient pass
# (minutes each on a CPU); a run's methods-side-by-side view shows them one query at a time.
AGREEMENT_METHODS = ("mucs", "pixel_nn", "feature_nn", "mucs+pixel_nn")


def band(values: np.ndarray, lo: float = 2.5, hi: float = 97.5) -> tuple:
    """(mean, low, high) of draws along axis 0: the mean and the central 95 % of random draws."""
    v = np.asarray(values, float)
    return v.mean(0), np.percentile(v, lo, axis=0), np.percentile(v, hi, axis=0)


def analyse(run_ids: Sequence[str], atts: Sequence, names: Sequence[str], n_items: int, train_labels=None,
            class_names=None, draws: int = DRAWS, seed: int = 0) -> dict:
    """Every analysis of point 2 for the runs `atts` (their top-k sets, query classes) over a
    training set of `n_items` images with labels `train_labels`."""
    sets = [[int(i) for i in a.top] for a in atts]
    sizes = [len(s) for s in sets]
    g = len(sets)
    # a query's group: its class, or a text model's prompt (within/across pairs compare groups)
    labels = [a.query.get("label") if a.query.get("label") is not None else a.query.get("prompt") for a in atts]

    def cname(y) -> str:
        if y is None:
            return ""
        if isinstance(y, str):      # a prompt
            return y
        return class_names[int(y)] if class_names and 0 <= int(y) < len(class_names) else str(y)
    out = dict(run_ids=list(run_ids), names=list(names), labels=labels, classes=[cname(y) for y in labels],
               sizes=sizes, count=g, n_items=int(n_items))
    # distinct coverage over G, against G·k and random sets of the same sizes
    cov = ov.coverage_curve(sets)
    sim = ov.random_coverage(n_items, sizes, draws, seed)
    mean, lo, hi = band(sim)
    out["coverage"] = dict(g=list(range(1, g + 1)), distinct=cov.tolist(), bound=np.cumsum(sizes).tolist(),
                           random_expected=ov.expected_random_coverage(n_items, sizes).tolist(),
                           random_mean=mean.tolist(), random_lo=lo.tolist(), random_hi=hi.tolist())
    # recurring images and concentration
    counts = ov.counts(sets, n_items)
    rec = ov.recurring(sets, RECURRING)
    out["recurring"] = [dict(index=i, count=c, label=None if train_labels is None else int(train_labels[i]),
                             class_name="" if train_labels is None else cname(train_labels[i]),
                             runs=[run_ids[q] for q, s in enumerate(sets) if i in s]) for i, c in rec]
    conc = ov.concentration(sets, n_items)
    rnd = ov.random_concentration(n_items, sizes, draws, seed + 1)
    out["concentration"] = {k: dict(observed=v, random_mean=float(np.mean(rnd[k])),
                                    random_lo=float(np.percentile(rnd[k], 2.5)),
                                    random_hi=float(np.percentile(rnd[k], 97.5))) for k, v in conc.items()}
    out["slots"] = int(counts.sum())
    out["distinct"] = int((counts > 0).sum())
    # pairwise overlaps: within / across classes, against random
    m = ov.overlap_matrix(sets)
    out["matrix"] = m.tolist()
    pw = m[np.triu_indices(g, 1)]
    rnd_pairs = ov.random_overlaps(n_items, sizes, pairs=2000, seed=seed + 2) if g >= 2 else np.zeros(0)
    grp = ov.grouped_overlaps(m, labels)
    out["pairs"] = dict(mean=_mean(pw), random_mean=_mean(rnd_pairs),
                        within=_summary(grp["within"]), across=_summary(grp["across"]),
                        within_values=grp["within"].tolist(), across_values=grp["across"].tolist(),
                        random=_summary(rnd_pairs))
    # clustering order (heatmap) and a 2-D map of the generations (classical MDS of 1 − overlap)
    order = ov.cluster_order(m)
    out["order"] = order.tolist()
    xy = ov.classical_mds(1.0 - m) if g >= 2 else np.zeros((g, 2))
    out["map"] = dict(x=xy[:, 0].tolist(), y=xy[:, 1].tolist())
    return out


def _mean(v) -> Optional[float]:
    return float(np.mean(v)) if len(v) else None


def _summary(v) -> dict:
    v = np.asarray(v, float)
    return dict(n=int(len(v)), mean=_mean(v), std=float(np.std(v)) if len(v) else None,
                q25=float(np.percentile(v, 25)) if len(v) else None, q75=float(np.percentile(v, 75)) if len(v) else None)


def agreement(ctx, atts: Sequence, run_ids: Sequence[str], methods: Sequence[str], n_items: int,
              train_labels=None, class_names=None, top: int = 12) -> dict:
    """Methods over the collection: each method's top-k for every run's query (the baselines Context
    `ctx`, its faiss indexes built once), the mean overlap@k with MUCS (spread over the queries) and
    the images each method alone puts in its top-k (most often first)."""
    from .compare import LABELS, method_scores
    from ..method.unlearn import top_k
    tops: dict = {n: [] for n in methods}
    for rid, a in zip(run_ids, atts):
        k = len(a.top)
        sc = method_scores(ctx, a, rid, methods)
        for n in methods:
            tops[n].append([int(i) for i in top_k(sc[n], min(k, len(sc[n])))])
    ag = ov.agreement(tops, "mucs")
    rows = []
    for n in methods:
        v = ag["overlap"][n]
        alone = sorted(ag["alone"][n].items(), key=lambda kv: (-kv[1], kv[0]))
        rows.append(dict(method=n, label=LABELS.get(n, n), mean=float(v.mean()) if len(v) else None,
                         std=float(v.std()) if len(v) else None, min=float(v.min()) if len(v) else None,
                         max=float(v.max()) if len(v) else None, per_query=v.tolist(),
                         alone_images=int(len(alone)), alone_slots=int(sum(c for _, c in alone)),
                         alone=[dict(index=i, queries=c, label=None if train_labels is None else int(train_labels[i]))
                                for i, c in alone[:top]]))
    sizes = [len(a.top) for a in atts]
    rnd = ov.random_overlaps(n_items, sizes, pairs=2000, seed=3)
    return dict(methods=rows, random_mean=float(rnd.mean()), run_ids=list(run_ids))


# --- the figures' data as CSV / JSON -------------------------------------------------------------------
def tables(an: dict, agree: Optional[dict] = None) -> dict:
    """{figure key: (header, rows)} for each analysis: what its CSV export holds."""
    c = an["coverage"]
    t = {"coverage": (["generations", "distinct_images", "upper_bound_G_k", "random_expected", "random_mean",
                       "random_lo_2.5", "random_hi_97.5"],
                      [list(r) for r in zip(c["g"], c["distinct"], c["bound"], _r(c["random_expected"]),
                                            _r(c["random_mean"]), _r(c["random_lo"]), _r(c["random_hi"]))])}
    t["recurring"] = (["index", "top_k_sets", "label", "class", "runs"],
                      [[r["index"], r["count"], r["label"], r["class_name"], " ".join(r["runs"])]
                       for r in an["recurring"]])
    t["concentration"] = (["measure", "observed", "random_mean", "random_lo_2.5", "random_hi_97.5"],
                          [[k, _f(v["observed"]), _f(v["random_mean"]), _f(v["random_lo"]), _f(v["random_hi"])]
                           for k, v in an["concentration"].items()])
    p = an["pairs"]
    t["classes"] = (["pairs", "n", "mean", "std", "q25", "q75"],
                    [[name, p[key]["n"], _f(p[key]["mean"]), _f(p[key]["std"]), _f(p[key]["q25"]), _f(p[key]["q75"])]
                     for name, key in (("within class", "within"), ("across classes", "across"),
                                       ("random top-k sets", "random"))])
    order = an["order"]
    ids = an["run_ids"]
    t["heatmap"] = (["run"] + [ids[j] for j in order],
                    [[ids[i]] + [_f(an["matrix"][i][j]) for j in order] for i in order])
    t["map"] = (["run", "name", "class", "x", "y"],
                [[r, n, c, _f(x), _f(y)] for r, n, c, x, y in
                 zip(ids, an["names"], an["classes"], an["map"]["x"], an["map"]["y"])])
    if agree is not None:
        t["agreement"] = (["method", "mean_overlap_with_mucs", "std", "min", "max", "images_alone", "slots_alone",
                           "most_often_alone (index:queries)"],
                          [[m["method"], _f(m["mean"]), _f(m["std"]), _f(m["min"]), _f(m["max"]), m["alone_images"],
                            m["alone_slots"], " ".join(f"{a['index']}:{a['queries']}" for a in m["alone"])]
                           for m in agree["methods"]])
    return t


def json_parts(an: dict, agree: Optional[dict] = None) -> dict:
    """{figure key: the dict its JSON export holds}."""
    keys = dict(coverage=["coverage"], recurring=["recurring", "slots", "distinct"],
                concentration=["concentration", "slots"], classes=["pairs", "labels", "classes"],
                heatmap=["run_ids", "names", "order", "matrix"], map=["run_ids", "names", "classes", "map"])
    out = {k: {f: an[f] for f in fields} for k, fields in keys.items()}
    if agree is not None:
        out["agreement"] = agree
    return out


def to_csv(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _f(v):
    return "" if v is None else f"{float(v):.6g}"


def _r(vals):
    return [_f(v) for v in vals]
