"""The pieces of work, as plain functions: each checks the work folder's content-addressed cache
first and computes only on a miss, so a stopped run resumes and two runs never disagree. They run
in-process (serial engine) or as Ray tasks; each returns a small dict with what it produced, the
compute seconds recorded with the artefact and whether it was computed now.

    retrained(job, removed, why, retrain)            -> model folder        (models/<key16>/)
    generated(job, model)                            -> targets + controls  (generated/<key16>.safetensors)
    attributed(job, method, i, model_a, before, ...) -> one target's scores (attributions/<method>/...)
    measured(job, model_a, before, after)            -> similarities per group and metric

The retrain function is a plain callable `retrain(data, removed, options, out_dir) -> out_dir`
(as in the dattri and TRAK libraries): `train_without` by default.
"""
import functools
import json
import os
import time

import numpy as np

from ..method import baselines
from ..cache import atomic_write, save_arrays
from ..errors import MucsError
from .plan import CTX_SEED, Job, groups_of

_CONTEXTS: dict = {}   # per process: one baselines.Context (model A, attributor with its loss caches) per key


def train_without(data, removed, options, out_dir, device: str = "cpu") -> str:
    """The default retrain: `mucs.sources.train` from scratch, same seed and recipe, without `removed`."""
    from ..sources.train import train
    train(data, out_dir, options, device=device, exclude=np.asarray(removed, np.int64))
    return out_dir


def default_retrain(device: str = "cpu"):
    return functools.partial(train_without, device=device)


def _threads(job: Job) -> None:
    if job.threads:
        import torch
        torch.set_num_threads(int(job.threads))


def _path(model) -> str:
    return model["path"] if isinstance(model, dict) else model


def retrained(job: Job, removed, why: str = "", retrain=None, seed=None) -> dict:
    """The model trained without `removed` (cached by removed set + recipe + data); `seed`: a
    replicate's training seed (default the recipe's train_seed)."""
    removed = np.array(sorted(int(i) for i in removed), np.int64)
    out = job.model_dir(removed, seed)
    rec = job.model_record(out)
    computed = False
    if rec is None:
        job.refuse(f"the model {why or out}")
        _threads(job)
        options = job.cfg.train_options(seed)
        steps = options.steps
        job.say(f"training {why or 'model'}: {len(job.data()) - len(removed)} images ({len(removed)} removed), "
                f"{steps} steps")
        t0 = time.perf_counter()
        (retrain or default_retrain(job.device))(job.data(), removed, options, out)
        seconds = time.perf_counter() - t0
        atomic_write(out + ".json", json.dumps(dict(removed=removed.tolist(), why=why, seconds=seconds)).encode())
        rec = job.model_record(out) or dict(train_seconds=seconds)
        computed = True
    return dict(path=out, removed=int(len(removed)), seconds=float(rec.get("train_seconds", 0.0)), computed=computed)


def load_model(job: Job, model):
    from ..sources.models import load_model as load
    return load(_path(model), job.device)


def generated(job: Job, model) -> dict:
    """{group: (n, H, W, C) uint8} sampled by `model` (a path or retrained()'s dict), cached."""
    from ..sources.generate import generate
    path = _path(model)
    hit = job.cached_generation(path)
    computed = hit is None
    if hit is None:
        job.refuse(f"the generated items of {path}")
        _threads(job)
        it = job.items()
        m = load_model(job, path)
        t0 = time.perf_counter()
        out = {g: generate(m, it[g]["labels"], it[g]["seeds"], job.cfg.sample_steps)
               for g in ("targets", "controls") if it[g]["seeds"]}
        hit = dict(out, seconds=np.array(time.perf_counter() - t0))
        save_arrays(job.generated_path(path), job.generated_key(path), **hit)
    seconds = float(hit.pop("seconds", 0.0))
    return dict(path=path, images=hit, seconds=seconds, computed=computed)


