"""The counterfactual test (MUCS.md, "How attribution quality is judged"), resumable.

1. train model A on the (sub)set (or reuse it); generate targets and as many controls from fixed
   seeds and classes;
2. attribute every target with each method (cached per method, target and recipe);
3. for each method retrain from scratch, same seed and recipe, without the union of its top-k
   sets (cached by a hash of the removed set + recipe), and regenerate every item from its seed;
   random removal is the same procedure with random scores, repeated with several seeds;
4. similarity before/after (SSIM, pixel MSE, cosine of model A's features), and per method,
   group and metric the AUC against random removal and the mean relative change; plus overlap
   statistics within a method across targets and between methods.

Everything lives in a work folder; a stopped run resumes where it stopped: finished retrains,
generations and attributions are never recomputed.
"""
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Optional

import numpy as np
import torch

from . import baselines
from .cache import atomic_write, cache_key, load_arrays, save_arrays
from .errors import MucsError
from .settings import Settings
from .train import TrainOptions, train

GROUPS = ("targets", "controls")
METRICS = ("ssim", "mse", "feature_cosine")
DEFAULT_METHODS = ("mucs", "pixel_nn", "feature_nn", "mucs+pixel_nn", "mucs+feature_nn",
                   "mucs_plain_ga", "mucs_unnormalised", "mucs_fresh_noise")


@dataclass
class EvalConfig:
    # training set: a balanced subset of `data` (n_train=None: all of it)
    data: str = ""
    n_train: Optional[int] = None
    data_seed: int = 0
    # the training recipe, shared by model A and every retrain
    channels: tuple = (16, 32, 32)
    attention: bool = False
    train_steps: int = 800
    train_batch: int = 32
    lr: float = 1e-3
    ema_decay: float = 0.995
    warmup: int = 50
    train_seed: int = 0
    # generated items: targets (attributed) and controls (never attributed)
    targets: int = 10
    controls: int = 10
    target_seed: int = 1000     # target i: seed target_seed + i
    control_seed: int = 2000    # control i: seed control_seed + i
    # "shared": target i has class i mod C, control i class (i + 1) mod C (every class holds both);
    # "disjoint": targets cycle through the first ceil(C/2) classes, controls through the others, so
    # removing a target's class-mates cannot move a control through its class
    control_design: str = "shared"
    sample_steps: int = 25      # DDIM steps
    # removal
    k_frac: float = 0.02        # top-k per target = max(1, round(k_frac·N))
    random_repeats: int = 4     # random removal sets (seeds 0 .. R−1)
    # MUCS settings for the evaluation (the paper's defaults are too slow for 2 CPU cores)
    noises: int = 32
    unlearn_batch: int = 32
    max_steps: int = 60
    lr_factor: float = 10.0     # unlearning lr = training lr ÷ this (the paper's 10)
    null_batches: int = 20
    null_batch_size: int = 64
    mucs_seed: int = 0

    def train_options(self) -> TrainOptions:
        return TrainOptions(steps=self.train_steps, batch_size=self.train_batch, lr=self.lr, seed=self.train_seed,
                            ema_decay=self.ema_decay, channels=tuple(self.channels), attention=self.attention,
                            warmup_steps=self.warmup, log_every=max(1, min(50, self.train_steps)))

    def mucs_settings(self) -> Settings:
        return Settings(noises=self.noises, batch_size=self.unlearn_batch, max_steps=self.max_steps, lr_factor=self.lr_factor,
                        null_batches=self.null_batches, null_batch_size=self.null_batch_size, seed=self.mucs_seed,
                        eval_batch_size=512).validate()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    def replace(self, **changes) -> "EvalConfig":
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        d["channels"] = tuple(d["channels"])
        return EvalConfig(**{k: v for k, v in d.items() if k in {f.name for f in fields(EvalConfig)}})

    def validate(self) -> "EvalConfig":
        checks = [(self.targets >= 1, "at least one target is needed"), (self.controls >= 0, "controls must be ≥ 0"),
                  (0 < self.k_frac < 1, "k fraction must be in (0, 1)"),
                  (self.random_repeats >= 2, "at least two random removal repeats are needed"),
                  (self.train_steps >= 1, "training steps must be ≥ 1"), (self.sample_steps >= 1, "sampling steps must be ≥ 1"),
                  (self.n_train is None or self.n_train >= 2, "n_train must be ≥ 2"),
                  (self.control_design in ("shared", "disjoint"), "control design must be 'shared' or 'disjoint'")]
        for ok, msg in checks:
            if not ok:
                raise MucsError(msg)
        return self


