"""The collections of a run store: the writable runs folder's and the read-only examples' (ids prefixed
with 'example:'), listed, read, deleted and exported as one; and a collection's saved runs loaded."""
import os
import shutil
import tempfile
from typing import List, Optional

from ..cache import folder_kind
from ..errors import MucsError
from .collection import DONE, KIND, load_record, new_id
from .history import EXAMPLE_PREFIX, RunStore, is_collection, is_run, safe_name


class CollectionStore:
    """The collections in a RunStore's folder (writable) and its examples folder (read-only, ids
    prefixed with 'example:'): list, read, delete and export each as one."""

    def __init__(self, runs: RunStore):
        self.runs = runs

    def path(self, coll_id: str) -> str:
        cid = str(coll_id or "").strip()
        base, name = (self.runs.examples, cid[len(EXAMPLE_PREFIX):]) if cid.startswith(EXAMPLE_PREFIX) \
            else (self.runs.root, cid)
        if not base or not name or name.startswith(".") or "/" in name or os.sep in name or name == "..":
            raise MucsError(f"unknown collection {coll_id!r}")
        p = os.path.join(base, name)
        if not is_collection(p):
            raise MucsError(f"unknown collection {coll_id!r}")
        return p

    def new_path(self) -> tuple:
        cid = new_id()
        return cid, os.path.join(self.runs.root, cid)

    def ids(self) -> List:          # List: `list` in this class body names the method below
        return [r["id"] for r in self.list()]

    def list(self) -> List:
        """Every readable collection record (id set to its id here): newest first, then the examples."""
        out = []
        for base, prefix in ((self.runs.root, ""), (self.runs.examples, EXAMPLE_PREFIX)):
            if not base or not os.path.isdir(base):
                continue
            found = []
            for name in os.listdir(base):
                p = os.path.join(base, name)
                if name.startswith(".") or not is_collection(p):
                    continue
                try:
                    r = load_record(p)
                except MucsError:
                    continue
                r["id"], r["example"] = prefix + name, bool(prefix)
                found.append(r)
            out += sorted(found, key=lambda r: (str(r.get("created", "")), r["id"]), reverse=True)
        return out

    def record(self, coll_id: str) -> dict:
        r = load_record(self.path(coll_id))
        r["id"], r["example"] = str(coll_id), str(coll_id).startswith(EXAMPLE_PREFIX)
        return r

    def member_ids(self, coll_id: str) -> List:
        """The run ids of the collection's saved items, in the batch's order."""
        p = self.path(coll_id)
        r = load_record(p)
        return [f"{coll_id}/{it['name']}" for it in r["items"]
                if it.get("status") == DONE and is_run(os.path.join(p, it["name"]))]

    def delete(self, coll_id: str) -> None:
        """Remove the collection and all its runs, at once."""
        if str(coll_id).startswith(EXAMPLE_PREFIX):
            raise MucsError("example collections are read-only")
        p = self.path(coll_id)
        if folder_kind(p) != KIND:
            raise MucsError(f"{p} is not a folder this project wrote: not deleted")
        trash = tempfile.mkdtemp(dir=self.runs.root, prefix=".staging-")
        os.rename(p, os.path.join(trash, "x"))
        shutil.rmtree(trash, ignore_errors=True)

    def export(self, coll_id: str, out_dir: Optional[str] = None) -> str:
        """The whole collection (record and every run folder) as one .zip; returns its path."""
        import zipfile
        p = self.path(coll_id)
        out_dir = out_dir or tempfile.mkdtemp(prefix="mucs-export-")
        name = safe_name(coll_id)
        dest = os.path.join(out_dir, f"mucs-collection-{name}.zip")
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".zip-")
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for dp, dirs, files in os.walk(p):
                    dirs[:] = sorted(d for d in dirs if not d.startswith(".staging"))
                    for f in sorted(files):
                        full = os.path.join(dp, f)
                        z.write(full, os.path.join(name, os.path.relpath(full, p)))
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest


def load_members(folder: str) -> tuple:
    """(record, [(item name, Attribution)]) of a collection folder: its saved items, in order."""
    from ..method.attribute import Attribution
    record = load_record(folder)
    out = []
    for it in record["items"]:
        p = os.path.join(folder, it.get("name", ""))
        if it.get("status") == DONE and is_run(p):
            try:
                out.append((it["name"], Attribution.load(p)))
            except Exception as e:      # a damaged run: said once, the rest analysed
                raise MucsError(f"run {it['name']} of the collection cannot be read: {type(e).__name__}: {e}") from None
    return record, out
