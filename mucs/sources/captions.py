"""Captions of a training set, for text-conditional models, from the three sources a dataset may be:
an .npz `captions` array, an image folder's metadata.jsonl / metadata.csv (the `datasets`
imagefolder convention: a `file_name` column and a text column), or a Hugging Face dataset's text
column. Every image must have one caption (a string); the empty string is a caption too."""
import csv
import json
import os
from typing import Optional

import numpy as np

from ..errors import MucsError

CAPTION_COLUMNS = ("text", "caption", "prompt")    # looked for, in this order, when no column is named
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
MAX_CAPTION_CHARS = 10_000


def _check(captions: list, where: str) -> list:
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise MucsError(f"{where}: caption {i} is {type(c).__name__}, not a string")
        if len(c) > MAX_CAPTION_CHARS:
            raise MucsError(f"{where}: caption {i} has {len(c)} characters (at most {MAX_CAPTION_CHARS})")
    return captions


def npz_captions(z, n: int, path: str) -> Optional[list]:
    """The `captions` array of an .npz (N strings), or None when it has none."""
    if "captions" not in z:
        return None
    caps = z["captions"]
    if caps.dtype.kind != "U" or caps.shape != (n,):
        raise MucsError(f"{path}: captions must be ({n},) strings, got {caps.dtype} {caps.shape}")
    return _check([str(c) for c in caps], path)


def _pick(columns, column: Optional[str], where: str) -> Optional[str]:
    if column is not None:
        if column not in columns:
            raise MucsError(f"{where} has no column {column!r} (columns: {sorted(columns)})")
        return column
    return next((c for c in CAPTION_COLUMNS if c in columns), None)


def folder_captions(path: str, files: list, column: Optional[str] = None) -> Optional[list]:
    """Captions of an image folder's `files` (paths relative to `path`) from metadata.jsonl or
    metadata.csv files in the folder or its subfolders (`file_name` relative to the metadata file),
    or None when there is no metadata file."""
    rows = {}
    found = []
    for folder, _, names in os.walk(path):
        for meta in METADATA_FILES:
            if meta in names:
                found.append(os.path.join(folder, meta))
    if not found:
        if column is not None:
            raise MucsError(f"{path} has no metadata.jsonl or metadata.csv for --caption-column {column!r}")
        return None
    for meta in sorted(found):
        base = os.path.dirname(meta)
        for rec in _read_metadata(meta):
            name = rec.get("file_name")
            if not isinstance(name, str):
                raise MucsError(f"{meta}: every row needs a file_name")
            col = _pick(rec.keys(), column, meta)
            if col is None:
                raise MucsError(f"{meta}: no caption column ({', '.join(CAPTION_COLUMNS)}; or name one with "
                                "--caption-column)")
            rows[os.path.normpath(os.path.relpath(os.path.join(base, name), path))] = rec[col]
    missing = [f for f in files if os.path.normpath(f) not in rows]
    if missing:
        raise MucsError(f"{path}: {len(missing)} image(s) have no caption in the metadata (e.g. {missing[0]})")
    return _check([rows[os.path.normpath(f)] for f in files], path)


def _read_metadata(meta: str) -> list:
    try:
        with open(meta, newline="", encoding="utf-8") as f:
            if meta.endswith(".csv"):
                return list(csv.DictReader(f))
            out = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError(f"line {n} is not a JSON object")
                    out.append(rec)
            return out
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise MucsError(f"cannot read {meta}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}") from e


def hf_captions(ds, column: Optional[str], path: str) -> Optional[list]:
    """The text column of a Hugging Face dataset (`column`, else the first string column named
    text/caption/prompt), or None when it has none."""
    import datasets
    strings = [k for k, f in ds.features.items() if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")]
    if column is not None and column in ds.features and column not in strings:
        raise MucsError(f"{path}: column {column!r} does not hold strings")
    col = _pick(strings, column, path)
    return None if col is None else _check(list(ds[col]), path)


def caption_preview(captions: list, n: int = 8) -> list:
    """(caption, count) of the `n` most frequent captions: what `--list-classes` shows for a text model."""
    values, counts = np.unique(np.asarray(captions, dtype=object).astype(str), return_counts=True)
    order = np.lexsort((values, -counts))[:n]
    return [(str(values[i]), int(counts[i])) for i in order]
