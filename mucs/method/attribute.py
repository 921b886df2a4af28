"""MUCS end to end: noise set → original losses (cached) → null loss (cached) → mirrored
unlearning → unlearned losses → skew → top-k. The result it returns: mucs.method.result; the
fragile-item correction: mucs.method.fragile."""
import hashlib
import json
import logging
import os
import time
from typing import Optional

import numpy as np
import torch

from .. import __version__
from ..cache import BoundedMemo, cache_file, cache_key, default_cache_dir, load_arrays
from ..cache import save_arrays_best_effort as save_arrays
from ..checks import require_finite
from ..defaults import settings_for
from ..sources.data import QueryImage, TrainingSet, to_uint8
from .distributed import Group
from .fragile import fragile_correction, reference_skews
from ..errors import MucsError
from ..memory import check_request_memory
from ..sources.inputs import ModelInputs, model_inputs
from .losses import LOSS_VERSION, loss_matrix, null_loss, screen_columns, train_noise_for, trained_loss
from ..sources.models import public_config
from .noise import NoiseSet, make_noise_set
from ..progress import Reporter
from .result import SCORES_CSV_COLUMNS, Attribution, UnlearnRecord, csv_text  # noqa: F401  (their home before)
from ..settings import SCORING_ONLY, Settings
from .unlearn import frozen_names, skew, top_k, unlearn, unlearning_lr

SHIPPED_CACHE = "cache"   # a model folder's read-only, precomputed caches
MEMO_ENTRIES, MEMO_BYTES = 4, 1 << 30   # noise sets and L_o matrices kept in memory (the newest always)
log = logging.getLogger("mucs")
MEMMAP_BYTES = 1 << 30   # loss matrices from this size on (e.g. N = 2.7M items × K = 100) are memory-mapped


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
        """Refuse settings whose estimated memory does not fit (see mucs.memory.check_request_memory)."""
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
        return cache_file(self.cache_dir, kind, key)

    def _save_cached(self, kind: str, key: str, **arrays) -> bool:
        """Cache `arrays` under `key` (best effort), the loss definition's version in the file's header."""
        return save_arrays(self._cache_path(kind, key), key, dict(loss_version=LOSS_VERSION), **arrays)

    def _load_cached(self, kind: str, key: str):
        """The cached arrays from the cache folder, else from the read-only `cache/` a model folder
        may ship (the embedded model ships its L_o and L_null there); None on a miss."""
        for folder in (self.cache_dir, os.path.join(self.model.path, SHIPPED_CACHE)):
            path = cache_file(folder, kind, key)
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
        if self._save_cached("loss_original", key, loss=lo):
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
            if self._save_cached("loss_null", key, loss_null=np.array(value)):
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
            return any(os.path.isfile(cache_file(f, kind, key))
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
            self._save_cached("loss_unlearned", key, loss=lu,
                              record=np.array(json.dumps(dict(rec.__dict__))))
        return rec, lu, mask, screening

    def reference_skews(self, s: Settings, report=None) -> tuple:
        """The fragile-item correction's reference skews (mucs.method.fragile.reference_skews)."""
        return reference_skews(self, s, report)

    def fragile_correction(self, s: Settings, label, report=None) -> tuple:
        """Each item's mean reference skew over other classes (mucs.method.fragile.fragile_correction)."""
        return fragile_correction(self, s, label, report)

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