PRESETS = {
    # for the tests: seconds
    "tiny": dict(n_train=None, channels=(8, 16), train_steps=40, train_batch=16, lr=2e-3, ema_decay=0.99, warmup=5,
                 targets=2, controls=2, sample_steps=4, k_frac=0.1, random_repeats=2, noises=4, unlearn_batch=8,
                 max_steps=3, null_batches=2, null_batch_size=16),
    # what one sitting can run: measured 60 min of one busy CPU core (17 retrains of ~2.5 min, 40 MUCS-type
    # attributions of ~10-38 s); the published table (benchmarks/counterfactual.md)
    "small": dict(n_train=200, channels=(16, 32, 32), train_steps=800, train_batch=32, lr=1e-3, ema_decay=0.995,
                  warmup=50, targets=10, controls=10, sample_steps=25, k_frac=0.02, random_repeats=8, noises=32,
                  unlearn_batch=32, max_steps=60, null_batches=20, null_batch_size=64),
    # the published table (README): 500 images, 20 targets + 20 controls, k = 1 % of N (5 per target, a union
    # of ~100 = 20 % of the set, as in "small"). Budget: ~4.5 min per retrain + ~15 s per MUCS-type
    # attribution on 1 thread; two workers on the same work folder (start the command twice) share the
    # work. The step cap is high enough that every unlearning stops by the τ rule; controls live in
    # classes no target uses (control_design "disjoint", see benchmarks/counterfactual.md)
    "full": dict(n_train=500, channels=(16, 32, 32), train_steps=1500, train_batch=32, lr=1e-3, ema_decay=0.995,
                 warmup=50, targets=20, controls=20, sample_steps=25, k_frac=0.01, random_repeats=4, noises=32,
                 unlearn_batch=32, max_steps=400, null_batches=20, null_batch_size=64, control_design="disjoint"),
}


def preset(name: str, **changes) -> EvalConfig:
    if name not in PRESETS:
        raise MucsError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return EvalConfig(**PRESETS[name]).replace(**changes)


