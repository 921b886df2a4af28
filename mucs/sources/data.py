"""Training sets (.npz, image folder or Hugging Face dataset) and query images, scaled to [-1, 1]
as in training.

Every training item has a stable integer index; scores and results refer to it:
- .npz: its row in `images`;
- image folder (flat, or one subfolder per class as `datasets`' imagefolder): its position in the
  listing sorted by class folder name, then by file name;
- Hugging Face dataset saved with `Dataset.save_to_disk`: its row in the saved dataset (the order
  `datasets.load_from_disk` returns; a `DatasetDict` uses its "train" split, or its only split).
"""
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import MucsError
from .captions import folder_captions, hf_captions, npz_captions

log = logging.getLogger("mucs")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_IMAGE_BYTES = 20 * 1024 * 1024   # uploads over this are refused
MAX_IMAGE_PIXELS = 40_000_000        # decompression-bomb guard


@dataclass
class TrainingSet:
    """Images as uint8 (N, H, W, C), optional int labels (N,), class names, and where they came from."""
    images: np.ndarray
    labels: Optional[np.ndarray] = None
    class_names: Optional[list] = None
    source: str = ""
    files: Optional[list] = None
    captions: Optional[list] = None    # one caption per image (text-conditional models), else None
    _fingerprint: Optional[str] = field(default=None, repr=False)
    _background: Optional[tuple] = field(default=None, repr=False)

    def __len__(self):
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> Optional[int]:
        if self.labels is None:
            return None
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1

    def fingerprint(self) -> str:
        """sha256 of pixels and labels: a cache key that changes whenever the content does."""
        if self._fingerprint is None:
            h = hashlib.sha256(str(self.images.shape).encode())
            step = max(1, (64 << 20) // max(1, self.images[0].nbytes if len(self.images) else 1))
            for i in range(0, len(self.images), step):   # in slices: a memory-mapped set is never copied whole
                h.update(np.ascontiguousarray(self.images[i:i + step]).tobytes())
            if self.labels is not None:
                h.update(np.ascontiguousarray(self.labels.astype(np.int64)).tobytes())
            if self.captions is not None:     # only when there are captions: caption-less keys stay as they were
                h.update(("\0captions\0" + "\0".join(self.captions)).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def tensor(self, idx=None) -> torch.Tensor:
        """Items (all or `idx`) as float (n, C, H, W) in [-1, 1]: the scaling used in training."""
        x = self.images if idx is None else self.images[idx]
        return to_model_range(x)

    def uint8_tensor(self, idx) -> torch.Tensor:
        """Items `idx` as uint8 (n, H, W, C), unscaled: a quarter of the float bytes to move."""
        return torch.from_numpy(np.array(self.images[idx], dtype=np.uint8, copy=True))

    def label_tensor(self, idx=None) -> Optional[torch.Tensor]:
        if self.labels is None:
            return None
        y = self.labels if idx is None else self.labels[idx]
        return torch.as_tensor(np.asarray(y), dtype=torch.long)

    def class_name(self, label) -> str:
        if label is None:
            return ""
        if self.class_names and 0 <= int(label) < len(self.class_names):
            return str(self.class_names[int(label)])
        return str(int(label))

    def caption(self, i) -> str:
        return "" if self.captions is None else str(self.captions[int(i)])

    def background(self) -> tuple:
        """The training images' background colour, one uint8 per channel: the median of their border
        pixels (of up to 500 images). An uploaded query with transparency is composited on it, so a
        transparent PNG of a dark-background set is not put on white."""
        if self._background is None:
            idx = np.linspace(0, len(self.images) - 1, min(len(self.images), 500)).round().astype(int)
            im = np.asarray(self.images[idx])
            border = np.concatenate([im[:, 0].reshape(-1, im.shape[-1]), im[:, -1].reshape(-1, im.shape[-1]),
                                     im[:, :, 0].reshape(-1, im.shape[-1]), im[:, :, -1].reshape(-1, im.shape[-1])])
            self._background = tuple(int(v) for v in np.median(border, axis=0).round())
        return self._background

    def check_matches(self, model) -> None:
        """Refuse a dataset whose size, channels, labels or captions do not fit the model."""
        if (self.size, self.channels) != (model.size, model.channels):
            raise MucsError(f"dataset images are {self.size}x{self.size} with {self.channels} channel(s); "
                            f"the model expects {model.size}x{model.size} with {model.channels}")
        if model.conditioning == "text":
            if self.captions is None:
                raise MucsError("the model is text-conditional but the dataset has no captions (an .npz 'captions' "
                                "array, a metadata.jsonl/.csv 'text' column in an image folder, or a dataset text "
                                "column: --caption-column)")
            return
        if model.num_classes is not None:
            if self.labels is None:
                raise MucsError("the model is class-conditional but the dataset has no labels")
            if int(self.labels.max()) >= model.num_classes or int(self.labels.min()) < 0:
                raise MucsError(f"dataset labels span {int(self.labels.min())}..{int(self.labels.max())}; "
                                f"the model has classes 0..{model.num_classes - 1}")
        elif self.labels is not None and len(np.unique(self.labels)) > 1:
            raise MucsError("the dataset has class labels but the model is unconditional")


def to_model_range(x_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.array(x_uint8, dtype=np.uint8, copy=True)).float().div(127.5).sub(1.0)
    return t.movedim(-1, -3)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., C, H, W) in [-1, 1] -> uint8 (..., H, W, C)."""
    x = ((x.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


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
        ds = _hf_rows(path)
        data = _load_hf(path, ds, image_column, label_column)
        data.captions = hf_captions(ds, caption_column, path)
    else:
        if image_column is not None or label_column is not None:
            raise MucsError("--image-column/--label-column apply to Hugging Face datasets (saved with save_to_disk) only")
        kind = ".npz" if os.path.isfile(path) else "image folder"
        if os.path.isfile(path) and caption_column is not None:
            raise MucsError("--caption-column applies to image folders and Hugging Face datasets; an .npz has 'captions'")
        data = _load_npz(path) if os.path.isfile(path) else _load_folder(path)
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


HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")   # written by save_to_disk


def is_hf_dataset(path: str) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json"))))


def _hf_rows(path: str):
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


def _load_hf(path: str, ds, image_column: Optional[str], label_column: Optional[str]) -> TrainingSet:
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
            images.append(np.asarray(_normalise_mode(im)[0]))
        except MucsError as e:
            raise MucsError(f"{path}: row {i} of column {image_column!r}: {e}") from None
    arr = _stack_images(images, path)
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


def _check_npz_sizes(path: str) -> None:
    """Shapes, types and the memory the arrays take, read from their .npy headers before anything is
    decompressed: a small archive that inflates to gigabytes is refused, not loaded."""
    from ..checks import available_host_memory, format_bytes, npz_headers, npz_nbytes
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


def _load_npz(path: str) -> TrainingSet:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise MucsError(f"cannot read dataset {path}: {e.strerror or e}") from e
    if magic != b"PK\x03\x04":   # np.load would call any other file "pickled data"
        raise MucsError(f"cannot read dataset {path}: not an .npz archive (expected numpy.savez output with an "
                        "'images' array, or an image folder)")
    _check_npz_sizes(path)
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


def _load_folder(path: str) -> TrainingSet:
    """An image folder: one subfolder per class (labels, class names) or a flat folder. The decoded
    set is cached (see _decoded_cache), so a later load reads the files' bytes but decodes nothing."""
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
    cache, images = _decoded_cache(path, files)
    if images is None:
        decoded = []
        for rel in files:
            f = os.path.join(path, rel)
            try:
                with Image.open(f) as im:
                    decoded.append(np.asarray(_normalise_mode(im)[0]))
            except Exception as e:
                raise MucsError(f"cannot read training image {f}: {e}") from e
        images = _stack_images(decoded, path)
        _save_decoded(cache, images)
    return TrainingSet(images=images, labels=np.array(labels, np.int64) if subdirs else None,
                       class_names=subdirs or None, source=os.path.abspath(path), files=files)


def _decoded_cache(path: str, files: list):
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


def _save_decoded(cache: str, images: np.ndarray) -> None:
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


def _stack_images(images: list, where: str) -> np.ndarray:
    """(N, H, W, C) uint8 from (H, W) / (H, W, C) arrays of one size: all grayscale stays 1
    channel; any colour image makes the whole set RGB."""
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        raise MucsError(f"training images in {where} have different sizes: {sorted(shapes)[:3]}")
    rgb = any(im.ndim == 3 and im.shape[2] != 1 for im in images)
    return np.stack([_as_channels(im, 3 if rgb else 1) for im in images])


def _as_channels(a: np.ndarray, c: int) -> np.ndarray:
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] == c:
        return a
    if c == 3:
        return np.repeat(a, 3, axis=2)
    return np.asarray(Image.fromarray(a).convert("L"))[..., None]


def _normalise_mode(im: Image.Image, background=None):
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
        im, notes = _normalise_mode(im, background)
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
    arr = _as_channels(np.asarray(im), channels)
    return QueryImage(x=to_model_range(arr), conversions=notes)


def save_png(arr_uint8: np.ndarray, path: str) -> None:
    """Save (H, W, C) uint8 as a lossless PNG, atomically."""
    from ..cache import atomic_write
    im = Image.fromarray(arr_uint8[..., 0] if arr_uint8.shape[-1] == 1 else arr_uint8)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
