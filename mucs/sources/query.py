"""A query image as the model sees it: read from a path, bytes, PIL image or array, converted to the
model's channels and resolution, every change listed."""
import io
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import MucsError
from .images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, as_channels, normalise_mode, to_model_range, to_uint8


@dataclass
class QueryImage:
    """A query as the model sees it: (C, H, W) in [-1, 1], plus what was done to get there."""
    x: torch.Tensor
    conversions: list
    prompt: Optional[str] = None     # the caption it was made with or is asked about (text-conditional models)

    @property
    def uint8(self) -> np.ndarray:
        return to_uint8(self.x)


def load_query_image(src, channels: int, size: int, background=None) -> QueryImage:
    """Read a query (path, bytes, PIL image or uint8 array) and convert it to the model's
    channels and resolution; every change made is listed in `conversions`. `background`: the
    training set's (TrainingSet.background), what transparent pixels are composited on."""
    src_name = src if isinstance(src, (str, os.PathLike)) else None
    try:
        if isinstance(src, np.ndarray):
            im = Image.fromarray(src.squeeze(-1) if src.ndim == 3 and src.shape[2] == 1 else src)
        elif isinstance(src, Image.Image):
            im = src
        else:
            if isinstance(src, (str, os.PathLike)):
                if not os.path.isfile(src):
                    raise MucsError(f"image not found: {src}")
                if os.path.getsize(src) > MAX_IMAGE_BYTES:
                    raise MucsError(f"image {src} is larger than {MAX_IMAGE_BYTES // 2**20} MB")
                with open(src, "rb") as f:
                    src = f.read()
            if len(src) > MAX_IMAGE_BYTES:
                raise MucsError(f"image is larger than {MAX_IMAGE_BYTES // 2**20} MB")
            im = Image.open(io.BytesIO(src))
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise MucsError(f"image is {im.width}x{im.height}: more than {MAX_IMAGE_PIXELS} pixels")
        im.load()
    except MucsError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, TypeError, Image.DecompressionBombError) as e:
        # say what is wrong in words: Pillow's own message names Python objects ("<_io.BytesIO object at 0x…>")
        name = f"{os.path.basename(os.fspath(src_name))} " if src_name else ""
        if isinstance(e, UnidentifiedImageError):
            why = f"{name or 'the file '}is not in a known image format (PNG, JPEG, BMP, GIF, WebP or TIFF)"
        else:
            import re
            text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e).splitlines()[0] if str(e) else "").strip(" :")
            why = (f"{name}is damaged or truncated" + (f" ({text[:120]})" if text else "")) if name else \
                (text[:160] or type(e).__name__)
        raise MucsError(f"not a readable image: {why}") from None
    try:
        im, notes = normalise_mode(im, background)
    except MucsError as e:
        raise MucsError(f"query image: {e}") from None
    want = "L" if channels == 1 else "RGB"
    if im.mode != want:
        notes.append(f"{im.mode} converted to {want}")
        im = im.convert(want)
    if im.size != (size, size):
        w, h = im.size
        if w != h:  # centre-crop to a square first so that shapes are not distorted
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            notes.append(f"centre-cropped {w}x{h} to {s}x{s}")
        if im.size != (size, size):
            notes.append(f"resized {im.size[0]}x{im.size[1]} to {size}x{size}")
            im = im.resize((size, size), Image.Resampling.LANCZOS)
    arr = as_channels(np.asarray(im), channels)
    return QueryImage(x=to_model_range(arr), conversions=notes)
