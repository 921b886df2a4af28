"""Sampling from a model with a deterministic DDIM sampler: the same seed gives the same image."""
from typing import Optional, Sequence

import numpy as np
import torch

from .data import to_uint8
from .progress import Reporter


@torch.inference_mode()
def generate(model, labels: Sequence[Optional[int]], seeds: Sequence[int], steps: int = 50,
             progress=None, cancel=None, batch_size: int = 64) -> np.ndarray:
    """Images (n, H, W, C) uint8, one per (label, seed). Each item's starting noise comes from its
    own seed on the CPU, so an image does not depend on the batch it was drawn in or the device."""
    from diffusers import DDIMScheduler
    if len(labels) != len(seeds):
        raise ValueError("labels and seeds must have the same length")
    labels = [model.check_label(y) for y in labels]
    report = Reporter(progress, cancel)
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(int(steps))
    shape = (model.channels, model.size, model.size)
    dev = model.device
    out = []
    n = len(seeds)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds[sl]]).to(dev)
        y = torch.tensor(labels[sl], dtype=torch.long, device=dev) if model.num_classes else None
        for i, t in enumerate(sched.timesteps):
            eps = model.unet(x, t.to(dev), class_labels=y).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
            report("sampling", (start + (i + 1) / len(sched.timesteps) * (sl.stop - start)) / n)
        out.append(to_uint8(x))
    return np.concatenate(out)


def sample_grid(model, per_class: int = 10, seed: int = 0, steps: int = 50, progress=None) -> np.ndarray:
    """A (rows*H, per_class*W, C) grid: one row per class (a single row when unconditional)."""
    classes = list(range(model.num_classes)) if model.num_classes else [None]
    labels = [c for c in classes for _ in range(per_class)]
    seeds = [seed + i for i in range(len(labels))]
    imgs = generate(model, labels, seeds, steps, progress)
    H, W, C = imgs.shape[1:]
    return imgs.reshape(len(classes), per_class, H, W, C).transpose(0, 2, 1, 3, 4).reshape(len(classes) * H, per_class * W, C)
