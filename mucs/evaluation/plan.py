"""Plan: what the evaluation consists of and where every artefact lives in the work folder.

A `Job` is small and picklable (configuration, work folder, training-set file, device), so it can
travel to a task on another process or node. Everything here is cheap: keys, paths, items, the
random removal sets, and whether an artefact is already cached. Nothing trains or attributes.

Work folder layout (content-addressed; kept compatible with every earlier version):

    data-<key12>.npz                      the balanced training subset (when n_train < the source)
    models/<model_key16>/                 model A (nothing removed) and every retrain (diffusers layout)
    models/<model_key16>.json             what was removed, why, and the training seconds
    generated/<model_key16>.safetensors   every target and control sampled by that model (keyed)
    generated/<model_key16>-<items8>.safetensors  the same for another set of items, when the first name is taken
    attributions/<method>/target###-<key16>.safetensors   one target's scores by one method (keyed)

(keyed entries of the earlier format, `.npz` in place of `.safetensors`, are read and migrated)
    cache/                                MUCS's loss caches (L_o, L_null)
    results.json                          the latest table
"""
import io
import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ..method import baselines
from ..cache import CACHE_EXT, atomic_write, cache_key, load_arrays
from ..errors import MucsError
from .config import GROUPS, EvalConfig

_DATA: dict = {}   # per process: training-set file -> TrainingSet (a task process reuses it across tasks)


@dataclass(eq=False)
class Job:
    cfg: EvalConfig
    work: str             # absolute path; on a cluster, a folder every node sees at the same path
    data_path: str        # the training set the tasks load (the subset in the work folder, or cfg.data)
    device: str = "cpu"
    threads: Optional[int] = None    # torch CPU threads in each task (None: leave as is)
    verbose: bool = True             # tasks print one line per computed artefact
    read_only: bool = False          # --cached-only: a step that would compute raises instead

    def refuse(self, what: str) -> None:
        if self.read_only:
            raise MucsError(f"--cached-only: {what} is not in the work folder {self.work}")

    def say(self, msg: str) -> None:
        if self.verbose:
            import time
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # --- data and items -----------------------------------------------------------------------
    def data(self):
        from ..sources.data import load_dataset
        if self.data_path not in _DATA:
            _DATA.clear()
            _DATA[self.data_path] = load_dataset(self.data_path)
        return _DATA[self.data_path]

    def k(self) -> int:
        return max(1, int(round(self.cfg.k_frac * len(self.data()))))

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

    # --- models -------------------------------------------------------------------------------
    def model_key(self, removed, seed: Optional[int] = None) -> str:
        """The key of the model trained without `removed` (seed: a replicate's, default train_seed)."""
        opts = asdict(self.cfg.train_options(seed))
        opts["channels"] = list(opts["channels"])
        opts.pop("log_every", None)
        return cache_key(kind="retrain", data=self.data().fingerprint(), opts=opts,
                         removed=sorted(int(i) for i in removed))

    def model_dir(self, removed, seed: Optional[int] = None) -> str:
        return os.path.join(self.work, "models", self.model_key(removed, seed)[:16])

    def model_record(self, model_path: str) -> Optional[dict]:
        """The training record of a finished model in `model_path`, else None (missing or unfinished)."""
        rec = _read_json(os.path.join(model_path, "mucs_train.json"))
        if (isinstance(rec, dict) and rec.get("steps_done") == self.cfg.train_options().steps
                and os.path.isdir(os.path.join(model_path, "unet"))):
            return rec
        return None

    # --- generated items ----------------------------------------------------------------------
    def generated_key(self, model_path: str) -> str:
        return cache_key(kind="generated", model=os.path.basename(model_path), items=self.items(),
                         steps=self.cfg.sample_steps)

    def _generated_names(self, model_path: str) -> tuple:
        """(key, generated/<model>.safetensors, generated/<model>-<items8>.safetensors) for this evaluation's items."""
        key = self.generated_key(model_path)
        base = os.path.join(self.work, "generated", os.path.basename(model_path))
        return key, f"{base}{CACHE_EXT}", f"{base}-{key[:8]}{CACHE_EXT}"

    def generated_path(self, model_path: str) -> str:
        """Where the items of this evaluation sampled by `model_path` are written: generated/<model>.safetensors,
        unless that file holds another evaluation's items (e.g. 20 targets where this one has 40); then
        a name with the items' key, so both stay cached side by side."""
        key, plain, keyed = self._generated_names(model_path)
        return plain if not os.path.exists(plain) or load_arrays(plain, key) is not None else keyed

    def cached_generation(self, model_path: str) -> Optional[dict]:
        # read each candidate once (generated_path would load the plain file just to choose)
        key, plain, keyed = self._generated_names(model_path)
        return load_arrays(plain, key) or load_arrays(keyed, key)

    # --- attributions -------------------------------------------------------------------------
    def attribution_key(self, method: str, model_fingerprint: str, i: int, img) -> str:
        it = self.items()["targets"]
        s = self.cfg.mucs_settings()
        opts = self.cfg.resolved_options(method)      # dtrak, trak, abu: their options (other keys unchanged)
        return cache_key(kind="scores", method=method, model=model_fingerprint, data=self.data().fingerprint(),
                         settings=settings_key(s) if method.startswith("mucs") else None, ctx_seed=CTX_SEED,
                         label=it["labels"][i], seed=it["seeds"][i],
                         image=cache_key(img=np.asarray(img).tobytes().hex()), **({} if opts is None else dict(options=opts)))

    def attribution_path(self, method: str, i: int, key: str) -> str:
        return os.path.join(self.work, "attributions", method, f"target{i:03d}-{key[:16]}{CACHE_EXT}")

    def cached_attribution(self, method: str, model_fingerprint: str, i: int, img) -> Optional[dict]:
        key = self.attribution_key(method, model_fingerprint, i, img)
        return load_arrays(self.attribution_path(method, i, key), key)

    # --- removal sets -------------------------------------------------------------------------
    def top_sets(self, scores: np.ndarray) -> list:
        from ..method.unlearn import top_k
        return [top_k(s, self.k()) for s in scores]

    def random_sets(self, r: int) -> list:
        """Random removal r: a random top-k set per target, as if a method's scores were random."""
        N = len(self.data())
        return self.top_sets(np.stack([baselines.random_scores(N, r, i) for i in range(self.cfg.targets)]))


