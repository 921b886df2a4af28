"""Run: the protocol as a graph of steps on an engine.

    model A ─┬─ generate A ─┬──────────────────────────────── measure (random r) ─┐
             │              └─ attribute (method, target) ─┐                      │
             ├─ retrain (random r) ─ generate ─────────────┼──────────────────────┤
             └─────────────────────────────────────────────┴─ retrain (method) ─ generate ─ measure (method)

Model A, its items, the random removals and every attribution are submitted at once, each
depending on what it needs (engine handles: Ray ObjectRefs); a method's retrain → generate →
measure chain is submitted as soon as all of its targets' scores are in, because its removed set
(the union of their top-k sets) decides which model it needs. Two names with the same removed set
share one chain. With replicates (`retrain_seeds`) every seed has its own model A, items and
retrains, and each item's similarity is averaged over the seeds; attributions use the first seed's
model A only. The first target of each MUCS-type method waits for the previous one, so that
the shared loss caches (L_o, L_null) are computed once, by the first, as in a serial run.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..method import baselines
from ..errors import MucsError
from . import steps
from .plan import Job, check_methods, method_scores, random_names, union


@dataclass
class State:
    """What the run has measured so far (the summary is computed from it)."""
    sims: dict = field(default_factory=dict)       # name -> {group: {metric: (n,) similarity}}
    sets: dict = field(default_factory=dict)       # name -> top-k set per target
    removed: dict = field(default_factory=dict)    # name -> size of the removed union
    paths: dict = field(default_factory=dict)      # name -> retrained model folder
    seconds: dict = field(default_factory=dict)    # (stage, artefact) -> compute seconds recorded with it
    computed: dict = field(default_factory=lambda: dict(retrains=0, generations=0, attributions=0))
    random: list = field(default_factory=list)     # the measured random removals, in seed order
    by_seed: dict = field(default_factory=dict)    # name -> {training seed: sims of that replicate alone}
    seed_sims: dict = field(default_factory=dict)  # seed -> sims between model A's items and that seed's model A's
    stages: dict = field(default_factory=dict)     # (method, target) -> stage seconds (D-TRAK: features, query)

    def compute_seconds(self) -> dict:
        """Seconds per stage (train, generate, attribute:<method>) summed over the artefacts used."""
        out: dict = {}
        for (stage, _), sec in self.seconds.items():
            out[stage] = out.get(stage, 0.0) + sec
        out["total"] = sum(out.values())
        return out


class _Run:
    """One `run` in progress: what was submitted to the engine (`watch`) and what its results fill in
    (`st`); each phase of the graph (module docstring) is one method."""

    def __init__(self, job: Job, engine, retrain: Optional[Callable], cached_only: bool,
                 on_progress: Optional[Callable]):
        self.job, self.engine, self.retrain, self.cached_only, self.on_progress = \
            job, engine, retrain, cached_only, on_progress
        self.st = State()
        self.rnames = random_names(job.cfg)
        self.seeds = job.cfg.seeds()
        self.blocks = job.cfg.blocks()
        self.watch: dict = {}        # handle -> (kind, info)
        self.names_of: dict = {}     # model key -> [(name, block, seed)] sharing its chain
        self.sims_of: dict = {}      # model key -> its measured similarities
        self.per_block: dict = {}    # name -> {(block, seed): similarities measured on that retrain}
        self.scores: dict = {}       # method -> {target: scores}

    def submit(self, kind, info, fn, *args, name=""):
        h = self.engine.submit(fn, *args, name=name)
        self.watch[h] = (kind, info)
        return h

    def seed_tag(self, s) -> str:
        return "" if len(self.seeds) == 1 else f", seed {s}"

    def missing(self, path) -> bool:
        """cached_only, and the model in `path` or its generated items are not in the work folder."""
        return self.cached_only and (self.job.model_record(path) is None or self.job.cached_generation(path) is None)

    def start_models(self) -> None:
        """Model A and its items per training seed, and how much the seed alone changes the items."""
        job, seeds = self.job, self.seeds
        for s in seeds:
            if self.missing(job.model_dir([], s)):
                raise MucsError(f"--cached-only: nothing to report yet: model A (training seed {s}) or its generated "
                                f"items are not in {job.work}")
        self.models_a = {s: self.submit("train", None, steps.retrained, job, [], f"model A{self.seed_tag(s)}",
                                        self.retrain, s, name=f"retrain model A{self.seed_tag(s)}") for s in seeds}
        self.gens_a = {s: self.submit("generate", None, steps.generated, job, self.models_a[s],
                                      name=f"generate model A{self.seed_tag(s)}") for s in seeds}
        self.a, self.ga = self.models_a[seeds[0]], self.gens_a[seeds[0]]   # the attributed model and its items
        for s in seeds[1:]:     # how much the training seed alone changes the items (nothing removed)
            self.submit("seed", s, steps.measured, job, self.a, self.ga, self.gens_a[s],
                        name=f"measure model A{self.seed_tag(s)}")

    def measured_block(self, name, b, s, val) -> None:
        self.per_block.setdefault(name, {})[(b, s)] = val
        blocks, st = self.blocks, self.st
        if len(self.per_block[name]) == len(blocks) * len(self.seeds):
            st.by_seed[name] = {t: merge_blocks(blocks, {c: self.per_block[name][(c, t)] for c in range(len(blocks))})
                                for t in self.seeds}
            st.sims[name] = mean_over_seeds(list(st.by_seed[name].values()))

    def chain(self, name, sets, why) -> None:
        """Retrain without the union of `sets` (per block), regenerate, measure."""
        job, seeds, st = self.job, self.seeds, self.st
        todo = []
        for b, idx in enumerate(self.blocks):
            removed = union([sets[i] for i in idx])
            for s in seeds:
                key, path = job.model_key(removed, s), job.model_dir(removed, s)
                if self.missing(path):
                    return
                todo.append((b, s, removed, key, path))
        st.sets[name] = sets
        sizes = [int(len(t[2])) for t in todo if t[1] == seeds[0]]
        st.removed[name] = sizes[0] if len(sizes) == 1 else float(np.mean(sizes))
        paths = [t[4] for t in todo if t[1] == seeds[0]]
        st.paths[name] = paths[0] if len(paths) == 1 else paths
        for b, s, removed, key, path in todo:
            tag = (why if len(self.blocks) == 1 else f"{why} (block {b})") + self.seed_tag(s)
            if key in self.sims_of:
                self.measured_block(name, b, s, self.sims_of[key])
            elif key in self.names_of:
                self.names_of[key].append((name, b, s))
            else:
                self.names_of[key] = [(name, b, s)]
                r = self.submit("train", None, steps.retrained, job, removed, tag, self.retrain, s, name=f"retrain {tag}")
                g = self.submit("generate", None, steps.generated, job, r, name=f"generate {tag}")
                self.submit("measure", key, steps.measured, job, self.models_a[s], self.gens_a[s], g,
                            name=f"measure {tag}")

    def start_attributions(self, singles) -> set:
        """Every (single method, target), cached ones only in cached-only mode; returns the methods submitted."""
        job, T = self.job, self.job.cfg.targets
        a_dir = job.model_dir([])
        model_fp: Any = steps.load_model(job, a_dir).fingerprint() if self.cached_only else None   # Any: set when cached_only
        before: Any = steps.generated(job, a_dir)["images"] if self.cached_only else None
        available = set(singles)
        previous_first: list = []
        for m in singles:
            if self.cached_only:
                if not all(job.cached_attribution(m, model_fp, i, before["targets"][i]) is not None for i in range(T)):
                    available.discard(m)
                    continue
            # MUCS-type and the gradient/unlearning baselines: the first target fills the query-independent caches
            mucs_type = m in baselines.ABLATIONS or m in ("dtrak", "trak", "abu")
            first = self.submit("attribute", m, steps.attributed, job, m, 0, self.a, self.ga,
                                *(previous_first if mucs_type else []), name=f"attribute {m} target 0")
            if mucs_type:
                previous_first = [first]
            for i in range(1, T):
                self.submit("attribute", m, steps.attributed, job, m, i, self.a, self.ga, *([first] if mucs_type else []),
                            name=f"attribute {m} target {i}")
        self.scores = {m: {} for m in singles}
        return available

    def collect(self, kind, info, val) -> None:
        """Record one finished step's result."""
        st = self.st
        if kind == "train":
            st.seconds[("train", val["path"])] = val["seconds"]
            st.computed["retrains"] += val["computed"]
        elif kind == "generate":
            st.seconds[("generate", val["path"])] = val["seconds"]
            st.computed["generations"] += val["computed"]
        elif kind == "attribute":
            self.scores[info][val["i"]] = val["scores"]
            st.seconds[(f"attribute:{info}", val["i"])] = val["seconds"]
            st.stages[(info, val["i"])] = val.get("stages", {})
            st.computed["attributions"] += val["computed"]
        elif kind == "seed":
            st.seed_sims[info] = val
        elif kind == "measure":
            self.sims_of[info] = val
            for name, b, s in self.names_of[info]:
                self.measured_block(name, b, s, val)
            st.random = [n for n in self.rnames if n in st.sims]
            if self.on_progress is not None and len(st.random) >= 2:
                self.on_progress(st)

    def chain_scored(self, waiting: list) -> None:
        """Submit the chain of each method in `waiting` whose targets are all scored (removed from it)."""
        T = self.job.cfg.targets
        for m in list(waiting):
            parts = baselines.components(m)
            if all(len(self.scores[p]) == T for p in parts):
                waiting.remove(m)
                sets = self.job.top_sets(method_scores([[self.scores[p][i] for i in range(T)] for p in parts]))
                self.chain(m, sets, f"without {m}'s top-k")


