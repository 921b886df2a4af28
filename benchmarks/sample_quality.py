"""Sample quality of a class-conditional model on Fashion-MNIST: a logistic-regression classifier
fitted on the Fashion-MNIST *test* split (same downscaling as the training subset) labels 10
generated samples per class; prints how often it agrees with the requested class.

Usage: python benchmarks/sample_quality.py [--model DIR] [--per-class 10] [--steps 50] [--seed 1000]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets"))

from make_dataset import CLASS_NAMES, SRC, downscale, load_split  # noqa: E402

from mucs.defaults import DEFAULT_MODEL  # noqa: E402
from mucs.sources.generate import generate  # noqa: E402
from mucs.sources.models import load_model  # noqa: E402


def fit_classifier(size: int, src: str = SRC):
    from sklearn.linear_model import LogisticRegression
    x, y = load_split(src, "test")
    x = downscale(x, size).reshape(len(x), -1) / 255.0
    # hold out 2,000 test images to report the classifier's own accuracy on real images
    clf = LogisticRegression(max_iter=300, C=1.0)
    clf.fit(x[2000:], y[2000:])
    return clf, float((clf.predict(x[:2000]) == y[:2000]).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1000)
    a = ap.parse_args()
    model = load_model(a.model)
    t0 = time.perf_counter()
    clf, real_acc = fit_classifier(model.size)
    labels = [c for c in range(model.num_classes) for _ in range(a.per_class)]
    seeds = [a.seed + i for i in range(len(labels))]
    imgs = generate(model, labels, seeds, steps=a.steps)
    pred = clf.predict(imgs.reshape(len(imgs), -1) / 255.0)
    agree = pred == np.array(labels)
    print(f"model: {a.model} (trained {model.train_config.get('steps_done', '?')} steps)")
    print(f"classifier accuracy on 2,000 held-out real test images: {real_acc:.1%}")
    for c in range(model.num_classes):
        print(f"  {CLASS_NAMES[c]:<12} {agree[np.array(labels) == c].mean():5.0%}")
    print(f"agreement with the requested class: {agree.mean():.1%} of {len(labels)} samples "
          f"({a.steps} DDIM steps, seeds {a.seed}..{a.seed + len(labels) - 1}); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
