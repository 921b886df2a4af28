"""A run store on disk: every attribution is one folder (written atomically with
`Attribution.save` plus a `meta.json`), listed newest first, reopened after a restart and
exported as CSV or JSON. Shipped example runs (read-only) are listed alongside.

The one run format, shared by the app and `mucs attribute`: a folder holding result.json,
scores.csv, losses.npz, query.png, meta.json and the `.mucs` marker. `RunStore.save` writes a new
run under the store's root; `write_run` writes the same layout into a folder of the caller's
choosing (`mucs attribute --out DIR`), so a run folder inside an app's runs folder is listed by it.
The runs of a collection (a batch; mucs/explorer/collection.py) are run folders inside the
collection's folder: the store lists them too, by the id `COLLECTION/RUN`."""
import dataclasses
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from ..method.attribute import Attribution
from ..cache import MARKER, atomic_write, atomic_write_dir, check_writable_dir, marker_bytes
from ..checks import dumps_strict
from ..defaults import ASSETS, REPO, default_runs_dir, shown_path  # noqa: F401  (REPO, default_runs_dir: re-exported)
from ..errors import MucsError

META = "meta.json"
RUN_FILES = ("result.json", "losses.npz", "scores.csv", META)   # what makes a folder a run
EXAMPLE_PREFIX = "example:"
DEFAULT_EXAMPLES = os.path.join(ASSETS, "examples")
COLLECTION_FILE = "collection.json"   # what makes a folder a collection (its runs are subfolders)


def _is_run(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in RUN_FILES)


def is_run(path: str) -> bool:
    """True when `path` is a run folder in the one run format (what RunStore lists)."""
    return os.path.isdir(path) and _is_run(path)