# ------------------------------------------------------------------------------------------------
class Evaluation:
    """One work folder: cached data subset, models, generated items, attributions and results."""

    def __init__(self, cfg: EvalConfig, work: str, device: str = "cpu", log=None, cached_only: bool = False):
        self.cfg = cfg.validate()
        self.cached_only = cached_only   # report what is cached; compute nothing (raises _Missing instead)
        self.work = os.path.abspath(work)
        self.device = device
        self.log = log or (lambda msg: print(msg, flush=True))
        self.computed = dict(retrains=0, generations=0, attributions=0)
        self.seconds = {}     # (stage, name) -> compute seconds recorded with the cached artefact
        os.makedirs(self.work, exist_ok=True)

    # --- small helpers ----------------------------------------------------------------------
    @staticmethod
    def _read_json(path, default):
        if os.path.exists(path):
            try:
                with open(path) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return default
        return default

    def _write_json(self, path, obj):
        atomic_write(path, json.dumps(obj, indent=1, default=_json_default).encode())

    # --- data -------------------------------------------------------------------------------
    def data(self):
        """The training set: a balanced subset of cfg.data, stored in the work folder."""
        from .data import load_dataset
        if hasattr(self, "_data"):
            return self._data
        src = load_dataset(self.cfg.data)
        n = len(src) if self.cfg.n_train is None else self.cfg.n_train
        if n > len(src):
            raise MucsError(f"n_train={n} but {self.cfg.data} has only {len(src)} images")
        if n == len(src):
            data = src
        else:
            key = cache_key(kind="subset", data=src.fingerprint(), n=n, seed=self.cfg.data_seed)
            path = os.path.join(self.work, f"data-{key[:12]}.npz")
            if not os.path.exists(path):
                idx = _balanced_subset(src.labels, len(src), n, self.cfg.data_seed)
                import io
                buf = io.BytesIO()
                extra = {} if src.labels is None else dict(labels=src.labels[idx])
                if src.class_names:
                    extra["class_names"] = np.array(src.class_names)
                np.savez(buf, images=src.images[idx], source_indices=idx, **extra)
                atomic_write(path, buf.getvalue())
            data = load_dataset(path)
        self._data = data
        return data

    # --- retrains ---------------------------------------------------------------------------
    def model_key(self, removed) -> str:
        opts = asdict(self.cfg.train_options())
        opts["channels"] = list(opts["channels"])
        opts.pop("log_every", None)
        return cache_key(kind="retrain", data=self.data().fingerprint(), opts=opts,
                         removed=sorted(int(i) for i in removed))

    def model_dir(self, removed) -> str:
        return os.path.join(self.work, "models", self.model_key(removed)[:16])

    def retrain(self, removed, why: str = "") -> str:
        """Train from scratch without `removed` (cached by the removed set + recipe); returns the folder.
        Raises _Busy while another worker is training the same model."""
        removed = np.array(sorted(int(i) for i in removed), np.int64)
        out = self.model_dir(removed)
        steps = self.cfg.train_options().steps
        rec_path = os.path.join(out, "mucs_train.json")

        def cached():
            rec = self._read_json(rec_path, None)
            if rec is not None and rec.get("steps_done") == steps and os.path.isdir(os.path.join(out, "unet")):
                self.seconds[("train", out)] = float(rec.get("train_seconds", 0.0))
                return True
            return False
        if cached():
            return out
        if self.cached_only:
            raise _Missing(why)
        with claim(out):
            if cached():          # finished by another worker between the check and the claim
                return out
            self.log(f"[{_now()}] training {why or 'model'}: {len(self.data()) - len(removed)} images "
                     f"({len(removed)} removed), {steps} steps")
            t0 = time.perf_counter()
            train(self.data(), out, self.cfg.train_options(), device=self.device, exclude=removed)
            self.computed["retrains"] += 1
            self._write_json(out + ".json", dict(removed=removed.tolist(), why=why, seconds=time.perf_counter() - t0))
        cached()
        return out

    def load(self, path):
        from .models import load_model
        return load_model(path, self.device)

    # --- items ------------------------------------------------------------------------------
    def items(self) -> dict:
        """Labels and seeds of the targets and controls (classes cycle per `control_design`; fixed seeds)."""
        C = self.data().num_classes
        if not C:
            t_lab = c_lab = (lambda i: None)
        elif self.cfg.control_design == "disjoint" and C >= 2:
            half = (C + 1) // 2
            t_lab, c_lab = (lambda i: i % half), (lambda i: half + i % (C - half))
        else:
            t_lab, c_lab = (lambda i: i % C), (lambda i: (i + 1) % C)
        return dict(targets=dict(labels=[t_lab(i) for i in range(self.cfg.targets)],
                                 seeds=[self.cfg.target_seed + i for i in range(self.cfg.targets)]),
                    controls=dict(labels=[c_lab(i) for i in range(self.cfg.controls)],
                                  seeds=[self.cfg.control_seed + i for i in range(self.cfg.controls)]))

    def generated(self, model_path: str) -> dict:
        """{group: (n, H, W, C) uint8} sampled by the model in `model_path` (cached)."""
        from .generate import generate
        it = self.items()
        key = cache_key(kind="generated", model=os.path.basename(model_path), items=it, steps=self.cfg.sample_steps)
        path = os.path.join(self.work, "generated", f"{os.path.basename(model_path)}.npz")
        hit = load_arrays(path, key)
        if hit is None:
            if self.cached_only:
                raise _Missing(model_path)
            model = self.load(model_path)
            t0 = time.perf_counter()
            out = {g: generate(model, it[g]["labels"], it[g]["seeds"], self.cfg.sample_steps) for g in GROUPS if it[g]["seeds"]}
            self.computed["generations"] += 1
            # deterministic, so two workers writing the same file is harmless: no claim needed
            hit = dict(out, seconds=np.array(time.perf_counter() - t0))
            save_arrays(path, key, **hit)
        self.seconds[("generate", model_path)] = float(hit.pop("seconds", 0.0))
        return hit

    # --- attributions -----------------------------------------------------------------------
    def context(self, model_a) -> baselines.Context:
        if getattr(self, "_ctx", None) is None:
            self._ctx = baselines.Context(model=model_a, data=self.data(), settings=self.cfg.mucs_settings(),
                                          cache_dir=os.path.join(self.work, "cache"), seed=0)
        return self._ctx

    def target_scores(self, method: str, model_a, targets_uint8) -> np.ndarray:
        """(T, N) scores of every target by `method`; each component's scores cached per target.
        Targets another worker is attributing are skipped, then _Busy is raised (come back later)."""
        parts = baselines.components(method)
        if len(parts) > 1:
            return np.stack([baselines.rank_average(c) for c in
                             zip(*[self.target_scores(p, model_a, targets_uint8) for p in parts])])
        ctx = self.context(model_a)
        it = self.items()["targets"]
        s = ctx.settings
        rows, busy = [], 0
        for i, (img, label, seed) in enumerate(zip(targets_uint8, it["labels"], it["seeds"])):
            key = cache_key(kind="scores", method=method, model=model_a.fingerprint(), data=self.data().fingerprint(),
                            settings=s.to_dict() if method.startswith("mucs") else None, ctx_seed=ctx.seed,
                            label=label, seed=seed, image=cache_key(img=np.asarray(img).tobytes().hex()))
            path = os.path.join(self.work, "attributions", method, f"target{i:03d}-{key[:16]}.npz")
            hit = load_arrays(path, key)
            if hit is None:
                if self.cached_only:
                    raise _Missing(method)
                try:
                    with claim(path):
                        hit = load_arrays(path, key) or self._attribute(method, ctx, img, label, i, path, key)
                except _Busy:
                    busy += 1
                    continue
            self.seconds[(f"attribute:{method}", i)] = float(hit.get("seconds", 0.0))
            rows.append(np.asarray(hit["scores"], np.float64))
        if busy:
            raise _Busy(f"{method}: {busy} target(s) being attributed by another worker")
        return np.stack(rows)

    def _attribute(self, method, ctx, img, label, i, path, key) -> dict:
        from .data import QueryImage, to_model_range
        t0 = time.perf_counter()
        ctx.info.pop(("mucs", i), None)
        sc = baselines.scores(method, ctx, QueryImage(to_model_range(img), []), label, query_id=i)
        dt = time.perf_counter() - t0
        self.computed["attributions"] += 1
        info = ctx.info.get(("mucs", i), {})
        save_arrays(path, key, scores=np.asarray(sc, np.float64), seconds=np.array(dt),
                    **{k: np.array(v) for k, v in info.items()})
        extra = "".join(f", {k}={v}" for k, v in info.items())
        self.log(f"[{_now()}]   {method} target {i}: {dt:.1f} s{extra}")
        return dict(scores=sc, seconds=dt)

    def k(self) -> int:
        return max(1, int(round(self.cfg.k_frac * len(self.data()))))

    def top_sets(self, scores: np.ndarray) -> list:
        from .unlearn import top_k
        return [top_k(s, self.k()) for s in scores]

    # --- the whole protocol -----------------------------------------------------------------
    def random_sets(self, r: int) -> list:
        """Random removal r: a random top-k set per target, as if a method's scores were random."""
        N = len(self.data())
        return self.top_sets(np.stack([baselines.random_scores(N, r, i) for i in range(self.cfg.targets)]))

    def run(self, methods=DEFAULT_METHODS, out_json: Optional[str] = None, poll: float = 10.0) -> dict:
        """The whole protocol. Several workers may run it on one work folder at once: each claims the
        retrains and attributions it computes, skips what another worker holds and comes back to it."""
        methods = [m for m in methods if m != "random"]   # random removal is always measured
        for m in methods:
            baselines.components(m)
        t_start = time.perf_counter()
        data = self.data()
        N, k = len(data), self.k()
        self.log(f"[{_now()}] counterfactual evaluation: N={N}, k={k}, {self.cfg.targets} targets, "
                 f"{self.cfg.controls} controls, methods: {', '.join(methods)}; work folder {self.work}")
        rnames = [f"random#{r}" for r in range(self.cfg.random_repeats)]
        state = dict(sims={}, sets={}, removed={}, paths={}, random=[])
        a = {}                                  # model A: path, model, samples

        def model_a():
            path = self.retrain([], why="model A")   # _Missing here (cached-only) ends the run
            a.update(path=path, model=self.load(path))
            a["before"] = self.generated(path)

        def task(name):
            if name in rnames:
                sets = self.random_sets(int(name.split("#")[1]))
            elif "model" not in a:
                raise _Busy("model A")                # attributions need model A
            else:
                sets = self.top_sets(self.target_scores(name, a["model"], a["before"]["targets"]))
            removed = np.unique(np.concatenate(sets))
            path = self.retrain(removed, why=f"random removal {name.split('#')[1]}" if name in rnames
                                else f"without {name}'s top-k")
            state["sets"][name], state["removed"][name], state["paths"][name] = sets, int(len(removed)), path

        def measure():
            from .metrics import similarities
            labels = {g: self.items()[g]["labels"] for g in GROUPS}
            for name, path in state["paths"].items():
                if name not in state["sims"]:
                    after = self.generated(path)
                    state["sims"][name] = {g: similarities(a["before"][g], after[g], a["model"], labels[g])
                                           for g in a["before"]}
            state["random"] = [n for n in rnames if n in state["sims"]]

        def report():
            if "model" not in a:
                return None
            measure()
            if len(state["random"]) < 2:
                return None
            result = self._results(state, methods, N, k, complete=all(x in state["sims"] for x in methods))
            result["timing"]["this_run_seconds"] = time.perf_counter() - t_start
            self._write_json(os.path.join(self.work, "results.json"), result)
            if out_json:
                self._write_json(out_json, result)
            return result

        pending = ["model A"] + rnames + methods
        while pending:
            progressed = False
            for name in list(pending):
                try:
                    model_a() if name == "model A" else task(name)
                except _Busy:
                    continue
                except _Missing:
                    if name == "model A":
                        raise
                pending.remove(name)
                progressed = True
                report()
                break                        # back to the first pending task: earlier methods finish first
            if pending and not progressed:
                time.sleep(poll)             # everything left is being computed by another worker
        result = report()
        if result is None:
            raise _Missing("random removal retrains")
        return result

    def _results(self, state, methods, N, k, complete) -> dict:
        from .metrics import summarise
        from .overlap import between_methods, mean_pairwise_overlap, random_overlaps, recurring
        rnames = state["random"]
        sims = state["sims"]
        res = {}
        groups = [g for g in GROUPS if g in sims[rnames[0]]]

        def pooled(names, g, metric):
            return np.concatenate([sims[n][g][metric] for n in names])
        # random: each repeat against the other repeats (leave one out), averaged
        res["random"] = dict(removed=float(np.mean([state["removed"][n] for n in rnames])))
        for g in groups:
            res["random"][g] = {}
            for metric in METRICS:
                per = [summarise(pooled([o for o in rnames if o != n], g, metric), sims[n][g][metric], metric)
                       for n in rnames]
                res["random"][g][metric] = dict(auc=float(np.mean([p["auc"] for p in per])),
                                                auc_per_repeat=[p["auc"] for p in per],
                                                mean_relative_change=float(np.mean([p["mean_relative_change"] for p in per])),
                                                mean=float(np.mean([p["mean"] for p in per])), n=per[0]["n"],
                                                note="each random repeat against the others; the mean is 0.5 by construction, "
                                                     "auc_per_repeat shows the spread of a single random removal")
        for m in methods:
            if m not in sims:
                continue
            res[m] = dict(removed=state["removed"][m])
            for g in groups:
                res[m][g] = {metric: summarise(pooled(rnames, g, metric), sims[m][g][metric], metric) for metric in METRICS}
        done = [m for m in methods if m in state["sets"]]
        sizes = [k] * self.cfg.targets
        rand_exp = float(random_overlaps(N, sizes, pairs=2000, seed=0).mean()) if self.cfg.targets > 1 else float("nan")
        within = {m: dict(mean_pairwise=mean_pairwise_overlap(state["sets"][m]), random_expected=rand_exp,
                          recurring=recurring(state["sets"][m], 10)) for m in done + rnames[:1]}
        between = {a: {b: between_methods(state["sets"][a], state["sets"][b]) for b in done} for a in done}
        it = self.items()
        return dict(
            description="Counterfactual test: AUC = P(sim after random removal > sim after the method's removal) "
                        "(for mse, a distance: P(mse_random < mse_method)); 0.5 = no better than random. "
                        "mean_relative_change = 100*(mean(sim_method)/median(sim_random) - 1) %.",
            complete=bool(complete), missing=[m for m in methods if m not in sims],
            scale=dict(self.cfg.to_dict(), data=_shown_path(self.cfg.data), n_train_actual=N, k=k, data_fingerprint=self.data().fingerprint()),
            seeds=dict(train_seed=self.cfg.train_seed, target_seeds=it["targets"]["seeds"],
                       target_labels=it["targets"]["labels"], control_seeds=it["controls"]["seeds"],
                       control_labels=it["controls"]["labels"],
                       random_removal_seeds=[int(n.split("#")[1]) for n in rnames],
                       mucs_seed=self.cfg.mucs_seed),
            methods=res, overlap=dict(within=within, between=between),
            metrics_skipped=_skipped_metrics(),
            timing=dict(compute_seconds=self.compute_seconds(), torch_threads=torch.get_num_threads(), device=str(self.device),
                        note="compute seconds recorded with each cached retrain, generation and attribution used "
                             "in this table, whichever worker and run computed it"))

    def compute_seconds(self) -> dict:
        """Seconds per stage (train, generate, attribute:<method>) summed over the artefacts used."""
        out = {}
        for (stage, _), sec in self.seconds.items():
            out[stage] = out.get(stage, 0.0) + sec
        out["total"] = sum(out.values())
        return out


