"""MUCS end to end: noise set → original losses (cached) → null loss (cached) → mirrored
unlearning → unlearned losses → skew → top-k."""
import csv
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from .. import __version__
from ..cache import BoundedMemo, atomic_write_dir, cache_key, default_cache_dir, load_arrays
from ..cache import save_arrays_best_effort as save_arrays
from ..checks import check_request_memory, dumps_strict, require_finite
from ..defaults import settings_for
from ..sources.data import QueryImage, TrainingSet, to_model_range, to_uint8
from .distributed import Group
from ..errors import MucsError
from ..sources.inputs import ModelInputs, model_inputs
from .losses import LOSS_VERSION, loss_matrix, null_loss, screen_columns, train_noise_for, trained_loss
from ..sources.models import public_config
from .noise import NoiseSet, make_noise_set
from ..progress import Reporter
from ..settings import FLOAT_TOLERANCE_ONLY, SCORING_ONLY, Settings
from .unlearn import frozen_names, skew, top_k, unlearn, unlearning_lr

SHIPPED_CACHE = "cache"   # a model folder's read-only, precomputed caches
MEMO_ENTRIES, MEMO_BYTES = 4, 1 << 30   # noise sets and L_o matrices kept in memory (the newest always)
log = logging.getLogger("mucs")


@dataclass
class Attribution:
    """All scores, the top-k, and everything needed to explain and reproduce the run."""
    scores: np.ndarray                 # (N,) skew per training item, by stable index
    top: np.ndarray                    # (k,) indices, best first
    loss_original: np.ndarray          # (N,) mean over noises of L_o
    loss_unlearned: np.ndarray         # (N,) mean over noises of L_u
    loss_null: Optional[float]         # None: a run of a method without L_null (D-TRAK, TRAK, AbU, NN)
    steps: int
    converged: bool
    curve: list
    stage_times: dict
    settings: dict
    query: dict                        # label, class name, conversions, source
    query_image: Optional[np.ndarray] = None   # (H, W, C) uint8, what the model saw
    labels: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)   # model/data fingerprints, cache hits, lr, version
    captions: Optional[list] = None            # the training items' captions (text-conditional models)

    def result_json(self) -> dict:
        return dict(settings=self.settings, query=self.query, loss_null=self.loss_null,
                    unlearning_steps=self.steps, converged=self.converged, stage_times=self.stage_times,
                    top_k=[int(i) for i in self.top], top_k_scores=[float(self.scores[i]) for i in self.top],
                    curve=self.curve, **self.info)

    def scores_csv(self, class_names=None) -> str:
        """Every training item, best first: rank, index, score, label, class, L_o, L_u (and caption, for
        a text-conditional model's run) — the run folder's scores.csv and the app's CSV export; the one
        CSV writer."""
        order = top_k(self.scores, len(self.scores))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(SCORES_CSV_COLUMNS + (("caption",) if self.captions is not None else ()))
        for rank, i in enumerate(order, 1):
            lab: Any = "" if self.labels is None else int(self.labels[i])   # "" in the CSV when unlabelled
            name = class_names[lab] if lab != "" and class_names and 0 <= lab < len(class_names) else ""
            row = [rank, int(i), f"{self.scores[i]:.8g}", lab, csv_text(name), _cell(self.loss_original[i]),
                   _cell(self.loss_unlearned[i])]
            w.writerow(row + ([csv_text(self.captions[i])] if self.captions is not None else []))
        return buf.getvalue()

    def items_json(self, class_names=None) -> list:
        """Every training item as a dict, best first, with the columns of scores.csv (rank, index,
        score, label, class, loss_original, loss_unlearned[, caption]): the JSON export's `items`.
        A value that is not finite (an item screening left out) is null."""
        def num(v):
            v = float(v)
            return v if np.isfinite(v) else None
        out = []
        for rank, i in enumerate(top_k(self.scores, len(self.scores)), 1):
            lab = None if self.labels is None else int(self.labels[i])
            row = dict(rank=rank, index=int(i), score=num(self.scores[i]), label=lab,
                       **{"class": class_names[lab] if lab is not None and class_names and 0 <= lab < len(class_names)
                          else ""},
                       loss_original=num(self.loss_original[i]), loss_unlearned=num(self.loss_unlearned[i]))
            if self.captions is not None:
                row["caption"] = str(self.captions[i])
            out.append(row)
        return out

    def save(self, out_dir: str, class_names=None) -> None:
        """Write scores.csv, result.json, losses.npz and query.png into `out_dir`, atomically."""
        atomic_write_dir(out_dir, self.files(class_names))

    def files(self, class_names=None) -> dict:
        """The run files {name: bytes}: scores.csv, result.json, losses.npz and query.png (when known)."""
        from PIL import Image
        buf = io.BytesIO()
        labels = {} if self.labels is None else dict(labels=np.asarray(self.labels, np.int64))
        if self.captions is not None:
            labels["captions"] = np.asarray(self.captions, dtype=str)
        # a method without losses (all NaN: D-TRAK, TRAK, the NN baselines) saves none: every saved number is finite
        losses = {} if np.isnan(self.loss_original).all() and np.isnan(self.loss_unlearned).all() else dict(
            loss_original=self.loss_original, loss_unlearned=self.loss_unlearned)
        arrays = dict(scores=self.scores, **losses, **labels)
        np.savez(buf, **arrays)   # type: ignore[arg-type]  # numpy's stub types **arrays against savez's own flags
        files = {"scores.csv": self.scores_csv(class_names).encode(),
                 "result.json": dumps_strict(self.result_json(), "result.json", indent=1).encode(),
                 "losses.npz": buf.getvalue()}
        if self.query_image is not None:
            png = io.BytesIO()
            q = self.query_image
            Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q).save(png, format="PNG")
            files["query.png"] = png.getvalue()
        return files

    @classmethod
    def load(cls, out_dir: str) -> "Attribution":
        """Reopen a saved run (as written by `save`); every file's shape is checked (mucs.runfiles)."""
        from ..runfiles import read_run
        r, arrays, q = read_run(out_dir)
        scores, lo, lu, labels = (arrays["scores"], arrays["loss_original"], arrays["loss_unlearned"],
                                  arrays.get("labels"))
        captions = [str(c) for c in arrays["captions"]] if "captions" in arrays else None
        keys = ("settings", "query", "loss_null", "unlearning_steps", "converged", "stage_times", "top_k",
                "top_k_scores", "curve")
        return cls(scores=scores, top=np.array(r["top_k"], np.int64), loss_original=lo, loss_unlearned=lu,
                   loss_null=r["loss_null"], steps=r["unlearning_steps"], converged=r["converged"], curve=r["curve"],
                   stage_times=r["stage_times"], settings=r["settings"], query=r["query"], query_image=q,
                   labels=labels, info={k: v for k, v in r.items() if k not in keys}, captions=captions)


