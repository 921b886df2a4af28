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
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from typing import List, Optional


from ..method.attribute import Attribution
from ..cache import (atomic_write, atomic_write_dir, check_writable_dir, recover_for_reading, recover_moved_aside,
                     write_tree)
from ..checks import dumps_strict, json_default
from ..defaults import ASSETS, REPO, default_runs_dir, shown_path  # noqa: F401  (REPO, default_runs_dir: re-exported)
from ..errors import MucsError
from ..leftovers import STALE_SECONDS, abandoned, clean_tempdir, owner_tag
from ..runfiles import read_meta, read_result

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
    return dumps_strict(m, "the run's meta.json", indent=1, default=json_default).encode()


def write_run(att: Attribution, path: str, meta: Optional[dict] = None, force: bool = False,
              class_names=None) -> str:
    """Write `att` into the folder `path` in the run format (result.json, scores.csv, losses.npz,
    query.png, meta.json, marker), atomically: a new or empty folder, or an earlier run (its files
    replaced, files the user added kept); a folder we did not make only with `force`, beside its
    files (mucs.cache.check_out_dir). Returns the absolute path."""
    path = os.path.abspath(path)
    files = run_files(att, os.path.basename(path), meta, class_names)
    clean_tempdir()   # staging folders of earlier versions' killed writers (mucs-run-*)
    atomic_write_dir(path, files, kind="run", force=force)
    return path


