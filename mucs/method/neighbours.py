"""Nearest training neighbours with faiss: in pixel space, or in the diffusion model's own
features (mid-block activations at a fixed noise level). No pretrained network needed."""
from typing import Any, Optional

import numpy as np
import torch

from ..sources.data import TrainingSet
from ..sources.models import alphas_cumprod


def pixel_features(x: torch.Tensor) -> np.ndarray:
    """(n, C, H, W) in [-1, 1] -> (n, C*H*W) float32."""
    return x.detach().cpu().reshape(len(x), -1).numpy().astype(np.float32)


FEATURE_FRACTION = 0.1   # features at 10 % of the schedule: timestep 100 of a 1000-step model


def feature_timestep(model, timestep: Optional[int] = None) -> int:
    """The timestep the features are taken at: `timestep`, or FEATURE_FRACTION of the model's
    schedule, clamped to the timesteps it has (a 50-step model has no timestep 100)."""
    n = len(alphas_cumprod(model))
    t = round(FEATURE_FRACTION * n) if timestep is None else int(timestep)
    return max(0, min(n - 1, t))


def _middle(net: Any) -> Any:
    """The module whose output is the feature: a UNet's mid block, a transformer's middle block."""
    if getattr(net, "mid_block", None) is not None:
        return net.mid_block
    blocks = getattr(net, "transformer_blocks", None)
    if blocks:
        return blocks[len(blocks) // 2]
    raise ValueError(f"no mid block in {type(net).__name__}")


@torch.inference_mode()
def model_features(model, x0: torch.Tensor, cond: Optional[dict] = None, timestep: Optional[int] = None,
                   seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Middle-block activations (averaged over space or tokens) of x0 (the denoiser's input: pixels, or
    latents for a latent model) noised to `timestep` (feature_timestep) with a fixed ε, each item with
    its condition."""
    from ..sources.families import cond_index, cond_to
    unet, dev = model.unet, model.device
    feats = []
    timestep = feature_timestep(model, timestep)

    def keep(m, i, o):
        o = o[0] if isinstance(o, tuple) else o
        feats.append((o.mean((2, 3)) if o.dim() == 4 else o.mean(1)).float().cpu())
    hook = _middle(unet).register_forward_hook(keep)
    try:
        ac = alphas_cumprod(model)[timestep]
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(x0.shape[1:], generator=g)
        for s in range(0, len(x0), batch_size):
            xb = x0[s:s + batch_size]
            xt = ac.sqrt() * xb + (1 - ac).sqrt() * eps
            t = torch.full((len(xb),), timestep, dtype=torch.long, device=dev)
            model.predict(unet, xt.to(dev), t, cond_to(cond_index(cond, slice(s, s + batch_size)), dev))
    finally:
        hook.remove()
    return torch.cat(feats).numpy().astype(np.float32)


def _in_slices(data, vectors_of, rows: int = 4096) -> np.ndarray:
    """Vectors of every item, computed `rows` items at a time: the set is never converted to float
    as a whole (a large or memory-mapped set stays uint8 until its slice is needed)."""
    parts = [vectors_of(np.arange(s, min(len(data), s + rows))) for s in range(0, len(data), rows)]
    return np.concatenate(parts).astype(np.float32, copy=False)


class NeighbourIndex:
    """An exact L2 faiss index over training-item vectors (pixels or model features)."""

    def __init__(self, vectors: np.ndarray):
        import faiss
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexFlatL2(self.vectors.shape[1])
        self.index.add(self.vectors)

    @classmethod
    def pixels(cls, data: TrainingSet) -> "NeighbourIndex":
        return cls(_in_slices(data, lambda idx: pixel_features(data.tensor(idx))))

    @classmethod
    def features(cls, model, data, timestep: Optional[int] = None) -> "NeighbourIndex":
        """Model features of every training item (`data`: a TrainingSet or the ModelInputs holding its latents)."""
        from ..sources.inputs import model_inputs
        inputs = model_inputs(model, data)
        return cls(_in_slices(inputs, lambda idx: model_features(model, inputs.x0(idx), inputs.cond(idx), timestep)))

    def search(self, queries: np.ndarray, k: int) -> tuple:
        """(distances, indices), each (n_queries, k), nearest first (squared L2)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        d, i = self.index.search(q, min(k, self.index.ntotal))
        return d, i

    def scores(self, query: np.ndarray) -> np.ndarray:
        """A score for every training item (higher = closer): −squared distance, for use as a baseline."""
        d, i = self.search(query, self.index.ntotal)
        s = np.empty(self.index.ntotal, np.float64)
        s[i[0]] = -d[0]
        return s
