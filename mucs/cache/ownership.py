"""Which folders are ours: the `.mucs` marker (a folder's kind and the manifest of the entries this
project wrote in it), and which entries of an existing folder a writer must keep."""
import json
import os
from typing import Iterable, Optional

from ..errors import MucsError

MARKER = ".mucs"          # {"mucs": kind, ...} in every folder we write: how we recognise our own
# What each kind of folder holds when this project writes it: the manifest of a marker written before
# markers listed their files (or of a run/model from before the marker existed).
KIND_FILES = {"run": ("result.json", "scores.csv", "losses.npz", "query.png", "meta.json"),
              "model": ("unet", "scheduler", "model_index.json", "mucs_train.json")}
KEEP = "keep.json"        # in an .old-<name>-* folder: the entries of the old folder to carry into the new one


def marker_bytes(kind: str, files: Iterable[str] = ()) -> bytes:
    """The `.mucs` marker: the folder's kind and the manifest of the entries this project wrote in it."""
    names = sorted(set(files) - {MARKER})
    return json.dumps({"mucs": kind, "version": 2, "files": names}, allow_nan=False).encode()


def write_marker(folder: str, kind: str) -> None:
    """Record in `folder` that it is a `kind` folder whose present entries were all written by us."""
    with open(os.path.join(folder, MARKER), "wb") as f:
        f.write(marker_bytes(kind, os.listdir(folder)))


def write_tree(folder: str, files: dict, kind: Optional[str] = None) -> None:
    """Write {name: bytes} into the new folder `folder` (plus the marker of `kind`)."""
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    if kind:
        write_marker(folder, kind)


def _read_marker(path: str) -> Optional[dict]:
    try:
        with open(os.path.join(path, MARKER)) as f:
            m = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("mucs"), str) and m["mucs"] else None


def folder_kind(path: str) -> Optional[str]:
    """What `path` holds: 'run' or 'model' (or another kind named by its marker) when it is a folder
    written by this project, 'empty' for an empty folder, None for anything else (a file, a folder
    of other files, a missing path). Runs and models written before the marker existed count too:
    a run has result.json, scores.csv and losses.npz, a model mucs_train.json and unet/."""
    if os.path.islink(path) or not os.path.isdir(path):
        return None
    try:
        names = set(os.listdir(path))
    except OSError:
        return None
    if not names:
        return "empty"
    if MARKER in names:
        m = _read_marker(path)
        if m is not None:
            return m["mucs"]
    isfile = lambda n: os.path.isfile(os.path.join(path, n))   # noqa: E731
    if all(isfile(n) for n in ("result.json", "scores.csv", "losses.npz")):
        return "run"
    if isfile("mucs_train.json") and os.path.isdir(os.path.join(path, "unet")):
        return "model"
    return None


def written_by_us(path: str, kind: str) -> set:
    """The entries of the `kind` folder `path` that this project wrote: its marker's manifest (the
    kind's usual files for a folder from before manifests), and the marker itself."""
    m = _read_marker(path) if os.path.lexists(os.path.join(path, MARKER)) else None
    files = m.get("files") if m is not None and m.get("mucs") == kind else None
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        files = KIND_FILES.get(kind, ())
    return set(files) | ({MARKER} if m is not None else set())


def kept_entries(path: str, kind: str, force: bool, what: str, names: Iterable[str]) -> list:
    """The entries of the existing folder `path` that were not written by us and are to be kept when
    a `kind` folder of `names` is written there; MucsError when writing there would lose data."""
    if not os.path.lexists(path):
        return []
    if os.path.islink(path):
        raise MucsError(f"{what} {path} is a symbolic link: nothing was written; give the folder it points to, "
                        "or a new folder")
    if not os.path.isdir(path):
        raise MucsError(f"{what} {path} is an existing file, not a folder: nothing was written")
    found = folder_kind(path)
    if found == "empty":
        return []
    try:
        entries = set(os.listdir(path))
    except OSError as e:
        raise MucsError(f"{what} {path} cannot be read: {e.strerror or e}") from e
    if found == kind:
        foreign = entries - written_by_us(path, kind)
    elif found is not None:
        raise MucsError(f"{what} {path} holds a MUCS {found}, not a {kind}: nothing was written; choose another "
                        "folder")
    else:
        foreign = entries
        if not force:
            names_ = sorted(entries)
            shown = ", ".join(names_[:3]) + (", ..." if len(names_) > 3 else "")
            count = f"{len(names_)} entr{'y' if len(names_) == 1 else 'ies'}"
            raise MucsError(f"{what} {path} exists and does not hold a MUCS {kind} ({count}: {shown}): nothing was "
                            f"written; choose a new folder, or pass --force to write the {kind} into it beside "
                            "these files (they are kept)")
    clash = sorted(foreign & (set(names) | {MARKER}))
    if clash:
        raise MucsError(f"{what} {path} holds {clash[0]}, which mucs did not write and the {kind} would replace: "
                        "nothing was written; move it away or choose another folder")
    return sorted(foreign)
