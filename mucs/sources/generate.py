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


def generated_info(path: str):
    """The `mucs` chunk (label, seed, steps, prompt, ...) of a PNG written by save_generated_png, else None."""
    from PIL import Image
    if not is_generated_png(path):
        return None
    try:
        with Image.open(path) as im:
            info = json.loads(getattr(im, "text", {})[PNG_KEY])   # PNG text chunks (PngImageFile.text)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError, KeyError, RecursionError):
        return None


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


def default_guidance(model) -> float:
    """Classifier-free guidance scale used when none is given: what the model folder records
    (mucs_train.json's guidance_scale), else its pipeline's usual default (SD 7.5, PixArt 4.5, DiT 4.0),
    else 1 (no guidance: models without an unconditional branch)."""
    g = model.train_config.get("guidance_scale")
    if isinstance(g, (int, float)) and not isinstance(g, bool) and 0 < g < 100:
        return float(g)
    return {"unet2d_condition": 7.5, "pixart": 4.5, "dit": 4.0}.get(model.family.name, 1.0)


def _conditions(model, labels, prompts, negative_prompt: str, guidance: float):
    """(condition, unconditional condition or None) of a batch: labels or prompt embeddings, and the
    unconditional branch classifier-free guidance needs (the negative prompt's embedding, or DiT's null class)."""
    n = len(labels)
    if model.conditioning == "text":
        cond = model.encode_prompts(prompts)
        return cond, model.encode_prompts([negative_prompt] * n) if guidance != 1 else None
    cond = model.label_cond(labels)
    if guidance != 1 and model.null_class is not None:
        return cond, model.label_cond([model.null_class] * n)
    return cond, None


@torch.inference_mode()
def generate(model, labels: Sequence[Optional[int]], seeds: Sequence[int], steps: int = 50,
             progress=None, cancel=None, batch_size: int = 64, prompts: Optional[Sequence[str]] = None,
             guidance_scale: Optional[float] = None, negative_prompt: str = "") -> np.ndarray:
    """Images (n, H, W, C) uint8, one per (label or prompt, seed). Each item's starting noise comes from
    its own seed on the CPU, so an image does not depend on the batch it was drawn in or the device.
    Text models sample from `prompts` with classifier-free guidance (`guidance_scale`, default
    `default_guidance`; `negative_prompt` is the unconditional branch); latent models are decoded by
    their VAE."""
    from diffusers import DDIMScheduler
    from .families import cond_cat, cond_to
    if len(labels) != len(seeds):
        raise ValueError("labels and seeds must have the same length")
    labels = [model.check_label(y) for y in labels]
    prompts = [model.check_prompt(p) for p in (prompts if prompts is not None else [None] * len(seeds))]
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    guidance = default_guidance(model) if guidance_scale is None else check_guidance(guidance_scale)
    report = Reporter(progress, cancel)
    sched = DDIMScheduler.from_config(model.scheduler.config)
    if model.latent and sched.config.clip_sample:
        # latents are not bounded to [-1, 1] as pixels are: clipping the predicted x0 there (a DDPM
        # config's default) turns every sample into texture; Stable Diffusion's configs turn it off
        sched = DDIMScheduler.from_config(sched.config, clip_sample=False)
    steps = check_steps(steps, sched.config.num_train_timesteps)
    sched.set_timesteps(steps)
    shape = model.x0_shape
    dev = model.device
    per_item_t = model.family.name in ("dit", "pixart")   # transformers take one timestep per item
    out = []
    n = len(seeds)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        m = sl.stop - start
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds[sl]]).to(dev)
        cond, uncond = _conditions(model, labels[sl], prompts[sl], negative_prompt, guidance)
        cond, uncond = cond_to(cond, dev), cond_to(uncond, dev)
        both = cond_cat(uncond, cond) if uncond is not None else None
        for i, t in enumerate(sched.timesteps):
            tt = t.to(dev).expand(m) if per_item_t else t.to(dev)
            if both is None:
                pred = model.predict(model.unet, x, tt, cond)
            else:   # one forward over the unconditional and conditional halves
                pu, pc = model.predict(model.unet, torch.cat([x, x]), torch.cat([tt, tt]) if per_item_t else tt,
                                       both).chunk(2)
                pred = pu + guidance * (pc - pu)
            x = sched.step(pred, t, x, eta=0.0).prev_sample
            report("sampling", (start + (i + 1) / len(sched.timesteps) * m) / n)
        img = model.decode(x)
        if not torch.isfinite(img).all():
            raise MucsError("sampling produced non-finite values: the model's weights are broken (NaN or inf)")
        out.append(to_uint8(img))
    return np.concatenate(out)


def check_guidance(g) -> float:
    """A classifier-free guidance scale: a finite number in [1, 50] (1 = no guidance)."""
    if isinstance(g, bool) or not isinstance(g, (int, float, np.integer, np.floating)) or not 1 <= float(g) <= 50:
        raise MucsError(f"guidance scale must be a number in 1..50 (1 = no guidance), got {g!r}")
    return float(g)


def sample_grid(model, per_class: int = 10, seed: int = 0, steps: int = 50, progress=None,
                prompts: Optional[Sequence[str]] = None) -> np.ndarray:
    """A (rows*H, per_class*W, C) grid: one row per class (a text model: per prompt; a single row
    when unconditional)."""
    classes: list = list(prompts) if prompts else list(range(model.num_classes)) if model.num_classes else [None]
    labels = [c for c in classes for _ in range(per_class)]
    seeds = [seed + i for i in range(len(labels))]
    imgs = (generate(model, [None] * len(labels), seeds, steps, progress, prompts=labels) if prompts
            else generate(model, labels, seeds, steps, progress))
    H, W, C = imgs.shape[1:]
    return imgs.reshape(len(classes), per_class, H, W, C).transpose(0, 2, 1, 3, 4).reshape(len(classes) * H, per_class * W, C)