# ------------------------------------------------------------------------------------------------
class _Missing(Exception):
    """Raised in cached-only mode when something would have to be computed."""


class _Busy(Exception):
    """Another worker holds the claim on what would be computed."""


@contextmanager
def claim(path: str):
    """Hold `path + ".lock"` (created exclusively) while computing `path`, so that a second worker on
    the same work folder skips it; raises _Busy when a live process holds it. A lock left by a dead
    process on this machine is taken over."""
    lock = path.rstrip("/") + ".lock"
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if attempt == 0 and _stale(lock):
                try:
                    os.remove(lock)
                except FileNotFoundError:
                    pass
                continue
            raise _Busy(path)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(pid=os.getpid(), host=socket.gethostname(), since=time.time()), f)
    try:
        yield
    finally:
        try:
            os.remove(lock)
        except FileNotFoundError:
            pass


def _stale(lock: str) -> bool:
    """A lock whose process (on this host) is gone. Unreadable or foreign-host locks count as live."""
    try:
        with open(lock) as f:
            info = json.load(f)
        if info.get("host") != socket.gethostname():
            return False
        os.kill(int(info["pid"]), 0)
        return False
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _balanced_subset(labels, total: int, n: int, seed: int) -> np.ndarray:
    """n of `total` indices, as balanced over the classes as possible, chosen at random, sorted."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(total, n, replace=False))
    classes = np.unique(labels)
    per = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    out, j = [], 0
    while len(out) < n:
        for c in classes:
            if j < len(per[c]) and len(out) < n:
                out.append(per[c][j])
        j += 1
    return np.sort(np.array(out, np.int64))


def _skipped_metrics() -> dict:
    """LPIPS, DINO, CLIP and SSCD need pretrained weights; none is bundled or downloaded here."""
    return {m: "needs pretrained weights, not available locally" for m in ("lpips", "dino", "clip", "sscd")}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def _shown_path(path: str) -> str:
    """A path inside the repository relative to its root (results files are committed), else as given."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = os.path.abspath(path)
    return os.path.relpath(full, root) if full.startswith(root + os.sep) else path


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _fmt(summary: Optional[dict]) -> str:
    if not summary:
        return "–"
    spread = ""
    if summary.get("auc_per_repeat"):
        spread = f" [{min(summary['auc_per_repeat']):.2f}–{max(summary['auc_per_repeat']):.2f}]"
    return f"{summary['auc']:.2f}{spread} ({summary['mean_relative_change']:+.1f}%)"