def context(job: Job, model_a) -> baselines.Context:
    """The attribution context of `model_a` (a loaded model): the same object for the same model
    object, data, settings and cache folder, a new one when any of them differs. Only the last one
    is kept (it holds the model, so the id cannot be reused while it is kept)."""
    settings = json.dumps(job.cfg.mucs_settings().to_dict(), sort_keys=True, default=str)
    key = (id(model_a), model_a.fingerprint(), job.data().fingerprint(), settings, os.path.join(job.work, "cache"),
           str(job.device), json.dumps(job.cfg.method_options, sort_keys=True))
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        _CONTEXTS.clear()
        ctx = baselines.Context(model=model_a, data=job.data(), settings=job.cfg.mucs_settings(),
                                cache_dir=os.path.join(job.work, "cache"), seed=CTX_SEED,
                                options={k: dict(v) for k, v in job.cfg.method_options.items()})
        _CONTEXTS[key] = ctx
    return ctx


_MODEL: dict = {}      # per process: the last few models A loaded by _model_a (tasks of one run share them;
                 # one per replicate seed, so alternating measurements do not reload the attributed one)


def _model_a(job: Job, model_a):
    """A loaded model A from a path or retrained()'s dict (loaded once per process)."""
    if not isinstance(model_a, (str, dict)):
        return model_a
    path = os.path.abspath(_path(model_a))
    rec = os.path.join(path, "mucs_train.json")
    key = (path, str(job.device), os.path.getmtime(rec) if os.path.exists(rec) else None)
    if key not in _MODEL:      # a folder trained again since is loaded again
        for old in [k for k in _MODEL if k[0] == path] + list(_MODEL)[:max(0, len(_MODEL) - 3)]:
            _MODEL.pop(old, None)
        _MODEL[key] = load_model(job, path)
    return _MODEL[key]


def attributed(job: Job, method: str, i: int, model_a, before, *after) -> dict:
    """Target i's (N,) scores by the single method `method`, cached per method, target, model A,
    data and MUCS settings. `before` is model A's generated() result (or its images); `after`
    only orders the task (the first target of a MUCS-type method fills the shared loss caches)."""
    from ..cache import load_arrays
    from ..sources.data import QueryImage, to_model_range
    images = before["images"] if "images" in before else before
    img = images["targets"][i]
    model = _model_a(job, model_a)
    key = job.attribution_key(method, model.fingerprint(), i, img)
    path = job.attribution_path(method, i, key)
    hit = load_arrays(path, key)
    computed = hit is None
    if hit is None:
        job.refuse(f"{method}'s attribution of target {i}")
        _threads(job)
        ctx = context(job, model)
        label = job.items()["targets"]["labels"][i]
        t0 = time.perf_counter()
        ctx.info.pop(("mucs", i), None)
        ctx.memo.pop((method, int(i)), None)      # the disk cache decides what is computed, not the memo
        sc = baselines.scores(method, ctx, QueryImage(to_model_range(img), []), label, query_id=i)
        dt = time.perf_counter() - t0
        info = ctx.info.get(("mucs", i), {})
        other = ctx.info.get((method, i), {}) if method in ("dtrak", "trak", "abu") else {}
        # D-TRAK/TRAK: the one-off feature pass apart from the per-query cost
        times = {f"seconds_{k}": np.array(v) for k, v in other.get("stage_times", {}).items()}
        hit = dict(scores=np.asarray(sc, np.float64), seconds=np.array(dt), **times,
                   **{k: np.array(v) for k, v in info.items()})
        save_arrays(path, key, **hit)
        job.say(f"  {method} target {i}: {dt:.1f} s" + "".join(f", {k}={v}" for k, v in info.items()))
    return dict(method=method, i=int(i), scores=np.asarray(hit["scores"], np.float64),
                seconds=float(hit.get("seconds", 0.0)), computed=computed,
                stages={k[8:]: float(v) for k, v in hit.items() if k.startswith("seconds_")})


def measured(job: Job, model_a, before, after) -> dict:
    """{group: {metric: (n,) similarity}} between model A's items and another model's."""
    from .metrics import similarities
    _threads(job)
    b = before["images"] if "images" in before else before
    a = after["images"] if "images" in after else after
    labels = {g: job.items()[g]["labels"] for g in groups_of(b)}
    model = _model_a(job, model_a)
    if set(groups_of(a)) != set(groups_of(b)):
        raise MucsError("generated items of the two models differ in their groups")
    # np.array: writable copies (a Ray task receives read-only arrays, which torch warns about)
    return {g: similarities(np.array(b[g]), np.array(a[g]), model, labels[g]) for g in groups_of(b)}