CTX_SEED = 0   # baselines.Context seed of every attribution (part of the attribution keys)

# The MUCS settings that attribution keys have held since the noise-range change (commit f331403), when
# benchmarks/work/cf-full was started. A setting added since (screen_noises, screen_keep, fragile_refs, ...)
# enters a key only when it differs from its default: its default is the behaviour before it existed, so
# the attributions cached before it was added stay valid, and a non-default choice gets its own key.
KEY_SETTINGS = ("noises", "noise_fraction", "rho", "sigma_min", "sigma_max", "seed", "train_noise", "p_mean", "p_std",
                "loss_weighting", "sigma_data", "null_batches", "null_batch_size", "batch_size", "lr", "lr_factor",
                "weight_decay", "lam", "tol", "max_steps", "frozen", "top_k", "bounded", "retain",
                "consistent_noise", "normalised", "eval_batch_size", "default_lr")


def settings_key(s) -> dict:
    """The part of the MUCS settings `s` that enters an attribution key (see KEY_SETTINGS)."""
    from ..settings import Settings
    d, default = s.to_dict(), Settings().to_dict()
    return {k: v for k, v in d.items() if k in KEY_SETTINGS or k not in default or v != default[k]}


def make_job(cfg: EvalConfig, work: str, device: str = "cpu", threads: Optional[int] = None,
             verbose: bool = True) -> Job:
    """The job for `cfg` in `work`; writes the balanced training subset into the work folder once."""
    from ..sources.data import load_dataset
    cfg = cfg.validate()
    work = os.path.abspath(work)
    os.makedirs(work, exist_ok=True)
    src = load_dataset(cfg.data)
    n = len(src) if cfg.n_train is None else cfg.n_train
    if n > len(src):
        raise MucsError(f"n_train={n} but {cfg.data} has only {len(src)} images")
    path = cfg.data
    if n != len(src):
        key = cache_key(kind="subset", data=src.fingerprint(), n=n, seed=cfg.data_seed)
        path = os.path.join(work, f"data-{key[:12]}.npz")
        if not os.path.exists(path):
            idx = balanced_subset(src.labels, len(src), n, cfg.data_seed)
            buf = io.BytesIO()
            extra = {} if src.labels is None else dict(labels=src.labels[idx])
            if src.class_names:
                extra["class_names"] = np.array(src.class_names)
            np.savez(buf, images=src.images[idx], source_indices=idx, **extra)
            atomic_write(path, buf.getvalue())
    else:
        _DATA.clear()
        _DATA[path] = src
    return Job(cfg=cfg, work=work, data_path=path, device=str(device), threads=threads, verbose=verbose)


def balanced_subset(labels, total: int, n: int, seed: int) -> np.ndarray:
    """n of `total` indices, as balanced over the classes as possible, chosen at random, sorted."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(total, n, replace=False))
    classes = np.unique(labels)
    per = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    out: list = []
    j = 0
    while len(out) < n:
        for c in classes:
            if j < len(per[c]) and len(out) < n:
                out.append(per[c][j])
        j += 1
    return np.sort(np.array(out, np.int64))


def method_scores(parts: list) -> np.ndarray:
    """(T, N) scores of a method from its components' (T, N) scores: the component itself, or the
    rank average per target for an ensemble 'a+b'."""
    if len(parts) == 1:
        return np.asarray(parts[0])
    return np.stack([baselines.rank_average(c) for c in zip(*parts)])


def union(sets) -> np.ndarray:
    return np.unique(np.concatenate(sets)).astype(np.int64)


def random_names(cfg: EvalConfig) -> list:
    return [f"random#{r}" for r in range(cfg.random_repeats)]


def check_methods(methods) -> tuple:
    """The methods to compare (random removal is always measured) and the single methods they need."""
    methods = [m for m in methods if m != "random"]
    singles = []
    for m in methods:
        for p in baselines.components(m):
            if p not in singles:
                singles.append(p)
    return methods, singles


def groups_of(generated: dict) -> list:
    return [g for g in GROUPS if g in generated]


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
