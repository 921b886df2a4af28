"""The counterfactual test (docs/method.md, "How attribution quality is judged"), resumable, in four parts:

- `config`  what is evaluated: EvalConfig and the presets;
- `plan`    where every artefact lives in the work folder and whether it is cached (keys, paths,
            items, random removal sets); `steps` the plain functions that compute one artefact
            each after checking that cache (retrain, generate, attribute, measure);
- `run`     the protocol as a graph of steps on an engine (`engine`: serial, or Ray tasks that
            declare their CPUs/GPUs, locally or on a cluster);
- `summary` AUCs, intervals and overlaps from the measurements; `report` the tables and JSON.

1. train model A on the (sub)set (or reuse it); generate targets and as many controls from fixed
   seeds and classes;
2. attribute every target with each method (cached per method, target and recipe);
3. for each method retrain from scratch, same seed and recipe, without the union of its top-k
   sets (cached by a hash of the removed set + recipe), and regenerate every item from its seed;
   random removal is the same procedure with random scores, repeated with several seeds;
4. similarity before/after (SSIM, pixel MSE, cosine of model A's features), and per method,
   group and metric the AUC against random removal and the mean relative change; plus overlap
   statistics within a method across targets and between methods.

`Evaluation` ties them together for one work folder.
"""
import os
import time
from typing import Callable, Optional

import numpy as np

from ..method import baselines
from . import run as _run
from . import steps
from .config import DEFAULT_METHODS, GROUPS, METRICS, PRESETS, EvalConfig, preset
from .engine import RayEngine, SerialEngine, make_engine
from .plan import Job, balanced_subset, make_job, method_scores
from .report import ci_table, markdown_table, overlap_table, verdict, write_json
from .steps import train_without
from .summary import summarise

__all__ = ["Evaluation", "EvalConfig", "preset", "PRESETS", "DEFAULT_METHODS", "GROUPS", "METRICS", "Job",
           "SerialEngine", "RayEngine", "make_engine", "markdown_table", "ci_table", "overlap_table", "verdict",
           "train_without", "balanced_subset"]


class Evaluation:
    """One work folder: cached data subset, models, generated items, attributions and results.

    retrain: `retrain(data, removed, options, out_dir) -> out_dir` (default: `train_without` on
    `device`); engine: where the steps run (default: serial, in this process); log: the driver's
    messages (default: print; when given, the steps themselves stay quiet)."""

    def __init__(self, cfg: EvalConfig, work: str, device: str = "cpu", log: Optional[Callable] = None,
                 cached_only: bool = False, retrain: Optional[Callable] = None, engine=None,
                 threads: Optional[int] = None):
        self.job = make_job(cfg, work, device=str(device), threads=threads, verbose=log is None)
        self.job.read_only = bool(cached_only)
        self.cfg, self.work, self.device = self.job.cfg, self.job.work, self.job.device
        self.cached_only = bool(cached_only)
        self.log = log or (lambda msg: print(msg, flush=True))
        self.retrain = retrain
        self.engine = engine
        self.computed = dict(retrains=0, generations=0, attributions=0)
        self.seconds: dict = {}

    # --- the plan, for callers and tests ------------------------------------------------------
    def data(self):
        return self.job.data()

    def k(self) -> int:
        return self.job.k()

    def items(self) -> dict:
        return self.job.items()

    def model_key(self, removed, seed: Optional[int] = None) -> str:
        return self.job.model_key(removed, seed)

    def model_dir(self, removed, seed: Optional[int] = None) -> str:
        return self.job.model_dir(removed, seed)

    def top_sets(self, scores: np.ndarray) -> list:
        return self.job.top_sets(scores)

    def random_sets(self, r: int) -> list:
        return self.job.random_sets(r)

    # --- single steps, in this process ---------------------------------------------------------
    def load(self, path):
        return steps.load_model(self.job, path)

    def generated(self, model_path: str) -> dict:
        """{group: (n, H, W, C) uint8} sampled by the model in `model_path` (cached)."""
        return steps.generated(self.job, model_path)["images"]

    def context(self, model_a) -> baselines.Context:
        """The attribution context of `model_a` (a new one for another model)."""
        return steps.context(self.job, model_a)

    def target_scores(self, method: str, model_a, targets_uint8) -> np.ndarray:
        """(T, N) scores of every target by `method` (an ensemble: rank-averaged components), cached."""
        before = dict(targets=np.asarray(targets_uint8))
        parts = [[steps.attributed(self.job, p, i, model_a, before)["scores"] for i in range(len(targets_uint8))]
                 for p in baselines.components(method)]
        return method_scores(parts)

    # --- the whole protocol -------------------------------------------------------------------
    def run(self, methods=DEFAULT_METHODS, out_json: Optional[str] = None) -> dict:
        """Measure random removal and every method, write results.json in the work folder (and
        `out_json`) after each measurement, and return the results."""
        methods = list(methods)
        t_start = time.perf_counter()
        engine = SerialEngine() if self.cached_only or self.engine is None else self.engine
        self.log(f"[{time.strftime('%H:%M:%S')}] counterfactual evaluation: N={len(self.data())}, k={self.k()}, "
                 f"{self.cfg.targets} targets, {self.cfg.controls} controls, methods: "
                 f"{', '.join(m for m in methods if m != 'random')}; work folder {self.work}; engine {engine.describe()}"
                 + ("; cached only" if self.cached_only else ""))

        def publish(st) -> dict:
            result = summarise(self.job, st, methods, engine=engine.name)
            result["timing"]["this_run_seconds"] = time.perf_counter() - t_start
            write_json(os.path.join(self.work, "results.json"), result)
            if out_json and os.path.abspath(out_json) != os.path.abspath(os.path.join(self.work, "results.json")):
                write_json(out_json, result)
            return result
        st = _run.run(self.job, methods, engine, retrain=self.retrain, cached_only=self.cached_only,
                      on_progress=publish)
        for k, v in st.computed.items():
            self.computed[k] += v
        self.seconds.update(st.seconds)
        return publish(st)

    def compute_seconds(self) -> dict:
        return _run.State(seconds=dict(self.seconds)).compute_seconds()
