"""For each training item, what the denoiser sees: x0 (the pixels in [-1, 1], or the VAE latents of a
latent model) and its condition (class label, caption embedding, or none).

Latents and caption embeddings do not depend on the query: they are computed once per (encoder
weights, data content) and cached on disk as memory-mapped .npy files, so a query pays neither the
VAE nor the text encoder for the training set.
"""
import hashlib
import json
import logging
import os
from typing import Optional

import numpy as np
import torch

from ..errors import MucsError

log = logging.getLogger("mucs")
ENCODE_BATCH = 64


class ModelInputs:
    """x0 and condition of every training item of `data` for `model` (see module docstring)."""

    def __init__(self, model, data, latents: Optional[np.ndarray] = None, text: Optional[dict] = None):
        self.model, self.data = model, data
        self.latents = latents     # (N, c, h, w) float32 for a latent model, else None (pixels)
        self.text = text           # {"emb": (U, L, D), "mask": (U, L) or None, "index": (N,)} for a text model

    def __len__(self):
        return len(self.data)

    @property
    def labels(self):
        return self.data.labels

    def raw(self, idx) -> torch.Tensor:
        """Items `idx` as they travel to the device: uint8 (n, H, W, C) pixels (a quarter of the float
        bytes; scaled on the device by `to_x0`) or float latents."""
        if self.latents is None:
            return self.data.uint8_tensor(idx)
        return torch.from_numpy(np.array(self.latents[idx], dtype=np.float32, copy=True))

    @staticmethod
    def to_x0(raw: torch.Tensor, device, non_blocking: bool = False) -> torch.Tensor:
        """`raw` items on `device` as float x0: uint8 pixels scaled to [-1, 1] (to_model_range's arithmetic)."""
        if raw.dtype == torch.uint8:
            return raw.to(device, non_blocking=non_blocking).float().div(127.5).sub(1.0).movedim(-1, -3)
        return raw.to(device, non_blocking=non_blocking)

    def x0(self, idx) -> torch.Tensor:
        """Items `idx` as float (n, C, H, W) x0 on the CPU."""
        return self.to_x0(self.raw(np.asarray(idx)), "cpu")

    def cond(self, idx) -> Optional[dict]:
        """The condition dict of items `idx` (CPU tensors), or None for an unconditional model."""
        kind = self.model.conditioning
        if kind == "class":
            return self.model.label_cond(np.asarray(self.data.labels)[np.asarray(idx)])
        if kind == "text" and self.text is not None:
            rows = self.text["index"][np.asarray(idx)]
            out = {"encoder_hidden_states": torch.from_numpy(np.array(self.text["emb"][rows], np.float32))}
            if self.text.get("mask") is not None:
                out["encoder_attention_mask"] = torch.from_numpy(np.array(self.text["mask"][rows], np.int64))
            return out
        return None

    def caption(self, i: int) -> str:
        return self.data.caption(i)

    def subset(self, indices) -> "InputsSubset":
        """These inputs restricted to `indices` (in that order): e.g. the few rows why-this-image scores."""
        return InputsSubset(self, indices)


class InputsSubset(ModelInputs):
    """The items `indices` of a ModelInputs, renumbered 0..len-1."""

    def __init__(self, parent: ModelInputs, indices):
        super().__init__(parent.model, parent.data, parent.latents, parent.text)
        self.parent, self.indices = parent, np.asarray(indices, np.int64)

    def __len__(self):
        return len(self.indices)

    def raw(self, idx):
        return self.parent.raw(self.indices[np.asarray(idx)])

    def cond(self, idx):
        return self.parent.cond(self.indices[np.asarray(idx)])


def model_inputs(model, data, cache_dir: Optional[str] = None, report=None) -> ModelInputs:
    """The ModelInputs of `data` for `model`: the VAE latents and caption embeddings computed (or read
    from `cache_dir`, when given) once. A pixel model needs neither."""
    if isinstance(data, ModelInputs):
        return data
    data.check_matches(model)
    latents = _latents(model, data, cache_dir, report) if model.latent else None
    text = _caption_embeddings(model, data, cache_dir, report) if model.conditioning == "text" else None
    return ModelInputs(model, data, latents, text)


