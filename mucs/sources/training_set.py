"""The training set: uint8 images with their labels, class names, captions and files, each item at a
stable integer index (mucs.sources.data: how each format orders its items)."""
import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..errors import MucsError
from .images import to_model_range


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
