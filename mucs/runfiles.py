"""Reading a run folder's files back (result.json, losses.npz, scores.csv, query.png, meta.json)
with their shapes checked, so that a hand-edited, truncated or hostile run is one MucsError that
says what is wrong, never a traceback in whoever reads it (the app's history, `mucs report`)."""
import csv
import math
import numbers
import os
import warnings
from typing import Any

import numpy as np

from .checks import npz_headers, read_json
from .settings import check_settings_dict
from .errors import MucsError

MAX_QUERY_PIXELS = 4096 * 4096     # a run's query.png is the model-sized query: far below this
MAX_RUN_JSON_BYTES = 64 << 20      # result.json / meta.json
MAX_RUN_ITEMS = 200_000_000        # training items of a run's losses.npz (3 float64 arrays: 4.8 GB)
LOSS_ARRAYS = ("scores", "loss_original", "loss_unlearned")
LOSSES = ("loss_original", "loss_unlearned")
# meta.json fields that the history table shows: each must be a plain JSON value (not a list/object)
META_SHOWN = ("id", "created", "kind", "source", "class_name", "label", "steps", "converged", "top_k", "seconds",
              "model", "data", "num_train")


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_result(r, where: str = "result.json") -> dict:
    """The result.json object `r` when its fields have the run format's types, else MucsError."""
    def bad(what):
        return MucsError(f"{where}: {what}")
    if not isinstance(r, dict):
        raise bad(f"must be a JSON object, got {type(r).__name__}")
    for key in ("settings", "query", "stage_times"):
        if not isinstance(r.get(key), dict):
            raise bad(f"{key} must be an object, got {type(r.get(key)).__name__}")
    # null: a run of a method without L_null (D-TRAK, TRAK, AbU, the NN baselines: result.json's method)
    if not (_real(r.get("loss_null")) or r.get("loss_null") is None and r.get("method") not in (None, "mucs")):
        raise bad(f"loss_null must be a finite number, got {r.get('loss_null')!r:.60}")
    if not _int(r.get("unlearning_steps")) or r["unlearning_steps"] < 0:
        raise bad("unlearning_steps must be an integer ≥ 0")
    if not isinstance(r.get("converged"), bool):
        raise bad("converged must be true or false")
    top = r.get("top_k")
    if not isinstance(top, list) or not top or not all(_int(i) and i >= 0 for i in top):
        raise bad("top_k must be a non-empty list of training indices")
    curve = r.get("curve", [])
    if not isinstance(curve, list) or not all(isinstance(c, dict) for c in curve):
        raise bad("curve must be a list of objects")
    if not all(_int(c.get("step")) and _real(c.get("loss_f")) and _real(c.get("loss_r")) for c in curve):
        raise bad("curve entries must be {step: an integer, loss_f, loss_r: finite numbers}")
    if not all(isinstance(k, str) and _real(v) for k, v in r["stage_times"].items()):
        raise bad("stage_times must map stage names to finite numbers")
    q = r["query"]
    if q.get("label") is not None and not _int(q["label"]):
        raise bad("query.label must be an integer or null")
    for key in ("class_name", "source"):
        if q.get(key) is not None and not isinstance(q[key], str):
            raise bad(f"query.{key} must be a string")
    conv = q.get("conversions", [])
    if not isinstance(conv, list) or not all(isinstance(c, str) for c in conv):
        raise bad("query.conversions must be a list of strings")
    levels = r.get("noise_levels")
    if levels is not None and not (isinstance(levels, list) and all(
            isinstance(lv, dict) and _real(lv.get("sigma_t")) and _int(lv.get("timestep")) for lv in levels)):
        raise bad("noise_levels must be a list of {sigma_t, timestep} objects")
    for key in ("model", "data", "data_fingerprint", "model_fingerprint", "version"):
        if r.get(key) is not None and not isinstance(r[key], str):
            raise bad(f"{key} must be a string")
    from .settings import Settings
    known = {k: v for k, v in r["settings"].items() if k in Settings.__dataclass_fields__}
    try:
        check_settings_dict(known, what=f"{where}: settings")
    except MucsError as e:
        raise MucsError(str(e)) from None
    return r


