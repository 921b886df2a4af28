"""Hugging Face datasets saved with `save_to_disk`: the split used, the image and label columns."""
import logging
import os
from typing import Optional

import numpy as np
from PIL import Image

from ..errors import MucsError
from .images import normalise_mode, stack_images
from .npz_data import check_labels
from .training_set import TrainingSet

log = logging.getLogger("mucs")


HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")   # written by save_to_disk


def is_hf_dataset(path: str) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json"))))


def hf_rows(path: str):
    """The saved dataset (its train split, or only split), opened once per load (memory-mapped by datasets)."""
    try:
        import datasets
    except ImportError as e:
        raise MucsError(f"{path} is a Hugging Face dataset: install the `datasets` package to read it") from e
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:
        raise MucsError(f"cannot read the Hugging Face dataset {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" in ds:
            split = "train"
        elif len(splits) == 1:
            split = splits[0]
        else:
            raise MucsError(f"{path} holds the splits {splits} and none is 'train': pass {os.path.join(path, splits[0])}")
        log.info("%s: using the %r split", path, split)
        ds = ds[split]
    return ds


def load_hf(path: str, ds, image_column: Optional[str], label_column: Optional[str]) -> TrainingSet:
    import datasets
    feats = ds.features
    if image_column is None:
        image_column = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
        if image_column is None:
            raise MucsError(f"{path} has no Image feature (columns: {list(feats)}): pass --image-column")
    elif image_column not in feats:
        raise MucsError(f"{path} has no column {image_column!r} (columns: {list(feats)})")
    if label_column is None:
        label_column = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
        if label_column is None:
            log.info("%s has no ClassLabel feature: loaded as unconditional (pass --label-column to choose one)", path)
    elif label_column not in feats:
        raise MucsError(f"{path} has no column {label_column!r} (columns: {list(feats)})")
    images = []
    for i, im in enumerate(ds[image_column]):
        if not isinstance(im, Image.Image):
            a = np.asarray(im)
            if a.dtype != np.uint8 or a.ndim not in (2, 3):
                raise MucsError(f"{path}: column {image_column!r} must hold images or (H, W[, C]) uint8 arrays; "
                                f"row {i} is {a.dtype} {a.shape}")
            try:
                im = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
            except TypeError as e:
                raise MucsError(f"{path}: row {i} of column {image_column!r} is not an image ({a.shape})") from e
        try:
            images.append(np.asarray(normalise_mode(im)[0]))
        except MucsError as e:
            raise MucsError(f"{path}: row {i} of column {image_column!r}: {e}") from None
    arr = stack_images(images, path)
    labels = names = None
    if label_column is not None:
        feat = feats[label_column]
        try:
            labels = np.asarray(ds[label_column])
        except (TypeError, ValueError) as e:
            raise MucsError(f"{path}: label column {label_column!r} must hold integers") from e
        labels = check_labels(labels, f"{path}: label column {label_column!r}:")
        if labels.shape != (len(arr),):
            raise MucsError(f"{path}: label column {label_column!r} must hold one integer per row")
        if isinstance(feat, datasets.ClassLabel):
            names = [str(n) for n in feat.names]
    return TrainingSet(images=arr, labels=labels, class_names=names, source=os.path.abspath(path))
