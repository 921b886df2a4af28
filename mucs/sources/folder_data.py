"""Training sets as image folders (one subfolder per class, or flat), decoded once and cached by the
files' bytes."""
import hashlib
import logging
import os

import numpy as np
from PIL import Image

from ..errors import MucsError
from .images import IMAGE_EXTS, normalise_mode, stack_images
from .training_set import TrainingSet

log = logging.getLogger("mucs")


def load_folder(path: str) -> TrainingSet:
    """An image folder: one subfolder per class (labels, class names) or a flat folder. The decoded
    set is cached (see decoded_cache), so a later load reads the files' bytes but decodes nothing."""
    subdirs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    groups = [(i, os.path.join(path, d)) for i, d in enumerate(subdirs)] if subdirs else [(None, path)]
    labels, files = [], []
    for label, folder in groups:
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTS):
                if not os.path.isfile(os.path.join(folder, name)):   # a FIFO would block the read
                    raise MucsError(f"training image {os.path.join(folder, name)} is not a regular file")
                labels.append(label)
                files.append(os.path.relpath(os.path.join(folder, name), path))
    if not files:
        return TrainingSet(images=np.zeros((0, 1, 1, 1), np.uint8), source=path)
    cache, images = decoded_cache(path, files)
    if images is None:
        decoded = []
        for rel in files:
            f = os.path.join(path, rel)
            try:
                with Image.open(f) as im:
                    decoded.append(np.asarray(normalise_mode(im)[0]))
            except Exception as e:
                raise MucsError(f"cannot read training image {f}: {e}") from e
        images = stack_images(decoded, path)
        save_decoded(cache, images)
    return TrainingSet(images=images, labels=np.array(labels, np.int64) if subdirs else None,
                       class_names=subdirs or None, source=os.path.abspath(path), files=files)


def decoded_cache(path: str, files: list):
    """(cache file, images or None) for the decoded pixels of `files` in the folder `path`. The key
    is the files' names and bytes (hashing them is far cheaper than decoding), so any change to a
    file, a rename or a new file decodes again. Hits are opened memory-mapped: a large set is not
    read into memory until its items are used."""
    from ..cache import default_cache_dir
    h = hashlib.sha256(f"decoded-folder-v1 {len(files)}".encode())
    try:
        for rel in files:
            with open(os.path.join(path, rel), "rb") as f:
                body = f.read()
            h.update(f"\0{rel}\0{len(body)}\0".encode())
            h.update(body)
    except OSError as e:
        raise MucsError(f"cannot read training image {os.path.join(path, rel)}: {e}") from e
    cache = os.path.join(default_cache_dir(), "decoded", h.hexdigest()[:32] + ".npy")
    if not os.path.lexists(cache):
        return cache, None
    if not os.path.isfile(cache) or os.path.islink(cache):   # a FIFO would block the read: refused, not waited on
        raise MucsError(f"the decoded-images cache {cache} is not a regular file: remove it")
    try:
        images = np.load(cache, mmap_mode="r")
        if images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(files):
            log.info("image folder %s: %d decoded images from the cache %s", path, len(files), cache)
            return cache, images
        log.info("image folder %s: the decoded cache %s holds %s %s: decoding again", path, cache, images.dtype,
                 images.shape)
    except (OSError, ValueError, EOFError) as e:   # EOFError: a zero-length (truncated) file
        log.info("image folder %s: the decoded cache %s is unreadable (%s): decoding again", path, cache, e)
    return cache, None


def save_decoded(cache: str, images: np.ndarray) -> None:
    """Write the decoded set as a .npy beside nothing else, atomically; best effort (a read-only
    cache folder only costs the next load a decode)."""
    import tempfile
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache), prefix=".tmp-", suffix=".npy")
        try:
            os.chmod(tmp, 0o644)   # mkstemp makes 0600 files; caches are meant to be shared like the others
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(images))
            os.replace(tmp, cache)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:
        log.info("could not cache the decoded images in %s (%s); the next load decodes again", cache, e)