def component_fingerprint(module) -> str:
    """sha256 of one network's weights and config (a VAE's or a text encoder's): what its outputs depend on."""
    h = hashlib.sha256(type(module).__name__.encode())
    cfg = getattr(module, "config", None)
    if cfg is not None:
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        h.update(json.dumps({k: v for k, v in d.items() if not str(k).startswith("_") and k not in
                             ("transformers_version", "name_or_path")}, sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _cached(cache_dir, kind: str, key: str, shapes: dict, compute, what: str, shipped: Optional[str] = None) -> dict:
    """Arrays {name: array} from `<folder>/<kind>-<key>-<name>.npy` (memory-mapped) in `cache_dir`, else in the
    read-only `shipped` folder (a model folder's cache/), when all are there with the expected shapes and
    finite; else computed by `compute()` and written atomically into `cache_dir` (best effort)."""
    from ..cache import atomic_write, check_cache_file
    for folder in [f for f in (cache_dir, shipped) if f]:
        paths = {n: os.path.join(folder, f"{kind}-{key}-{n}.npy") for n in shapes}
        try:
            for p in paths.values():
                check_cache_file(p)
            if all(os.path.isfile(p) for p in paths.values()):
                hit = {n: np.load(p, mmap_mode="r", allow_pickle=False) for n, p in paths.items()}
                if all(tuple(hit[n].shape) == tuple(s) for n, s in shapes.items()) and all(
                        np.isfinite(np.asarray(a, np.float64)).all() for a in hit.values()):
                    log.info("%s: cache hit %s", what, folder)
                    return hit
                log.warning("%s: the cached arrays in %s do not fit or are not finite: recomputing", what, folder)
        except (OSError, ValueError) as e:
            log.warning("%s: the cache in %s is unreadable (%s): recomputing", what, folder, e)
    paths = {n: os.path.join(cache_dir, f"{kind}-{key}-{n}.npy") for n in shapes} if cache_dir else {}
    arrays = compute()
    for n, a in arrays.items():
        if not np.isfinite(a).all():
            raise MucsError(f"non-finite values in the {what} ({n}): the encoder's weights are broken")
    if cache_dir:
        import io
        for n, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(a))
            try:
                atomic_write(paths[n], buf.getvalue())
            except OSError as e:
                log.warning("%s: could not write the cache %s (%s); it is recomputed next time", what, paths[n], e)
                break
    return arrays


INPUTS_VERSION = 1   # bump with any change to how latents or caption embeddings are computed (cache keys)


def _shipped(model) -> Optional[str]:
    """A model folder's read-only cache/ (the shipped example models carry their latents and captions there)."""
    return os.path.join(model.path, "cache") if model.path else None


def _latents(model, data, cache_dir, report) -> np.ndarray:
    from ..cache import cache_key
    key = cache_key(kind="latents", version=INPUTS_VERSION, vae=component_fingerprint(model.vae),
                    data=data.fingerprint(), mode="mean",
                    scaling=model.vae.config.get("scaling_factor"), shift=model.vae.config.get("shift_factor"))
    shape = (len(data), *model.x0_shape)

    def compute():
        out = np.empty(shape, np.float32)
        for i in range(0, len(data), ENCODE_BATCH):
            idx = np.arange(i, min(len(data), i + ENCODE_BATCH))
            out[idx] = model.encode_images(data.tensor(idx), ENCODE_BATCH).numpy()
            if report is not None:
                report("encoding latents", (idx[-1] + 1) / len(data))
        return {"latents": out}
    return _cached(cache_dir, "latents", key, {"latents": shape}, compute, "training-set latents",
                   _shipped(model))["latents"]


def _caption_embeddings(model, data, cache_dir, report) -> dict:
    from ..cache import cache_key
    if data.captions is None:
        raise MucsError("the model is text-conditional but the dataset has no captions (an .npz 'captions' array, "
                        "a metadata.jsonl/.csv 'text' column in an image folder, or a dataset text column)")
    unique, index = np.unique(np.asarray(data.captions, dtype=object).astype(str), return_inverse=True)
    h = hashlib.sha256("\0".join(unique).encode())
    key = cache_key(kind="captions", version=INPUTS_VERSION, text_encoder=component_fingerprint(model.text_encoder),
                    tokenizer=hashlib.sha256(json.dumps(sorted(model.tokenizer.get_vocab().items())).encode()).hexdigest(),
                    captions=h.hexdigest(), max_length=model.train_config.get("max_sequence_length"))
    probe = model.encode_prompts([str(unique[0])])
    shapes = {"emb": (len(unique), *probe["encoder_hidden_states"].shape[1:])}
    if "encoder_attention_mask" in probe:
        shapes["mask"] = (len(unique), probe["encoder_attention_mask"].shape[1])

    def compute():
        embs, masks = [], []
        for i in range(0, len(unique), ENCODE_BATCH):
            c = model.encode_prompts([str(u) for u in unique[i:i + ENCODE_BATCH]], ENCODE_BATCH)
            embs.append(c["encoder_hidden_states"].numpy())
            if "encoder_attention_mask" in c:
                masks.append(c["encoder_attention_mask"].numpy())
            if report is not None:
                report("caption embeddings", min(1.0, (i + ENCODE_BATCH) / len(unique)))
        out = {"emb": np.concatenate(embs).astype(np.float32)}
        if masks:
            out["mask"] = np.concatenate(masks).astype(np.int64)
        return out
    arrays = _cached(cache_dir, "captions", key, shapes, compute, "caption embeddings", _shipped(model))
    return dict(emb=arrays["emb"], mask=arrays.get("mask"), index=index.astype(np.int64))
