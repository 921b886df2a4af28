"""The fragile-item correction (beyond the paper): reference queries of other classes, generated from
fixed seeds, unlearned and scored once per model (cached), whose mean skew is subtracted from a
query's, so items whose loss rises whatever is unlearned stop ranking high. `att`: the Attributor."""
import numpy as np

from ..cache import cache_key
from ..errors import MucsError
from ..settings import FLOAT_TOLERANCE_ONLY, Settings
from ..sources.data import to_model_range
from .losses import LOSS_VERSION
from .unlearn import skew, unlearning_lr


def reference_skews(att, s: Settings, report=None) -> tuple:
    """Skews of every training item for the fragile-item correction's reference queries: images
    generated from seeds fragile_seed + j (`fragile_refs` per class, or in total when the model is
    unconditional), each unlearned and scored like a query. Cached on disk like L_o.
    Returns ((R, N) skews, (R,) labels or None, was_cached)."""
    from ..sources.generate import generate
    if att.model.conditioning == "text":
        raise MucsError("the fragile-item correction needs a class-conditional or unconditional model "
                        "(its reference queries are drawn per class): set fragile_refs to 0")
    C = att.model.num_classes
    labels = [c for c in range(C) for _ in range(s.fragile_refs)] if C else [None] * s.fragile_refs
    seeds = [s.fragile_seed + j for j in range(len(labels))]
    base = s.replace(fragile_refs=0, screen_noises=0)
    fields = {k: v for k, v in base.to_dict().items() if k not in ("top_k", "screen_keep", *FLOAT_TOLERANCE_ONLY)}
    lr = unlearning_lr(att.model, base)
    key = cache_key(kind="reference_skews", version=LOSS_VERSION, model=att.model.fingerprint(),
                    data=att.data.fingerprint(),
                    settings=fields, labels=labels, seeds=seeds, unlearning_lr=lr)
    hit = att._load_cached("reference_skews", key)
    if hit is not None:
        return hit["skews"], None if not C else hit["labels"], True
    lo, _ = att.original_losses(base, report)
    lnull, _ = att.null_loss(base, report)
    images = generate(att.model, labels, seeds, steps=50)
    rows = []
    for j, (img, y) in enumerate(zip(images, labels)):
        _, lu, _, _ = att.unlearned(to_model_range(img), y, lnull, lo, base)
        rows.append(skew(lu, lo, base.normalised))
        if report is not None:
            report("reference queries", (j + 1) / len(labels))
    skews = np.stack(rows)
    lab = np.array([-1 if y is None else y for y in labels], np.int64)
    att._save_cached("reference_skews", key, skews=skews, labels=lab)
    return skews, None if not C else lab, False


def fragile_correction(att, s: Settings, label, report=None) -> tuple:
    """(N,) mean skew of each item over the reference queries of other classes (all of them for an
    unconditional model), and a record for result.json."""
    refs, labels, cached = reference_skews(att, s, report)
    use = np.ones(len(refs), bool) if labels is None or label is None else labels != int(label)
    return refs[use].mean(0), dict(references=int(len(refs)), used=int(use.sum()), cached=cached,
                                   seeds=[s.fragile_seed, s.fragile_seed + len(refs) - 1])