def markdown_table(result: dict) -> str:
    """Per method: removed images, then AUC (mean relative change) per group and metric."""
    names = {"ssim": "SSIM", "mse": "MSE", "feature_cosine": "feat. cos"}
    head = ["method", "removed"] + [f"{g} {names[m]}" for m in METRICS for g in GROUPS] + ["overlap within"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    within = result["overlap"]["within"]
    for m, r in result["methods"].items():
        ov = within.get(m if m != "random" else "random#0", {}).get("mean_pairwise")
        cells = [f"`{m}`", f"{r['removed']:.0f}"] + [_fmt(r.get(g, {}).get(metric)) for metric in METRICS for g in GROUPS]
        cells.append("–" if ov is None or ov != ov else f"{ov:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ci_table(result: dict) -> str:
    """Target-SSIM AUC with its 95 % bootstrap interval, mean target SSIM and control SSIM AUC."""
    lines = ["| method | target SSIM AUC | 95 % interval | mean SSIM (targets) | control SSIM AUC |", "|---|---|---|---|---|"]
    for m, r in result["methods"].items():
        t, c = r["targets"]["ssim"], r.get("controls", {}).get("ssim", {})
        ci = (f"single repeats {min(t['auc_per_repeat']):.2f}–{max(t['auc_per_repeat']):.2f}" if m == "random"
              else f"{t['auc_ci95'][0]:.2f}–{t['auc_ci95'][1]:.2f}")
        lines.append(f"| `{m}` | {t['auc']:.2f} | {ci} | {t['mean']:.3f} | {c.get('auc', float('nan')):.2f} |")
    return "\n".join(lines)


def overlap_table(result: dict) -> str:
    """Overlap of the methods' top-k sets, target by target, averaged (1 = identical)."""
    between = result["overlap"]["between"]
    names = list(between)
    lines = ["| | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| `{a}` | " + " | ".join(f"{between[a][b]:.2f}" for b in names) + " |" for a in names]
    return "\n".join(lines)


def verdict(result: dict) -> str:
    """The issue's target: MUCS AUC ≥ 0.75 on SSIM for targets, controls near 0.5, beats every baseline."""
    m = result["methods"]
    if "mucs" not in m:
        return "MUCS not evaluated yet."
    t = m["mucs"]["targets"]["ssim"]["auc"]
    c = m["mucs"].get("controls", {}).get("ssim", {}).get("auc", float("nan"))
    others = {k: v["targets"]["ssim"]["auc"] for k, v in m.items() if k != "mucs"}
    not_beaten = [k for k, v in others.items() if not t > v]
    parts = [f"MUCS targets SSIM AUC = {t:.2f} ({'meets' if t >= 0.75 else 'misses'} the ≥ 0.75 target)",
             f"controls SSIM AUC = {c:.2f} ({'near' if abs(c - 0.5) <= 0.15 else 'not near'} 0.5)",
             "beats every other method on target SSIM AUC" if not not_beaten else
             f"does not beat: {', '.join(not_beaten)}"]
    return "; ".join(parts) + "."


# ------------------------------------------------------------------------------------------------
def add_parser(sub):
    p = sub.add_parser("evaluate", help="counterfactual evaluation of MUCS and baselines (resumable)",
                       description="Train model A, attribute generated targets with each method, retrain without "
                                   "each method's top-k union and measure how much every item changes compared "
                                   "with random removal. Re-running with the same work folder resumes.")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="evaluation scale (default: small)")
    p.add_argument("--data", default=None, help="training set .npz or folder (default: the embedded Fashion-MNIST 1k)")
    p.add_argument("--work", default=None, help="work folder (default: benchmarks/work/counterfactual-<preset>)")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/counterfactual.json)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated methods: " + ", ".join(baselines.method_names()) + ", or ensembles a+b")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--targets", type=int, default=None)
    p.add_argument("--controls", type=int, default=None)
    p.add_argument("--k-frac", type=float, default=None, help="top-k per target as a fraction of N")
    p.add_argument("--random-repeats", type=int, default=None)
    p.add_argument("--noises", type=int, default=None, help="MUCS K")
    p.add_argument("--max-steps", type=int, default=None, help="MUCS unlearning step cap")
    p.add_argument("--lr-factor", type=float, default=None, help="MUCS unlearning lr = training lr ÷ this")
    p.add_argument("--control-design", default=None, choices=["shared", "disjoint"],
                   help="shared: controls in the targets' classes; disjoint: controls only in classes no target uses")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--cached-only", action="store_true",
                   help="compute nothing: report the methods whose retrains are already in the work folder")
    p.set_defaults(fn=cmd_evaluate)


def cmd_evaluate(a):
    from .defaults import DEFAULT_DATA
    from .models import pick_device
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = preset(a.preset, data=a.data or DEFAULT_DATA, n_train=a.n_train, train_steps=a.train_steps,
                 targets=a.targets, controls=a.controls, k_frac=a.k_frac, random_repeats=a.random_repeats,
                 noises=a.noises, max_steps=a.max_steps, lr_factor=a.lr_factor,
                 control_design=a.control_design)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = a.work or os.path.join(root, "benchmarks", "work", f"counterfactual-{a.preset}")
    out = a.out or os.path.join(root, "benchmarks", "results", "counterfactual.json")
    ev = Evaluation(cfg, work, device=str(pick_device(a.device)), cached_only=a.cached_only)
    try:
        result = ev.run(methods, out_json=out)
    except _Missing as e:
        raise MucsError(f"--cached-only: nothing to report yet (missing: {e})") from e
    print(markdown_table(result), ci_table(result), overlap_table(result), sep="\n\n")
    print(verdict(result))
    print(f"computed this run: {ev.computed}; wrote {out}")
    sys.stdout.flush()