def is_collection(path: str) -> bool:
    """True when `path` is a collection folder (a collection.json; its runs are subfolders)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, COLLECTION_FILE))


def _plain_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and os.sep not in name and "/" not in name and name != ".."


def _portable(att: Attribution) -> Attribution:
    """The attribution with its model and data paths relative to the repository when they lie in
    it (so committed runs carry no machine's absolute paths), else as given."""
    info = dict(att.info or {})
    for k in ("model", "data"):
        if isinstance(info.get(k), str):
            info[k] = shown_path(info[k])
    return dataclasses.replace(att, info=info)


def run_meta(att: Attribution, run_id: str, meta: Optional[dict] = None, now: Optional[datetime] = None) -> dict:
    """meta.json of a run: the caller's fields (kind, source, model, data, ...) plus id, creation
    time and the summary the history table shows."""
    now = now or datetime.now(timezone.utc)
    m = dict(meta or {})
    m.update(id=run_id, created=now.isoformat(timespec="seconds"),
             label=att.query.get("label"), class_name=att.query.get("class_name"),
             steps=att.steps, converged=att.converged, top_k=len(att.top),
             seconds=round(float(att.stage_times.get("total", 0.0)), 2),
             num_train=len(att.scores))
    m.setdefault("source", att.query.get("source", ""))
    for k in ("model", "data"):
        if isinstance(m.get(k), str):
            m[k] = shown_path(m[k])
    return m


def _meta_bytes(m: dict) -> bytes:
    return dumps_strict(m, "the run's meta.json", indent=1, default=_json_default).encode()


def write_run(att: Attribution, path: str, meta: Optional[dict] = None, force: bool = False,
              class_names=None) -> str:
    """Write `att` into the folder `path` in the run format (result.json, scores.csv, losses.npz,
    query.png, meta.json, marker), atomically: a new or empty folder, or an earlier run (replaced);
    anything else only with `force`. Returns the absolute path."""
    path = os.path.abspath(path)
    staging = tempfile.mkdtemp(prefix="mucs-run-")   # Attribution.save's files, read back (small)
    try:
        inner = os.path.join(staging, "run")
        _portable(att).save(inner, class_names)
        files = {}
        for name in os.listdir(inner):
            with open(os.path.join(inner, name), "rb") as f:
                files[name] = f.read()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files[META] = _meta_bytes(run_meta(att, os.path.basename(path), meta))
    atomic_write_dir(path, files, kind="run", force=force)
    return path


class RunStore:
    """Runs under `root` (writable) and `examples` (read-only, ids prefixed with 'example:')."""

    def __init__(self, root: Optional[str] = None, examples: Optional[str] = DEFAULT_EXAMPLES):
        self.root = os.path.abspath(root or default_runs_dir())
        self.examples = os.path.abspath(examples) if examples else None
        check_writable_dir(self.root, "run folder")
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise MucsError(f"run folder {self.root} cannot be created: {e.strerror or e}") from e
        self._clean_stale()

    def _clean_stale(self, older_than: float = 3600.0) -> None:
        """Drop staging folders left by a crash (hidden, so never listed)."""
        now = time.time()
        for name in os.listdir(self.root):
            p = os.path.join(self.root, name)
            if name.startswith(".staging-") and os.path.isdir(p) and now - os.path.getmtime(p) > older_than:
                shutil.rmtree(p, ignore_errors=True)

    # --- paths ---------------------------------------------------------------------------------
    def path(self, run_id: str) -> str:
        run_id = str(run_id or "").strip()
        if run_id.startswith(EXAMPLE_PREFIX):
            base, name = self.examples, run_id[len(EXAMPLE_PREFIX):]
        else:
            base, name = self.root, run_id
        parts = name.split("/")
        # a run at the top of the folder, or COLLECTION/RUN: a run inside a collection's folder
        if base is None or len(parts) > 2 or not all(_plain_name(n) for n in parts) or \
                (len(parts) == 2 and not is_collection(os.path.join(base, parts[0]))):
            raise MucsError(f"unknown run {run_id!r}")
        p = os.path.join(base, *parts)
        if not _is_run(p):
            raise MucsError(f"unknown run {run_id!r}")
        return p

    @staticmethod
    def is_example(run_id: str) -> bool:
        return str(run_id).startswith(EXAMPLE_PREFIX)

    # --- write -----------------------------------------------------------------------------------
    def save(self, att: Attribution, meta: Optional[dict] = None, class_names=None) -> str:
        """Store a finished attribution; returns its id. The run folder appears complete or not at all."""
        now = datetime.now(timezone.utc)
        run_id = now.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        m = run_meta(att, run_id, meta, now)
        staging = tempfile.mkdtemp(dir=self.root, prefix=".staging-")
        try:
            inner = os.path.join(staging, "run")
            _portable(att).save(inner, class_names)
            atomic_write(os.path.join(inner, META), _meta_bytes(m))
            if not os.path.exists(os.path.join(inner, MARKER)):
                atomic_write(os.path.join(inner, MARKER), marker_bytes("run"))
            os.rename(inner, os.path.join(self.root, run_id))   # a new, unique name: never replaces anything
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return run_id

    def delete(self, run_id: str) -> None:
        if self.is_example(run_id):
            raise MucsError("example runs are read-only")
        p = self.path(run_id)
        trash = tempfile.mkdtemp(dir=self.root, prefix=".staging-")
        os.rename(p, os.path.join(trash, "x"))   # disappears at once, then is removed
        shutil.rmtree(trash, ignore_errors=True)

    # --- read ------------------------------------------------------------------------------------
    def meta(self, run_id: str) -> dict:
        with open(os.path.join(self.path(run_id), META)) as f:
            m = json.load(f)
        m["id"] = run_id
        m["example"] = self.is_example(run_id)
        if "/" in run_id:
            m["collection"] = run_id.rsplit("/", 1)[0]
        return m

    def load(self, run_id: str) -> Attribution:
        try:
            return Attribution.load(self.path(run_id))
        except MucsError:
            raise
        except Exception as e:
            raise MucsError(f"run {run_id} cannot be read: {type(e).__name__}: {e}") from e

    def list(self) -> list:
        """Metadata of every readable run, the runs of collections included: user runs newest first
        (by creation time), then the examples (newest first too)."""
        out = []
        for base, prefix in ((self.root, ""), (self.examples, EXAMPLE_PREFIX)):
            if not base or not os.path.isdir(base):
                continue
            found = []
            for name in sorted(n for n in os.listdir(base) if not n.startswith(".")):
                p = os.path.join(base, name)
                if _is_run(p):
                    found.append(prefix + name)
                elif is_collection(p):
                    found += [f"{prefix}{name}/{m}" for m in sorted(os.listdir(p))
                              if _plain_name(m) and _is_run(os.path.join(p, m))]
            metas = []
            for run_id in found:
                try:
                    metas.append(self.meta(run_id))
                except (OSError, ValueError, MucsError):
                    continue   # unreadable metadata: skip rather than break the listing
            out += sorted(metas, key=lambda m: (str(m.get("created", "")), m["id"]), reverse=True)
        return out

    def ids(self) -> list:
        return [m["id"] for m in self.list()]

    def table(self) -> list:
        """Rows for a table view: id, created, source, class, steps, converged, top-k, seconds."""
        rows = []
        for m in self.list():
            rows.append([m["id"], m.get("created", ""), m.get("kind", ""), m.get("source", ""),
                         m.get("class_name") or "", m.get("steps"), bool(m.get("converged")), m.get("top_k"),
                         m.get("seconds")])
        return rows

    # --- export ----------------------------------------------------------------------------------
    def export(self, run_id: str, fmt: str, out_dir: Optional[str] = None, class_names=None) -> str:
        """Write the run as CSV (every training item: rank, index, score, label, class, L_o, L_u)
        or JSON (result + metadata) into `out_dir` (a new temporary folder by default); returns the path."""
        fmt = (fmt or "").lower()
        if fmt not in ("csv", "json"):
            raise MucsError(f"export format must be csv or json, got {fmt!r}")
        att = self.load(run_id)
        meta = self.meta(run_id)
        out_dir = out_dir or tempfile.mkdtemp(prefix="mucs-export-")
        path = os.path.join(out_dir, f"mucs-{safe_name(run_id)}.{fmt}")
        if fmt == "json":
            data = dict(meta=meta, result=att.result_json())
            atomic_write(path, dumps_strict(data, "the JSON export", indent=1, default=_json_default).encode())
        else:
            atomic_write(path, att.scores_csv(class_names).encode())
        return path


def safe_name(run_id: str) -> str:
    """A run or collection id as part of a file name (no ':' or '/')."""
    return str(run_id).replace(":", "-").replace("/", "-")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
