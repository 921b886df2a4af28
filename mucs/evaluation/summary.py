"""Summarise: from the measured similarities to the results JSON (AUC against random removal, mean
relative change, bootstrap intervals, overlaps, scale, seeds, timing). Pure: reads nothing from
the work folder and computes no model."""
import os

import numpy as np
import torch

from .config import GROUPS, METRICS
from .plan import Job, check_methods
from .run import State

DESCRIPTION = ("Counterfactual test: AUC = P(sim after random removal > sim after the method's removal) "
               "(for mse, a distance: P(mse_random < mse_method)); 0.5 = no better than random. "
               "mean_relative_change = 100*(mean(sim_method)/median(sim_random) - 1) %. With several "
               "replicate seeds, each item's similarity is its mean over the seeds' retrains (auc_per_seed: "
               "each seed alone; replicates: mean similarity of each extra seed's model A items to model A's, "
               "nothing removed — how much the training seed alone changes them).")


def summarise(job: Job, st: State, methods, engine: str = "serial") -> dict:
    from .metrics import summarise as compare
    from ..method.overlap import between_methods, mean_pairwise_overlap, random_overlaps, recurring
    methods, _ = check_methods(methods)
    cfg = job.cfg
    N, k = len(job.data()), job.k()
    rnames, sims = st.random, st.sims
    groups = [g for g in GROUPS if g in sims[rnames[0]]]

    def pooled(names, g, metric):
        return np.concatenate([sims[n][g][metric] for n in names])
    res: dict = {}
    # random: each repeat against the other repeats (leave one out), averaged
    res["random"] = dict(removed=float(np.mean([st.removed[n] for n in rnames])))
    for g in groups:
        res["random"][g] = {}
        for metric in METRICS:
            per = [compare(pooled([o for o in rnames if o != n], g, metric), sims[n][g][metric], metric) for n in rnames]
            res["random"][g][metric] = dict(auc=float(np.mean([p["auc"] for p in per])),
                                            auc_per_repeat=[p["auc"] for p in per],
                                            mean_relative_change=float(np.mean([p["mean_relative_change"] for p in per])),
                                            mean=float(np.mean([p["mean"] for p in per])), n=per[0]["n"],
                                            note="each random repeat against the others; the mean is 0.5 by construction, "
                                                 "auc_per_repeat shows the spread of a single random removal")
    done = [m for m in methods if m in sims]
    seeds = cfg.seeds()
    for m in done:
        res[m] = dict(removed=st.removed[m])
        for g in groups:
            res[m][g] = {metric: compare(pooled(rnames, g, metric), sims[m][g][metric], metric) for metric in METRICS}
            if len(seeds) > 1:      # each replicate alone, against the random removals of the same seed
                for metric in METRICS:
                    res[m][g][metric]["auc_per_seed"] = {
                        str(t): compare(np.concatenate([st.by_seed[n][t][g][metric] for n in rnames]),
                                        st.by_seed[m][t][g][metric], metric)["auc"] for t in seeds}
    rand_exp = (float(random_overlaps(N, [k] * cfg.targets, pairs=2000, seed=0).mean()) if cfg.targets > 1
                else float("nan"))
    within = {m: dict(mean_pairwise=mean_pairwise_overlap(st.sets[m]), random_expected=rand_exp,
                      recurring=recurring(st.sets[m], 10)) for m in done + rnames[:1]}
    between = {a: {b: between_methods(st.sets[a], st.sets[b]) for b in done} for a in done}
    from .metrics import paired_difference
    # MUCS − each other method, target by target (the same targets, so the difference can be resolved)
    paired = {f"mucs-{m}": {metric: paired_difference(pooled(rnames, "targets", metric), sims["mucs"]["targets"][metric],
                                                       sims[m]["targets"][metric], metric) for metric in METRICS}
              for m in done if m != "mucs" and "mucs" in done}
    it = job.items()
    return dict(
        description=DESCRIPTION,
        complete=len(done) == len(methods), missing=[m for m in methods if m not in sims],
        scale=dict(cfg.to_dict(), data=shown_path(cfg.data), n_train_actual=N, k=k, data_fingerprint=job.data().fingerprint()),
        seeds=dict(train_seed=cfg.train_seed, replicate_seeds=seeds,
                   target_seeds=it["targets"]["seeds"], target_labels=it["targets"]["labels"],
                   control_seeds=it["controls"]["seeds"], control_labels=it["controls"]["labels"],
                   random_removal_seeds=[int(n.split("#")[1]) for n in rnames], mucs_seed=cfg.mucs_seed),
        methods=res, overlap=dict(within=within, between=between), paired=paired,
        method_settings={m: method_settings(cfg, m) for m in methods},
        replicates={str(t): {g: {metric: float(np.mean(v)) for metric, v in st.seed_sims[t][g].items()}
                             for g in st.seed_sims[t]} for t in seeds[1:] if t in st.seed_sims},
        metrics_skipped=skipped_metrics(),
        timing=dict(compute_seconds=st.compute_seconds(), per_query=per_query(st, methods),
                    torch_threads=job.threads or torch.get_num_threads(),
                    device=str(job.device), engine=engine,
                    note="compute seconds recorded with each cached retrain, generation and attribution used "
                         "in this table, whichever task and run computed it"))


def method_settings(cfg, name: str) -> dict:
    """Everything a row's method was run with, resolved (defaults filled in), so its meaning cannot drift
    when a default changes: the MUCS settings (with the ablation's changes), the options of D-TRAK,
    TRAK and AbU, or the components of an ensemble."""
    from ..method import baselines
    parts = baselines.components(name)
    if len(parts) > 1:
        return dict(ensemble=parts, components={p: method_settings(cfg, p) for p in parts})
    out = dict(description=baselines.description(name))
    if name in baselines.ABLATIONS:
        s = cfg.mucs_settings()
        out["settings"] = (s.replace(**baselines.ABLATIONS[name]) if baselines.ABLATIONS[name] else s).to_dict()
    elif cfg.resolved_options(name) is not None:
        out["options"] = cfg.resolved_options(name)
    return out


ONE_OFF = ("features", "fisher", "original_losses")   # query-independent stages, paid once and cached


def per_query(st: State, methods) -> dict:
    """Per method: mean compute seconds per attributed target without the query-independent stages
    (D-TRAK/TRAK's feature pass, AbU's Fisher and original losses: paid by the first target and
    cached), and those one-off seconds apart."""
    out = {}
    for m in check_methods(methods)[1]:
        rows = [(v, st.stages.get((m, i), {})) for (stage, i), v in st.seconds.items() if stage == f"attribute:{m}"]
        if not rows:
            continue
        once = [sum(x.get(k, 0.0) for k in ONE_OFF) for _, x in rows]
        out[m] = dict(per_query_seconds=float(np.mean([v - o for (v, _), o in zip(rows, once)])),
                      one_off_seconds=float(max(once)), targets=len(rows))
    return out


def skipped_metrics() -> dict:
    """LPIPS, DINO, CLIP and SSCD need pretrained weights; none is bundled or downloaded here."""
    return {m: "needs pretrained weights, not available locally" for m in ("lpips", "dino", "clip", "sscd")}


def shown_path(path: str) -> str:
    """A path inside the repository relative to its root (results files are committed), else as given."""
    from ..defaults import REPO, is_checkout
    full = os.path.abspath(path)
    return os.path.relpath(full, REPO) if is_checkout() and full.startswith(REPO + os.sep) else path