def check_meta(m, where: str = "meta.json") -> dict:
    """The meta.json object `m` when the fields the history shows are plain values, else MucsError."""
    if not isinstance(m, dict):
        raise MucsError(f"{where}: must be a JSON object, got {type(m).__name__}")
    for key in META_SHOWN:
        v = m.get(key)
        if v is not None and not isinstance(v, (str, bool, numbers.Real)):
            raise MucsError(f"{where}: {key} must be a plain value, got {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise MucsError(f"{where}: {key} must be finite")
    return m


def read_result(folder: str) -> dict:
    path = os.path.join(folder, "result.json")
    return check_result(read_json(path, "result.json", MAX_RUN_JSON_BYTES), path)


def read_meta(folder: str) -> dict:
    path = os.path.join(folder, "meta.json")
    return check_meta(read_json(path, "meta.json", MAX_RUN_JSON_BYTES), path)


MAX_CAPTION_CHARS = 4096   # a caption longer than this is not one a text encoder reads


def read_losses(folder: str) -> dict:
    """scores, loss_original, loss_unlearned (and labels when saved) of losses.npz: 1-D, one entry per
    training item, finite; their sizes are read from the headers before anything is decompressed."""
    path = os.path.join(folder, "losses.npz")
    heads = npz_headers(path)
    # a method without losses (D-TRAK, TRAK, the NN baselines) saves neither loss array: NaN here
    missing = [k for k in LOSS_ARRAYS if k not in heads and (k == "scores" or LOSSES[1 - LOSSES.index(k)] in heads)]
    if missing:
        raise MucsError(f"{path}: no {missing[0]} array")
    n = heads["scores"][0][0] if len(heads["scores"][0]) == 1 else None
    if n is None:
        raise MucsError(f"{path}: scores must be a 1-D float array of one entry per training item, got "
                        f"{heads['scores'][1]} {heads['scores'][0]}")
    for k in [a for a in LOSS_ARRAYS if a in heads] + (["labels"] if "labels" in heads else []):
        shape, dtype = heads[k]
        if shape != (n,) or dtype.kind not in ("iu" if k == "labels" else "f"):
            raise MucsError(f"{path}: {k} must be a 1-D {'integer' if k == 'labels' else 'float'} array of one "
                            f"entry per training item, got {dtype} {shape}")
    if n is None or not 1 <= n <= MAX_RUN_ITEMS:
        raise MucsError(f"{path}: {n} training items (at most {MAX_RUN_ITEMS})")
    if "captions" in heads and (heads["captions"][0] != (n,) or heads["captions"][1].kind != "U"
                                or heads["captions"][1].itemsize > 4 * MAX_CAPTION_CHARS):
        raise MucsError(f"{path}: captions must be a 1-D text array of one caption (at most {MAX_CAPTION_CHARS} "
                        f"characters) per training item, got {heads['captions'][1]} {heads['captions'][0]}")
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in heads if k in LOSS_ARRAYS + ("labels", "captions")}
    for k in LOSS_ARRAYS:
        if k not in out:
            out[k] = np.full(n, np.nan)
        elif not np.isfinite(out[k]).all():
            raise MucsError(f"{path}: {k} holds NaN or inf")
    if "labels" in out:
        if out["labels"].dtype.kind == "u" and n and out["labels"].max() > np.iinfo(np.int64).max:
            raise MucsError(f"{path}: labels above {np.iinfo(np.int64).max}")
        out["labels"] = out["labels"].astype(np.int64)
        if n and out["labels"].min() < 0:
            raise MucsError(f"{path}: labels must be ≥ 0")
    return out


def read_csv_labels(folder: str, n: int):
    """Labels from a scores.csv of any version (by column name), or None when it has none."""
    path = os.path.join(folder, "scores.csv")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or rows[0].get("label", "") in ("", None):
            return None
        labels = np.full(n, -1, np.int64)
        for r in rows:
            labels[int(r["index"])] = int(r["label"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, csv.Error) as e:
        raise MucsError(f"{path}: cannot read its labels ({type(e).__name__})") from None
    if (labels < 0).any():
        raise MucsError(f"{path}: labels must be ≥ 0, one per training item")
    return labels


def read_query_png(folder: str):
    """The run's query image as (H, W, C) uint8, None when the run has none; its size is checked from
    the PNG header before the pixels are decoded."""
    path = os.path.join(folder, "query.png")
    if not os.path.lexists(path):
        return None
    from PIL import Image
    try:
        if not os.path.isfile(path):
            raise OSError("not a regular file")
        with warnings.catch_warnings():   # PIL's bomb warning: the size is refused below, with figures
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Any = Image.open(path)
        with im:
            if im.width * im.height > MAX_QUERY_PIXELS:
                raise MucsError(f"{path}: {im.width}x{im.height} is far larger than a query (at most "
                                f"{MAX_QUERY_PIXELS} pixels)")
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK") else "L")
            q = np.asarray(im)
    except MucsError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise MucsError(f"{path}: not a readable PNG ({type(e).__name__})") from None
    return q[..., None] if q.ndim == 2 else q


def read_run(folder: str) -> tuple:
    """(result.json object, loss arrays, query image) of a run folder, every file checked."""
    r = read_result(folder)
    arrays = read_losses(folder)
    n = len(arrays["scores"])
    if max(r["top_k"]) >= n:
        raise MucsError(f"{os.path.join(folder, 'result.json')}: top_k index {max(r['top_k'])} is not one of the "
                        f"{n} training items")
    if "labels" not in arrays:   # a run written before labels went into losses.npz: read scores.csv's column
        arrays["labels"] = read_csv_labels(folder, n)
    return r, arrays, read_query_png(folder)
