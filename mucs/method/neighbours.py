"""Nearest training neighbours with faiss: in pixel space, or in the diffusion model's own
features (mid-block activations at a fixed noise level). No pretrained network needed."""
from typing import Optional

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


@torch.inference_mode()
def model_features(model, x: torch.Tensor, labels: Optional[torch.Tensor] = None, timestep: Optional[int] = None,
                   seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Mid-block activations (spatially averaged) of x noised to `timestep` (feature_timestep) with a fixed ε."""
    unet, dev = model.unet, model.device
    feats = []
    timestep = feature_timestep(model, timestep)
    hook = unet.mid_block.register_forward_hook(lambda m, i, o: feats.append(o.mean((2, 3)).float().cpu()))
    try:
        ac = alphas_cumprod(model)[timestep]
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(x.shape[1:], generator=g)
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            xt = ac.sqrt() * xb + (1 - ac).sqrt() * eps
            yb = labels[s:s + batch_size].to(dev) if (labels is not None and model.num_classes) else None
            t = torch.full((len(xb),), timestep, dtype=torch.long, device=dev)
            unet(xt.to(dev), t, class_labels=yb)
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
    def features(cls, model, data: TrainingSet, timestep: Optional[int] = None) -> "NeighbourIndex":
        return cls(_in_slices(data, lambda idx: model_features(model, data.tensor(idx), data.label_tensor(idx), timestep)))

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