def run(job: Job, methods, engine, retrain: Optional[Callable] = None, cached_only: bool = False,
        on_progress: Optional[Callable] = None) -> State:
    """Measure random removal and every method; `on_progress(state)` after each measurement once two
    random removals are in. cached_only: submit only what the work folder already holds (nothing
    is computed; `job.read_only` makes sure) and leave the rest out."""
    methods, singles = check_methods(methods)
    r = _Run(job, engine, retrain, cached_only, on_progress)
    r.start_models()
    for i, name in enumerate(r.rnames):
        r.chain(name, job.random_sets(i), f"random removal {i}")
    available = r.start_attributions(singles)
    waiting = [m for m in methods if all(p in available for p in baselines.components(m))]
    while r.watch:
        for h in engine.ready(list(r.watch)):
            kind, info = r.watch.pop(h)
            r.collect(kind, info, engine.get(h))
        r.chain_scored(waiting)
    st = r.st
    st.random = [n for n in r.rnames if n in st.sims]
    if len(st.random) < 2:
        raise MucsError(f"--cached-only: nothing to report yet: fewer than two random removals are in {job.work}")
    return st


def mean_over_seeds(replicates: list) -> dict:
    """{group: {metric: per-item mean}} of replicates measured on the same items (one: itself)."""
    if len(replicates) == 1:
        return replicates[0]
    return {g: {m: np.mean([np.asarray(r[g][m], np.float64) for r in replicates], axis=0) for m in replicates[0][g]}
            for g in replicates[0]}


def merge_blocks(blocks: list, per_block: dict) -> dict:
    """One method's similarities from its per-block retrains: block b's own targets, and every
    control once per block (each retrain is one more removal the controls should survive)."""
    if len(blocks) == 1:
        return per_block[0]
    out: dict = {}
    for g in per_block[0]:
        out[g] = {}
        for metric in per_block[0][g]:
            parts = [np.asarray(per_block[b][g][metric])[idx] if g == "targets" else np.asarray(per_block[b][g][metric])
                     for b, idx in enumerate(blocks)]
            out[g][metric] = np.concatenate(parts)
    return out
