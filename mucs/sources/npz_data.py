"""Training sets as .npz archives (numpy.savez: `images`, optional `labels`, `class_names`, `captions`),
their sizes checked from the headers before anything is decompressed; the label checks every format uses."""
import os

import numpy as np

from ..errors import MucsError
from .captions import npz_captions
from .training_set import TrainingSet


def check_labels(labels, where: str) -> np.ndarray:
    """int64 class indices from `labels`, refusing what the cast would silently change: strings,
    NaN, 1.7, negatives, unsigned values above int64's range (they would turn negative)."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels)
        if bad.any():
            raise MucsError(f"{where} labels must be integers, found {int(bad.sum())} NaN/inf value(s)")
        frac = labels != np.round(labels)
        if frac.any():
            raise MucsError(f"{where} labels must be integers, found {float(labels[frac].flat[0])} "
                            f"({int(frac.sum())} non-integer value(s))")
        if labels.size and np.abs(labels).max() >= 2.0**63:
            raise MucsError(f"{where} labels must be class indices, found {float(np.abs(labels).max()):g}")
    elif labels.dtype.kind == "u":
        if labels.size and int(labels.max()) > np.iinfo(np.int64).max:
            raise MucsError(f"{where} labels must be class indices, found {int(labels.max())}")
    elif labels.dtype.kind not in "ib":
        raise MucsError(f"{where} labels must be integers (class indices), got {labels.dtype} values"
                        + (f" such as {str(labels.flat[0])!r}" if labels.size else ""))
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise MucsError(f"{where} labels must be ≥ 0 (-1 is a missing label), found {int(labels.min())}")
    return labels


def check_npz_sizes(path: str) -> None:
    """Shapes, types and the memory the arrays take, read from their .npy headers before anything is
    decompressed: a small archive that inflates to gigabytes is refused, not loaded."""
    from ..checks import npz_headers, npz_nbytes
    from ..memory import available_host_memory, format_bytes
    heads = npz_headers(path)
    if "images" not in heads:
        raise MucsError(f"{path} has no 'images' array")
    shape, dtype = heads["images"]
    if dtype != np.uint8:
        raise MucsError(f"{path}: images must be uint8, got {dtype}")
    if len(shape) not in (3, 4):
        raise MucsError(f"{path}: images must be (N,H,W) or (N,H,W,C) with C in (1, 3), got {shape}")
    if "labels" in heads and heads["labels"][0] != (shape[0],):
        raise MucsError(f"{path}: labels must have shape ({shape[0]},), got {heads['labels'][0]}")
    used = {k: v for k, v in heads.items() if k in ("images", "labels", "captions", "class_names")}
    need, avail = npz_nbytes(used), available_host_memory()
    if avail is not None and need > avail:
        raise MucsError(f"{path}: its arrays take {format_bytes(need)} once decompressed, more than the "
                        f"{format_bytes(avail)} of memory available (read from the archive's headers; nothing was loaded)")


def load_npz(path: str) -> TrainingSet:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise MucsError(f"cannot read dataset {path}: {e.strerror or e}") from e
    if magic != b"PK\x03\x04":   # np.load would call any other file "pickled data"
        raise MucsError(f"cannot read dataset {path}: not an .npz archive (expected numpy.savez output with an "
                        "'images' array, or an image folder)")
    check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise MucsError(f"{path} has no 'images' array")
            images = z["images"]
            labels = z["labels"] if "labels" in z else None
            names = [str(s) for s in z["class_names"]] if "class_names" in z else None
            captions = npz_captions(z, len(images), path)
    except MucsError:
        raise
    except Exception as e:
        raise MucsError(f"cannot read dataset {path}: {e}") from e
    if images.dtype != np.uint8:
        raise MucsError(f"{path}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise MucsError(f"{path}: images must be (N,H,W) or (N,H,W,C) with C in (1, 3), got {images.shape}")
    if labels is not None:
        labels = check_labels(labels, path)
        if labels.shape != (len(images),):
            raise MucsError(f"{path}: labels must have shape ({len(images)},), got {labels.shape}")
    return TrainingSet(images=images, labels=labels, class_names=names, source=os.path.abspath(path), captions=captions)