MEMMAP_BYTES = 1 << 30   # loss matrices from this size on (e.g. N = 2.7M items × K = 100) are memory-mapped
SCORES_CSV_COLUMNS = ("rank", "index", "score", "label", "class", "loss_original", "loss_unlearned")


def _cell(v) -> str:
    """A loss for scores.csv: empty for a method that has none (NaN: D-TRAK, TRAK, the NN baselines)."""
    return f"{v:.8g}" if np.isfinite(v) else ""


@dataclass
class UnlearnRecord:
    """What a result keeps of an unlearning run (the weights themselves are not kept)."""
    steps: int
    converged: bool
    curve: list
    lr: float


def csv_text(text) -> str:
    """A class name or caption for a CSV cell: one starting with = + - @ (or a tab or CR) gets a leading
    apostrophe, so a spreadsheet shows it as text instead of running it as a formula (CSV injection)."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _finite_cache(arrays: dict, masked: bool = False) -> bool:
    """Every float entry of a cache finite (`masked`: NaN marks a pair screened scoring skipped; inf never)."""
    for a in arrays.values():
        if a.dtype.kind == "f" and (np.isinf(a).any() if masked else not np.isfinite(a).all()):
            return False
    return True


class Attributor:
    """Holds a model, its training set and the query-independent parts (noise set, L_o, L_null),
    computed once and cached on disk, so that each query pays only for unlearning and L_u."""

    def __init__(self, model, data: TrainingSet, settings: Optional[Settings] = None, cache_dir: Optional[str] = None,
                 allow_untrained: bool = False):
        data.check_matches(model)
        self.model, self.data = model, data
        # no settings: the model's recommended ones (its mucs_settings.json, else the paper's), as the CLI and app
        self.settings = self.checked(settings or settings_for(model.path or ""))
        self.cache_dir = cache_dir or default_cache_dir()
        self.allow_untrained = allow_untrained   # score a network that is not trained on this data (research only)
        self._inputs: Optional[ModelInputs] = None
        self._trained: dict = {}
        self._noise = BoundedMemo(MEMO_ENTRIES, MEMO_BYTES)   # a failed request's noise sets are dropped
        self._lo = BoundedMemo(MEMO_ENTRIES, MEMO_BYTES)
        self._null: dict = {}
        self.cache_unlearned = False   # keep L_u matrices on disk (see `unlearned`)

    def checked(self, s: Settings) -> Settings:
        """`s` validated, with the unlearning lr it gives this model in range and something left to
        unlearn: before any work."""
        unlearning_lr(self.model, s.validate())
        names = [n for n, _ in self.model.unet.named_parameters()]
        if len(frozen_names(self.model.unet, s.frozen, self.model.trainable_names(s.unlearn_params))) == len(names):
            raise MucsError(f"frozen {','.join(s.frozen)} (with unlearn_params {s.unlearn_params}) matches all "
                            f"{len(names)} parameters: nothing is left to unlearn")
        return s

    # --- query-independent parts -------------------------------------------------------------
    def noise_set(self, s: Settings, seed_offset: int = 0) -> NoiseSet:
        key = (s.noises, s.noise_fraction, s.rho, s.seed + seed_offset, s.sigma_min, s.sigma_max)
        ns = self._noise.get(key)
        if ns is None:
            log.info("noise set: building K=%d, f=%g, σ %g..%g, seed %d (not in memory; it is cheap and never cached on disk)",
                     s.noises, s.noise_fraction, s.sigma_min, s.sigma_max, s.seed + seed_offset)
            shape = self.model.x0_shape
            try:
                ns = make_noise_set(self.model.scheduler.alphas_cumprod, shape, K=s.noises,
                                    fraction=s.noise_fraction, rho=s.rho, seed=s.seed + seed_offset,
                                    sigma_min=s.sigma_min, sigma_max=s.sigma_max)
            except ValueError as e:
                raise MucsError(str(e)) from e
            self._noise[key] = ns
        return ns

    def check_memory(self, s: Settings) -> dict:
        """Refuse settings whose estimated memory does not fit (see mucs.checks.check_request_memory)."""
        return check_request_memory(self.model, len(self.data), s, "this attribution")

    def loss_matrix(self, unet, ns: NoiseSet, s: Settings, report=None, stage: str = "losses", items=None) -> np.ndarray:
        """L[i, k] for the rows `items` (default: every training item); under torch.distributed each
        rank computes its shard of the rows and every rank gets the whole matrix."""
        rows = np.arange(len(self.data)) if items is None else np.asarray(items, np.int64)
        group = Group.current()
        part = rows if group is None else group.shard(rows)
        L = loss_matrix(unet, self.model, self.inputs(report), ns, s.eval_batch_size, report, stage, s.loss_weighting,
                        s.sigma_data, items=part, out=self._matrix(len(part), len(ns)), precision=s.precision,
                        memory_format=s.memory_format, compile=s.compile)
        return L if group is None else group.gather_rows(L, len(rows))

    def inputs(self, report=None):
        """The training set as the denoiser sees it (VAE latents, caption embeddings: encoded once, cached)."""
        if self._inputs is None:
            self._inputs = model_inputs(self.model, self.data, self.cache_dir, report)
        return self._inputs

    def _matrix(self, n: int, k: int):
        """Where an (n, k) loss matrix is written: memory, or for a large one (≥ MEMMAP_BYTES) a
        memory-mapped anonymous temporary file in the cache folder, gone when the array is."""
        if n * k * 4 < MEMMAP_BYTES:
            return None
        import tempfile
        os.makedirs(self.cache_dir, exist_ok=True)
        return np.memmap(tempfile.TemporaryFile(dir=self.cache_dir), np.float32, "w+", shape=(n, k))

    def _cache_path(self, kind: str, key: str) -> str:
        return os.path.join(self.cache_dir, f"{kind}-{key}.npz")

    def _load_cached(self, kind: str, key: str):
        """The cached arrays from the cache folder, else from the read-only `cache/` a model folder
        may ship (the embedded model ships its L_o and L_null there); None on a miss."""
        for folder in (self.cache_dir, os.path.join(self.model.path, SHIPPED_CACHE)):
            path = os.path.join(folder, f"{kind}-{key}.npz")
            hit = load_arrays(path, key)
            if hit is not None and not _finite_cache(hit, masked=kind == "loss_unlearned"):
                # its checksum matches, so it was written so (or edited and re-summed): rebuilt, never used
                log.warning("%s: the cache file %s holds NaN or inf: ignored, recomputing", kind, path)
                continue
            if hit is not None:
                log.info("%s: cache hit %s", kind, path)
                return hit
            if os.path.isfile(path):   # there, but keyed otherwise, partial or corrupt
                log.warning("%s: the cache file %s is corrupt, partial or for other inputs: ignored, recomputing", kind, path)
        log.info("%s: cache miss (key %s, looked in %s and the model's %s/): computing it", kind, key, self.cache_dir,
                 SHIPPED_CACHE)
        return None

    def original_losses(self, s: Settings, report=None) -> tuple:
        """L_o for the noise set of `s`: from memory, else the disk cache, else computed and cached.
        Returns (L_o, was_cached)."""
        ns = self.noise_set(s)
        key = self._lo_key(s)
        hit = self._lo.get(key)
        if hit is not None:
            return hit, True
        hit = self._load_cached("loss_original", key)
        if hit is not None:
            self._lo[key] = hit["loss"]
            return hit["loss"], True
        lo = require_finite("L_o", self.loss_matrix(self.model.unet, ns, s, report, "original losses"), "original losses")
        if save_arrays(self._cache_path("loss_original", key), key, loss=lo):
            log.info("loss_original: rebuilt and cached in %s", self._cache_path("loss_original", key))
        self._lo[key] = lo
        return lo, False

    def null_loss(self, s: Settings, report=None) -> tuple:
        """L_null (cached like L_o; it depends on the architecture, not the weights). Returns (value, was_cached)."""
        key = self._null_key(s)
        if key in self._null:
            return self._null[key], True
        hit = self._load_cached("loss_null", key)
        if hit is not None:
            value = float(hit["loss_null"])
        else:
            value = require_finite("L_null", null_loss(self.model, self.inputs(report), s, report), "null loss")
            if save_arrays(self._cache_path("loss_null", key), key, loss_null=np.array(value)):
                log.info("loss_null: rebuilt (%.4g) and cached in %s", value, self._cache_path("loss_null", key))
        self._null[key] = value
        return value, hit is not None

    def _lo_key(self, s: Settings) -> str:
        return cache_key(kind="loss_original", version=LOSS_VERSION, model=self.model.fingerprint(),
                         data=self.data.fingerprint(), noise=self.noise_set(s).params, prediction=self.model.prediction_type,
                         **self._weighting_key(s), **self._precision_key(s))

    def _null_key(self, s: Settings) -> str:
        return cache_key(kind="loss_null", version=LOSS_VERSION, config=public_config(self.model.unet.config),
                         data=self.data.fingerprint(),
                         scheduler=public_config(self.model.scheduler.config), batches=s.null_batches,
                         batch_size=s.null_batch_size, seed=s.seed, **self._train_noise_key(s), **self._weighting_key(s))

    def cached_parts(self, s: Settings) -> dict:
        """Which query-independent parts of `s` are cached (in memory or on disk) already: nothing is loaded."""
        def on_disk(kind, key):
            return any(os.path.isfile(os.path.join(f, f"{kind}-{key}.npz"))
                       for f in (self.cache_dir, os.path.join(self.model.path, SHIPPED_CACHE)))
        lo, null = self._lo_key(s), self._null_key(s)
        return dict(original_losses=lo in self._lo or on_disk("loss_original", lo),
                    null_loss=null in self._null or on_disk("loss_null", null))

    def estimate(self, s: Optional[Settings] = None):
        """How long one attribution with `s` should take here (mucs.method.estimate.Estimate)."""
        from .estimate import estimate
        return estimate(self, self.checked(s or self.settings))

    @staticmethod
    def _weighting_key(s: Settings) -> dict:
        # only non-default choices enter the keys, so caches made before these options existed stay valid
        return {} if s.loss_weighting == "none" else dict(weighting=s.loss_weighting, sigma_data=s.sigma_data)

    @staticmethod
    def _precision_key(s: Settings) -> dict:
        return {} if s.precision == "fp32" else dict(precision=s.precision)   # fp32 caches keep their keys

    @staticmethod
    def _train_noise_key(s: Settings) -> dict:
        if s.train_noise == "uniform":
            return {}
        if s.train_noise == "uniform_range":
            return dict(train_noise=s.train_noise, sigma_min=s.sigma_min, sigma_max=s.sigma_max)
        return dict(train_noise=s.train_noise, p_mean=s.p_mean, p_std=s.p_std)

    def prepare(self, settings: Optional[Settings] = None, progress=None, cancel=None) -> None:
        """Compute (or load) everything that does not depend on the query."""
        s = self.checked(settings or self.settings)
        self.check_memory(s)
        report = Reporter(progress, cancel)
        with self._noise.request():
            self.original_losses(s, report)
            self.check_trained(s, self.null_loss(s, report)[0])

    TRAINED_RATIO = 0.8   # a trained model's loss is far below L_null; an untrained one's is about L_null

    def check_trained(self, s: Settings, lnull: float) -> float:
        """Refuse to score a network that is not trained on this data: its mean training loss (on L_null's
        first batches, same items and noise) must be below TRAINED_RATIO·L_null, unless `allow_untrained`.
        Returns that loss (recorded in result.json)."""
        key = (s.seed, s.null_batch_size, s.train_noise, s.p_mean, s.p_std, s.sigma_min, s.sigma_max, s.loss_weighting)
        if key not in self._trained:
            self._trained[key] = require_finite("the trained model's loss", trained_loss(self.model, self.inputs(), s),
                                                "the trained-model check")
        loss = self._trained[key]
        if loss >= self.TRAINED_RATIO * lnull and not self.allow_untrained:
            raise MucsError(f"the model does not look trained on this data: its mean training loss here is {loss:.4g}, "
                            f"an untrained network of its architecture scores L_null = {lnull:.4g} (ratio "
                            f"{loss / lnull:.2f}, a trained model is below {self.TRAINED_RATIO}): check --model and "
                            "--data, or pass --allow-untrained to attribute anyway")
        return loss

    def unlearned_losses(self, unet, ns: NoiseSet, lo: np.ndarray, s: Settings, report=None,
                         full_lu: Optional[np.ndarray] = None) -> tuple:
        """L_u on the noise set `ns`: every item on every level, or (screened scoring) every item on a
        few levels and only the `screen_keep` most skewed ones on the rest. Returns (L_u with NaN where
        not computed, mask of fully scored items, screening record or None). With `full_lu` (a full L_u
        of the same unlearned model, from the cache) the entries are read from it instead of computed:
        an (item, level) loss does not depend on which other pairs are computed."""
        N, K = lo.shape
        full = not s.screen_noises or s.screen_noises >= K or s.screen_keep >= N

        def losses(cols, stage, items=None):
            if full_lu is not None:
                rows = full_lu if items is None else full_lu[np.asarray(items)]
                return rows[:, cols]
            return self.loss_matrix(unet, ns if len(cols) == K else ns.subset(cols), s, report, stage, items)
        if full:
            return losses(np.arange(K), "unlearned losses"), np.ones(N, bool), None
        cols = screen_columns(K, s.screen_noises)
        rest = np.setdiff1d(np.arange(K), cols)
        lu = np.full((N, K), np.nan, np.float32)
        lu[:, cols] = losses(cols, "screening")
        keep = top_k(skew(lu[:, cols], lo[:, cols], s.normalised), s.screen_keep)
        lu[np.ix_(keep, rest)] = losses(rest, "unlearned losses", keep)
        mask = np.zeros(N, bool)
        mask[keep] = True
        forwards = N * len(cols) + len(keep) * len(rest)
        return lu, mask, dict(noises=[int(c) for c in cols], kept=int(len(keep)), forwards=int(forwards),
                              forwards_full=int(N * K), saving=float(N * K / forwards))

    def unlearned(self, x: torch.Tensor, label, lnull: float, lo: np.ndarray, s: Settings, report=None,
                  times: Optional[dict] = None, prompt: Optional[str] = None) -> tuple:
        """Unlearn the query `x` (pixels in [-1, 1]; encoded by the VAE for a latent model) with its
        `label` or `prompt`, and compute L_u. Returns (UnlearnResult-like record, L_u, fully-scored
        mask, screening record). With `cache_unlearned` on (the evaluation sets it), full L_u matrices
        are kept on disk keyed by model, data, query and every setting but the scoring ones, so
        variants that differ only in scoring (normalised or not, fragile correction) reuse them.
        `times` (a dict) receives the seconds of the two stages."""
        times = {} if times is None else times
        t0 = time.perf_counter()
        ns = self.noise_set(s, 0 if s.consistent_noise else 1_000_003)
        key = None
        if self.cache_unlearned:
            lr = unlearning_lr(self.model, s)
            fields = {k: v for k, v in s.to_dict().items() if k not in SCORING_ONLY}
            key = cache_key(kind="loss_unlearned", version=LOSS_VERSION, model=self.model.fingerprint(),
                            data=self.data.fingerprint(),
                            noise=ns.params, settings=fields, unlearning_lr=lr, label=label,
                            query=hashlib.sha256(x.detach().cpu().float().numpy().tobytes()).hexdigest(),
                            **({} if prompt is None else dict(prompt=prompt)))
            hit = self._load_cached("loss_unlearned", key)
            if hit is not None:
                rec = json.loads(str(hit["record"]))
                # screened variants read their entries off the cached full matrix (same unlearned model)
                lu, mask, screening = self.unlearned_losses(None, ns, lo, s, full_lu=hit["loss"])
                times.update(unlearning=0.0, unlearned_losses=time.perf_counter() - t0)
                return UnlearnRecord(**rec), lu, mask, screening
        x0 = self.model.encode_images(x[None])[0]
        u = unlearn(self.model, self.inputs(report), x0, self.model.condition(label, prompt), lnull, s, report)
        group = Group.current()
        if group is not None:      # every rank unlearned the same way; score exactly rank 0's model
            group.broadcast_module(u.unet)
        times["unlearning"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        require_finite("the unlearning curve", [[c["loss_f"], c["loss_r"]] for c in u.curve], "unlearning")
        lu, mask, screening = self.unlearned_losses(u.unet, ns, lo, s, report)
        require_finite("L_u", lu[:, :][~np.isnan(lu)], "unlearned losses")
        times["unlearned_losses"] = time.perf_counter() - t0
        rec = UnlearnRecord(steps=u.steps, converged=u.converged, curve=u.curve, lr=u.lr)
        if key is not None and screening is None:   # only full matrices: the key leaves screening out
            save_arrays(self._cache_path("loss_unlearned", key), key, loss=lu,
                        record=np.array(json.dumps(dict(rec.__dict__))))
        return rec, lu, mask, screening

    def reference_skews(self, s: Settings, report=None) -> tuple:
        """Skews of every training item for the fragile-item correction's reference queries: images
        generated from seeds fragile_seed + j (`fragile_refs` per class, or in total when the model is
        unconditional), each unlearned and scored like a query. Cached on disk like L_o.
        Returns ((R, N) skews, (R,) labels or None, was_cached)."""
        from ..sources.generate import generate
        if self.model.conditioning == "text":
            raise MucsError("the fragile-item correction needs a class-conditional or unconditional model "
                            "(its reference queries are drawn per class): set fragile_refs to 0")
        C = self.model.num_classes
        labels = [c for c in range(C) for _ in range(s.fragile_refs)] if C else [None] * s.fragile_refs
        seeds = [s.fragile_seed + j for j in range(len(labels))]
        base = s.replace(fragile_refs=0, screen_noises=0)
        fields = {k: v for k, v in base.to_dict().items() if k not in ("top_k", "screen_keep", *FLOAT_TOLERANCE_ONLY)}
        lr = unlearning_lr(self.model, base)
        key = cache_key(kind="reference_skews", version=LOSS_VERSION, model=self.model.fingerprint(),
                        data=self.data.fingerprint(),
                        settings=fields, labels=labels, seeds=seeds, unlearning_lr=lr)
        hit = self._load_cached("reference_skews", key)
        if hit is not None:
            return hit["skews"], None if not C else hit["labels"], True
        lo, _ = self.original_losses(base, report)
        lnull, _ = self.null_loss(base, report)
        images = generate(self.model, labels, seeds, steps=50)
        rows = []
        for j, (img, y) in enumerate(zip(images, labels)):
            _, lu, _, _ = self.unlearned(to_model_range(img), y, lnull, lo, base)
            rows.append(skew(lu, lo, base.normalised))
            if report is not None:
                report("reference queries", (j + 1) / len(labels))
        skews = np.stack(rows)
        lab = np.array([-1 if y is None else y for y in labels], np.int64)
        save_arrays(self._cache_path("reference_skews", key), key, skews=skews, labels=lab)
        return skews, None if not C else lab, False

    def fragile_correction(self, s: Settings, label, report=None) -> tuple:
        """(N,) mean skew of each item over the reference queries of other classes (all of them for an
        unconditional model), and a record for result.json."""
        refs, labels, cached = self.reference_skews(s, report)
        use = np.ones(len(refs), bool) if labels is None or label is None else labels != int(label)
        return refs[use].mean(0), dict(references=int(len(refs)), used=int(use.sum()), cached=cached,
                                       seeds=[s.fragile_seed, s.fragile_seed + len(refs) - 1])

    def _family_info(self) -> dict:
        """What result.json records of the model's family (the pixel UNet2DModel's runs record it too)."""
        m = self.model
        info = dict(model_family=m.family.name, conditioning=m.conditioning, denoiser=type(m.unet).__name__)
        if m.latent:
            info.update(latent_shape=list(m.x0_shape), vae_scale=m.vae_scale)
        if m.lora:
            info.update(lora=dict(path=m.lora["path"], parameters=m.lora["parameters"]))
        return info

    # --- one query ---------------------------------------------------------------------------
    def attribute(self, query: QueryImage, label: Optional[int] = None, settings: Optional[Settings] = None,
                  progress=None, cancel=None, source: str = "", prompt: Optional[str] = None) -> Attribution:
        """Run MUCS for one query image with its class `label` (class-conditional models) or `prompt`
        (text-conditional ones); `progress` gets ProgressEvents, `cancel` (an Event) stops it. Settings
        whose memory will not fit are refused first; a failed run leaves no noise set in memory."""
        s = self.checked(settings or self.settings)
        label = self.model.check_label(label)
        prompt = self.model.check_prompt(prompt)
        self.check_memory(s)
        with self._noise.request():
            return self._attribute(query, label, s, progress, cancel, source, prompt)

    def _attribute(self, query: QueryImage, label, s: Settings, progress, cancel, source: str,
                   prompt: Optional[str] = None) -> Attribution:
        report = Reporter(progress, cancel)
        times = {}
        t0 = time.perf_counter()
        lo, lo_cached = self.original_losses(s, report)
        times["original_losses"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lnull, null_cached = self.null_loss(s, report)
        trained = self.check_trained(s, lnull)
        times["null_loss"] = time.perf_counter() - t0
        u, lu, fully_scored, screening = self.unlearned(query.x, label, lnull, lo, s, report, times, prompt)
        scores = skew(lu, lo, s.normalised)
        fragile = None
        if s.fragile_refs:
            t0 = time.perf_counter()
            correction, fragile = self.fragile_correction(s, label, report)
            scores = scores - correction
            times["fragile_correction"] = time.perf_counter() - t0
        require_finite("the scores", scores, "scoring")
        top = top_k(np.where(fully_scored, scores, -np.inf), min(s.top_k, int(fully_scored.sum())))
        times["total"] = sum(times.values())
        report("done", 1.0)
        return Attribution(
            scores=scores, top=top, loss_original=np.nanmean(np.where(np.isnan(lu), np.nan, lo), 1),
            loss_unlearned=np.nanmean(lu, 1), loss_null=lnull,
            steps=u.steps, converged=u.converged, curve=u.curve, stage_times=times, settings=s.to_dict(),
            query=dict(label=label, class_name=self.data.class_name(label) if label is not None else None,
                       conversions=list(query.conversions), source=source, **({} if prompt is None else dict(prompt=prompt))),
            query_image=to_uint8(query.x), labels=self.data.labels, captions=self.data.captions,
            info=dict(model=self.model.path, model_fingerprint=self.model.fingerprint(), **self._family_info(),
                      trained_loss=trained,
                      data=self.data.source, data_fingerprint=self.data.fingerprint(), num_train=len(self.data),
                      unlearning_lr=u.lr, screening=screening, fragile_correction=fragile, noise_levels=self.noise_set(s).levels(),
                      train_noise_sigma_span=list(train_noise_for(self.model, s).sigma_span()), cache_hits=dict(original_losses=lo_cached, null_loss=null_cached),
                      device=str(self.model.device), torch_threads=torch.get_num_threads(), mucs_version=__version__))
