"""Pixels: the image formats read, uint8 <-> the model's [-1, 1] range, any PIL mode to 8-bit L or RGB
(alpha, 16-bit and float images), stacking a set of one size, and writing a PNG."""
import io

import numpy as np
import torch
from PIL import Image

from ..errors import MucsError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_IMAGE_BYTES = 20 * 1024 * 1024   # uploads over this are refused
MAX_IMAGE_PIXELS = 40_000_000        # decompression-bomb guard


def to_model_range(x_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.array(x_uint8, dtype=np.uint8, copy=True)).float().div(127.5).sub(1.0)
    return t.movedim(-1, -3)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., C, H, W) in [-1, 1] -> uint8 (..., H, W, C)."""
    x = ((x.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def stack_images(images: list, where: str) -> np.ndarray:
    """(N, H, W, C) uint8 from (H, W) / (H, W, C) arrays of one size: all grayscale stays 1
    channel; any colour image makes the whole set RGB."""
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        raise MucsError(f"training images in {where} have different sizes: {sorted(shapes)[:3]}")
    rgb = any(im.ndim == 3 and im.shape[2] != 1 for im in images)
    return np.stack([as_channels(im, 3 if rgb else 1) for im in images])


def as_channels(a: np.ndarray, c: int) -> np.ndarray:
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] == c:
        return a
    if c == 3:
        return np.repeat(a, 3, axis=2)
    return np.asarray(Image.fromarray(a).convert("L"))[..., None]


def normalise_mode(im: Image.Image, background=None):
    """8-bit L or RGB from any PIL mode; returns (image, notes). Alpha is composited on `background`
    (one value per channel, the training set's: TrainingSet.background; white when not given), and
    said with a warning; 16-bit and float images are rescaled to 8 bits."""
    notes = []
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():   # np.clip keeps NaN and the uint8 cast makes it 0: refuse, not guess
            raise MucsError(f"{int((~np.isfinite(a)).sum())} pixel(s) are NaN or inf (a float image)")
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        notes.append(f"{im.mode} depth rescaled to 8 bits")
        im = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = tuple(background) if background is not None else (255,)
        rgb = (bg * 3)[:3] if len(bg) == 1 else bg[:3]
        transparent = np.asarray(im)[..., 3].min() < 255
        im = Image.alpha_composite(Image.new("RGBA", im.size, (*rgb, 255)), im).convert("RGB")
        if background is None:
            notes.append("alpha composited on white")
        elif transparent:
            shade = "black" if max(rgb) < 32 else "white" if min(rgb) > 223 else f"RGB {rgb[0]},{rgb[1]},{rgb[2]}"
            notes.append(f"warning: transparent (alpha) pixels composited on the training set's background ({shade}, the "
                         "median of its images' borders); check that the query looks like a training image")
        else:
            notes.append("alpha channel dropped (fully opaque)")
    if im.mode not in ("L", "RGB"):
        notes.append(f"mode {im.mode} converted to RGB")
        im = im.convert("RGB")
    return im, notes


def save_png(arr_uint8: np.ndarray, path: str) -> None:
    """Save (H, W, C) uint8 as a lossless PNG, atomically."""
    from ..cache import atomic_write
    im = Image.fromarray(arr_uint8[..., 0] if arr_uint8.shape[-1] == 1 else arr_uint8)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
