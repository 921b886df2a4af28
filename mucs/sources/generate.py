"""Sampling from a model with a deterministic DDIM sampler: the same seed gives the same image."""
import io
import json
import os
from typing import Optional, Sequence

import numpy as np
import torch

from .data import to_uint8
from ..errors import MucsError
from ..progress import Reporter

MAX_STEPS = 1000
PNG_KEY = "mucs"   # PNG text chunk that marks an image written by `mucs generate`


def check_steps(steps, num_train_timesteps: Optional[int] = None) -> int:
    """DDIM steps: an integer in 1..1000 and at most the scheduler's training steps."""
    hi = MAX_STEPS if num_train_timesteps is None else min(MAX_STEPS, int(num_train_timesteps))
    if isinstance(steps, float) and steps.is_integer():   # a UI slider may send 20.0
        steps = int(steps)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= int(steps) <= hi:
        raise MucsError(f"sampling steps must be an integer in 1..{hi}, got {steps!r}")
    return int(steps)


def save_generated_png(img: np.ndarray, path: str, info: dict) -> None:
    """Save (H, W, C) uint8 as a lossless PNG, atomically, with a `mucs` text chunk (label, seed,
    steps) that lets a later `generate --out` recognise the file as ours and replace it."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    from ..cache import atomic_write
    meta = PngInfo()
    meta.add_text(PNG_KEY, json.dumps(dict(info, written_by="mucs generate"), allow_nan=False))
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG", pnginfo=meta)
    atomic_write(path, buf.getvalue())


def is_generated_png(path: str) -> bool:
    """True when `path` is a PNG carrying the text chunk written by save_generated_png."""
    from PIL import Image
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
        with Image.open(path) as im:
            return PNG_KEY in getattr(im, "text", {})
    except Exception:
        return False


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
    steps = check_steps(steps, sched.config.num_train_timesteps)
    sched.set_timesteps(steps)
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