def run_files(att: Attribution, run_id: str, meta: Optional[dict] = None, class_names=None,
              now: Optional[datetime] = None) -> dict:
    """{name: bytes} of a run folder (without the marker)."""
    files = _portable(att).files(class_names)
    files[META] = _meta_bytes(run_meta(att, run_id, meta, now))
    return files


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
        self._summaries: dict = {}   # run folder -> (file stamps, (meta, settings)): see _summary
        self._clean_stale()

    def _clean_stale(self, older_than: float = STALE_SECONDS) -> None:
        """Drop staging folders left by a crash (hidden, so never listed): at once when their writer is
        gone, after `older_than` seconds when it is unknown (mucs.leftovers); and this project's
        abandoned staging folders in $TMPDIR."""
        try:
            names = [n for n in os.listdir(self.root) if n.startswith(".staging-")]
        except OSError:
            names = []
        for name in names:
            p = os.path.join(self.root, name)
            if os.path.isdir(p) and not os.path.islink(p) and abandoned(p, older_than):
                shutil.rmtree(p, ignore_errors=True)
        clean_tempdir()

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
            recover_for_reading(p)   # mid-replacement (or a killed one): wait for the swap, or move the old copy back
            if not _is_run(p):
                raise MucsError(f"unknown run {run_id!r}")
        return p

    def stamp(self, run_id: str) -> tuple:
        """What changes whenever a run's files do: the folder's and its files' inode, size and times
        (a run rewritten in place is a new folder: see mucs.cache.move_dir_into_place)."""
        for attempt in range(3):   # replaced between path() and the stats: path() waits for the swap, stat again
            p = self.path(run_id)
            names = RUN_FILES + (("query.png",) if os.path.lexists(os.path.join(p, "query.png")) else ())
            try:
                stats = [os.stat(p)] + [os.stat(os.path.join(p, f)) for f in names]
            except OSError as e:
                if attempt < 2:
                    continue
                raise MucsError(f"unknown run {run_id!r} ({e.strerror or e})") from None
            return tuple((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in stats)
        raise AssertionError("not reached")

    @staticmethod
    def is_example(run_id: str) -> bool:
        return str(run_id).startswith(EXAMPLE_PREFIX)

    # --- write -----------------------------------------------------------------------------------
    def save(self, att: Attribution, meta: Optional[dict] = None, class_names=None) -> str:
        """Store a finished attribution; returns its id. The run folder appears complete or not at all."""
        now = datetime.now(timezone.utc)
        run_id = now.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        files = run_files(att, run_id, meta, class_names, now)
        self._clean_stale()
        staging = tempfile.mkdtemp(dir=self.root, prefix=".staging-", suffix=owner_tag())
        try:
            inner = os.path.join(staging, "run")
            write_tree(inner, files, kind="run")
            os.rename(inner, os.path.join(self.root, run_id))   # a new, unique name: never replaces anything
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return run_id

    def delete(self, run_id: str) -> None:
        if self.is_example(run_id):
            raise MucsError("example runs are read-only")
        p = self.path(run_id)
        trash = tempfile.mkdtemp(dir=self.root, prefix=".staging-", suffix=owner_tag())
        os.rename(p, os.path.join(trash, "x"))   # disappears at once, then is removed
        shutil.rmtree(trash, ignore_errors=True)

    # --- read ------------------------------------------------------------------------------------
    def _summary(self, run_id: str) -> tuple:
        """(meta, settings) of a run, both checked (mucs.runfiles); a run whose meta.json or
        result.json is malformed gives ({id, example, damaged: why}, {}). Kept per run until its
        files change, so listing the history reads each run once."""
        def files_stamp(p):
            try:
                return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in
                             (os.stat(os.path.join(p, f)) for f in ("result.json", META)))
            except OSError:
                return None
        base = dict(id=run_id, example=self.is_example(run_id))
        if "/" in run_id:
            base["collection"] = run_id.rsplit("/", 1)[0]
        for attempt in range(3):
            p = self.path(run_id)
            stamp = files_stamp(p)
            hit = self._summaries.get(p)
            if hit is not None and stamp is not None and hit[0] == stamp:
                return hit[1]
            try:
                m, settings = dict(read_meta(p), **base), dict(read_result(p)["settings"])
            except MucsError as e:
                m, settings = dict(base, damaged=str(e)), {}
                # replaced while read (its files moved or changed under us): read the new copy, not "damaged"
                if attempt < 2 and (stamp is None or files_stamp(p) != stamp):
                    continue
            break
        if stamp is not None:
            self._summaries[p] = (stamp, (m, settings))
            while len(self._summaries) > 4096:
                self._summaries.pop(next(iter(self._summaries)), None)
        return m, settings

    def meta(self, run_id: str) -> dict:
        """meta.json of a run (checked), with its id; MucsError for a damaged run."""
        m = self._summary(run_id)[0]
        if "damaged" in m:
            raise MucsError(f"run {run_id} is damaged: {m['damaged']}")
        return dict(m)

    def settings(self, run_id: str) -> dict:
        """The settings recorded in a run's result.json ({} for a damaged run)."""
        return dict(self._summary(run_id)[1])

    def load(self, run_id: str) -> Attribution:
        """The run's Attribution, every file checked; MucsError naming what is wrong for a damaged run."""
        for attempt in range(3):   # a run replaced while it is read (a new folder renamed into place) is read again
            path = self.path(run_id)
            self.meta(run_id)   # a run listed as damaged does not open either
            before = _folder_stamp(path)
            att, error = None, None
            try:
                att = Attribution.load(path)
            except MucsError as e:
                error = MucsError(f"run {run_id} is damaged: {e}")
            except Exception as e:   # a check the run format missed: still one line, never a traceback
                error = MucsError(f"run {run_id} cannot be read: {type(e).__name__}: {e}")
            if _folder_stamp(path) == before or attempt == 2:   # every file came from one version of the run
                if error is not None or att is None:
                    raise error or MucsError(f"run {run_id} cannot be read") from None
                return att
        raise AssertionError("not reached")

    def list(self) -> list:
        """Metadata of every run, the runs of collections included: user runs newest first (by
        creation time), then the examples (newest first too). A run whose files are malformed is
        listed as {id, example, damaged: why}, never fails the listing."""
        out = []
        recover_moved_aside(self.root)   # a run that a killed save left moved aside is listed again
        for base, prefix in ((self.root, ""), (self.examples, EXAMPLE_PREFIX)):
            if not base or not os.path.isdir(base):
                continue
            try:
                names = sorted(n for n in os.listdir(base) if not n.startswith("."))
            except OSError:
                continue
            found = []
            for name in names:
                p = os.path.join(base, name)
                if _is_run(p):
                    found.append(prefix + name)
                elif is_collection(p):
                    try:
                        found += [f"{prefix}{name}/{m}" for m in sorted(os.listdir(p))
                                  if _plain_name(m) and _is_run(os.path.join(p, m))]
                    except OSError:
                        continue
            metas = [dict(self._summary(run_id)[0]) for run_id in found]
            out += sorted(metas, key=lambda m: (str(m.get("created", "")), m["id"]), reverse=True)
        return out

    def ids(self) -> List:          # List: `list` here would name the method above
        """Ids of the runs that can be opened (damaged ones are left out)."""
        return [m["id"] for m in self.list() if "damaged" not in m]

    def table(self) -> List:
        """Rows for a table view: id, created, source, class, steps, converged, top-k, seconds (a
        damaged run: kind 'damaged' and, in place of the source, why)."""
        rows = []
        for m in self.list():
            if "damaged" in m:
                rows.append([m["id"], "", "damaged", m["damaged"], "", None, False, None, None])
                continue
            rows.append([m["id"], m.get("created", ""), m.get("kind", ""), m.get("source", ""),
                         m.get("class_name") or "", m.get("steps"), bool(m.get("converged")), m.get("top_k"),
                         m.get("seconds")])
        return rows

    # --- export ----------------------------------------------------------------------------------
    def export(self, run_id: str, fmt: str, out_dir: Optional[str] = None, class_names=None) -> str:
        """Write the run as CSV or JSON, both with every training item (rank, index, score, label,
        class, L_o, L_u; JSON: `items`, beside the result and metadata) into `out_dir` (a new
        temporary folder by default); returns the path."""
        fmt = (fmt or "").lower()
        if fmt not in ("csv", "json"):
            raise MucsError(f"export format must be csv or json, got {fmt!r}")
        att = self.load(run_id)
        meta = self.meta(run_id)
        out_dir = out_dir or tempfile.mkdtemp(prefix="mucs-export-")
        path = os.path.join(out_dir, f"mucs-{safe_name(run_id)}.{fmt}")
        if fmt == "json":
            data = dict(meta=meta, result=att.result_json(), items=att.items_json(class_names))
            atomic_write(path, dumps_strict(data, "the JSON export", indent=1, default=json_default).encode())
        else:
            atomic_write(path, att.scores_csv(class_names).encode())
        return path


def _folder_stamp(path: str) -> Optional[tuple]:
    """A run folder's inode and change time: a replaced run is a new folder (it was renamed into place)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


def safe_name(run_id: str) -> str:
    """A run or collection id as part of a file name (no ':' or '/')."""
    return str(run_id).replace(":", "-").replace("/", "-")
