"""Loading a training set (.npz, image folder or Hugging Face dataset; each format in its own module:
npz_data, folder_data, hf_data), scaled to [-1, 1] as in training. Query images: mucs.sources.query.

Every training item has a stable integer index; scores and results refer to it:
- .npz: its row in `images`;
- image folder (flat, or one subfolder per class as `datasets`' imagefolder): its position in the
  listing sorted by class folder name, then by file name;
- Hugging Face dataset saved with `Dataset.save_to_disk`: its row in the saved dataset (the order
  `datasets.load_from_disk` returns; a `DatasetDict` uses its "train" split, or its only split).
"""
import logging
import os
from typing import Optional

import numpy as np

from ..errors import MucsError
from .captions import folder_captions, hf_captions
from .folder_data import load_folder
from .hf_data import HF_MARKERS, hf_rows, is_hf_dataset, load_hf
# the names this module has always offered, now each in the module of its concept
from .images import IMAGE_EXTS, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, save_png, to_model_range, to_uint8
from .npz_data import check_labels, load_npz
from .query import QueryImage, load_query_image
from .training_set import TrainingSet

__all__ = ["HF_MARKERS", "IMAGE_EXTS", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "QueryImage", "TrainingSet",
           "check_labels", "is_hf_dataset", "load_dataset", "load_query_image", "save_png", "to_model_range",
           "to_uint8"]
log = logging.getLogger("mucs")


def load_dataset(path: str, image_column: Optional[str] = None, label_column: Optional[str] = None,
                 caption_column: Optional[str] = None) -> TrainingSet:
    """Load an .npz (`images` (N,H,W[,C]) uint8, optional `labels`, `class_names`, `captions`), an
    image folder (one subfolder per class gives labels; a flat folder is unconditional; captions from
    metadata.jsonl / metadata.csv) or a Hugging Face dataset saved with `save_to_disk`
    (`image_column`/`label_column`/`caption_column` pick its columns; by default the first Image
    feature, a ClassLabel feature, whose names become the class names, and a text column)."""
    from ..defaults import check_default_present
    check_default_present(path)
    if not os.path.exists(path):
        raise MucsError(f"dataset not found: {path}")
    if not (os.path.isfile(path) or os.path.isdir(path)):
        raise MucsError(f"dataset {path} is neither a file nor a folder (a device or FIFO is never read)")
    import time
    t0 = time.perf_counter()
    if is_hf_dataset(path):
        kind = "Hugging Face dataset"
        ds = hf_rows(path)
        data = load_hf(path, ds, image_column, label_column)
        data.captions = hf_captions(ds, caption_column, path)
    else:
        if image_column is not None or label_column is not None:
            raise MucsError("--image-column/--label-column apply to Hugging Face datasets (saved with save_to_disk) only")
        kind = ".npz" if os.path.isfile(path) else "image folder"
        if os.path.isfile(path) and caption_column is not None:
            raise MucsError("--caption-column applies to image folders and Hugging Face datasets; an .npz has 'captions'")
        data = load_npz(path) if os.path.isfile(path) else load_folder(path)
        if data.files is not None:
            data.captions = folder_captions(path, data.files, caption_column)
    # image folders keep their decoded pixels in the cache folder (keyed by the files' bytes); L_o and
    # L_null caches are keyed by the decoded content's fingerprint, so they survive a re-encoding
    log.info("dataset %s (%s): %d images %s loaded in %.2f s; %s", path, kind,
             len(data), "x".join(str(d) for d in data.images.shape[1:]) if len(data) else "-", time.perf_counter() - t0,
             "unconditional" if data.labels is None else
             f"{len(np.unique(data.labels))} classes" + (" with names" if data.class_names else " without names")
             + (f", {len(data.captions)} captions" if data.captions is not None else ""))
    if len(data) == 0:
        raise MucsError(f"dataset {path} is empty")
    if data.images.shape[1] != data.images.shape[2]:
        raise MucsError(f"dataset images must be square, got {data.images.shape[1]}x{data.images.shape[2]}")
    return data
