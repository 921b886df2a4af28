"""Rebuild assets/fashion_mnist_16px_1k.npz from Debian's dataset-fashion-mnist, bit for bit.

A class-balanced subset of the Fashion-MNIST *training* split (100 images per class, picked by
a seeded permutation), downscaled from 28x28 to 16x16 with PIL's box (area) filter so that the
default model attributes within a minute on a 2-core CPU. The original indices are stored.
Usage: python assets/make_dataset.py [--src DIR] [--out FILE] [--per-class N] [--size S]
"""
import argparse
import gzip
import hashlib
import os

import numpy as np
from PIL import Image

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
SRC = "/usr/share/datasets/fashion-mnist"


def read_idx(path: str) -> np.ndarray:
    """Read a (gzipped) IDX file of uint8 images or labels."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(src: str = SRC, split: str = "train"):
    prefix = "train" if split == "train" else "t10k"
    return (read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz")),
            read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64))


def downscale(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == size:
        return images.copy()
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX)) for im in images])


def build(src: str = SRC, per_class: int = 100, size: int = 16, seed: int = 0) -> dict:
    images, labels = load_split(src, "train")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    picked = np.sort(np.concatenate([order[labels[order] == c][:per_class] for c in range(10)]))
    return dict(images=downscale(images[picked], size), labels=labels[picked],
                source_indices=picked.astype(np.int64), class_names=np.array(CLASS_NAMES))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=SRC)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_16px_1k.npz"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    d = build(a.src, a.per_class, a.size, a.seed)
    np.savez_compressed(a.out, **d)
    h = hashlib.sha256(d["images"].tobytes() + d["labels"].tobytes()).hexdigest()
    print(f"wrote {a.out}: {len(d['labels'])} images {d['images'].shape[1:]} sha256(images+labels)={h}")


if __name__ == "__main__":
    main()
