"""Collections: a batch of attributions kept together. A collection is a folder holding
`collection.json` (what was asked, the settings, the model and data, each item's status) and one
normal run folder per finished item (`NN-name/`, the run format of mucs/explorer/history.py), so
the app's run store lists and reopens every item as a run (id `COLLECTION/NN-name`).

`run_batch` attributes the items one after another with ONE Attributor: the noise set, L_o and
L_null are computed (or read) once, and each item pays only for its unlearning and L_u. Each
finished item is written at once (atomically); on cancel the current item is dropped and the rest
are marked "not started", so a cancelled batch keeps what it finished."""
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

import numpy as np

from ..cache import MARKER, atomic_write, check_out_dir, marker_bytes
from ..checks import dumps_strict, json_default
from ..defaults import shown_path
from ..errors import Cancelled, MucsError
from ..progress import ProgressEvent
from .history import COLLECTION_FILE, write_run

KIND = "collection"
FORMAT = "mucs-collection"
VERSION = 1
MAX_ITEMS = 512          # the most items one batch may ask for
# an item's status: waiting, being attributed, saved, refused (its error recorded), or left out by a cancel
PENDING, RUNNING, DONE, FAILED, NOT_STARTED = "pending", "running", "done", "failed", "not started"


@dataclass
class BatchItem:
    """One query of a batch: a generated image (label, seed, sampler steps), an image file, or
    pixels already in memory (an upload in the app; `pixels` is not recorded)."""
    name: str                          # its run folder inside the collection
    kind: str                          # generated | image | upload | training
    label: Optional[int] = None
    source: str = ""
    seed: Optional[int] = None
    sampler_steps: Optional[int] = None
    file: Optional[str] = None         # an image file (CLI) or an upload's file name
    prompt: Optional[str] = None       # a text model's prompt (generated with it, attributed with it)
    index: Optional[int] = None        # a training image
    status: str = PENDING
    error: Optional[str] = None
    seconds: Optional[float] = None
    steps: Optional[int] = None
    converged: Optional[bool] = None
    pixels: Optional[np.ndarray] = field(default=None, repr=False)   # (H, W, C) uint8, not recorded

    def record(self) -> dict:
        d = asdict(self)
        d.pop("pixels")
        if d["file"] and self.kind == "image":
            d["file"] = shown_path(d["file"])
        return {k: v for k, v in d.items() if v is not None or k in ("label", "error")}


def parse_seeds(text) -> list:
    """'0-15', '0,3,7', '0-3,8' or a list of ints -> [seeds] (in order, no repeats)."""
    if isinstance(text, (list, tuple)):
        parts = [str(int(v)) for v in text]
    else:
        parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    out = []
    for p in parts:
        m = re.fullmatch(r"(-?\d+)\s*(?:-|\.\.)\s*(-?\d+)", p) if not re.fullmatch(r"-?\d+", p) else None
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise MucsError(f"seed range {p} runs backwards: write it low-high, e.g. 0-15")
            vals: Sequence[int] = range(a, b + 1)
        elif re.fullmatch(r"-?\d+", p):
            vals = [int(p)]
        else:
            raise MucsError(f"seeds must look like 0-15, 0,3,7 or 0-3,8; got {p!r}")
        for v in vals:
            if v not in out:
                out.append(v)
            if len(out) > MAX_ITEMS:
                raise MucsError(f"a batch has at most {MAX_ITEMS} items")
    if not out:
        raise MucsError("no seeds given: write them like 0-15 or 0,3,7")
    return out


def _width(n: int) -> int:
    return max(2, len(str(max(0, n - 1))))


def generated_items(labels: Sequence[Optional[int]], seeds: Sequence[int], sampler_steps: int = 50) -> list:
    """Class × seed: one generated item per (label, seed), class by class."""
    pairs = [(lab, int(s)) for lab in labels for s in seeds]
    _check_count(len(pairs))
    w = _width(len(pairs))
    return [BatchItem(name=f"{n:0{w}d}-" + (f"c{lab}-" if lab is not None else "") + f"seed{s}", kind="generated",
                      label=lab, seed=s, sampler_steps=int(sampler_steps), source=f"generated seed {s}")
            for n, (lab, s) in enumerate(pairs)]


def prompt_items(prompts: Sequence[str], seeds: Sequence[int], sampler_steps: int = 50) -> list:
    """Prompt × seed for a text model: one generated item per (prompt, seed), prompt by prompt."""
    pairs = [(n, p, int(s)) for n, p in enumerate(prompts) for s in seeds]
    _check_count(len(pairs))
    w = _width(len(pairs))
    return [BatchItem(name=f"{k:0{w}d}-p{n}-seed{s}", kind="generated", prompt=p, seed=s,
                      sampler_steps=int(sampler_steps), source=f"generated seed {s}")
            for k, (n, p, s) in enumerate(pairs)]


def image_items(files: Sequence[str], labels: Sequence[Optional[int]], kind: str = "image",
                pixels: Optional[Sequence[np.ndarray]] = None) -> list:
    """One item per image file (or per upload with its pixels), with its label."""
    _check_count(len(files))
    if len(labels) != len(files):
        raise MucsError(f"give one class for every image ({len(files)}), or one for all of them")
    w = _width(len(files))
    out = []
    for n, (f, lab) in enumerate(zip(files, labels)):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(str(f)))[0])[:40] or "image"
        out.append(BatchItem(name=f"{n:0{w}d}-{stem}", kind=kind, label=lab, file=str(f),
                             source=f"{'upload' if kind == 'upload' else 'image'} {os.path.basename(str(f))}",
                             pixels=None if pixels is None else pixels[n]))
    return out


def images_in(folder: str) -> list:
    """The image files directly in `folder`, sorted by name (what `--images DIR` attributes)."""
    from ..sources.data import IMAGE_EXTS
    if not os.path.isdir(folder):
        raise MucsError(f"--images {folder} is not a folder")
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))
    if not files:
        raise MucsError(f"--images {folder} holds no image files ({', '.join(IMAGE_EXTS)})")
    return files


def _check_count(n: int) -> None:
    if n < 1:
        raise MucsError("a batch needs at least one item")
    if n > MAX_ITEMS:
        raise MucsError(f"a batch has at most {MAX_ITEMS} items, got {n}")


# --- the record ----------------------------------------------------------------------------------------
def new_id(now: Optional[datetime] = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def new_record(coll_id: str, items: Sequence[BatchItem], asked: dict, settings: dict, model, data,
               class_names=None, name: str = "") -> dict:
    """collection.json of a batch about to run: what was asked, settings, model and data, the items."""
    return dict(format=FORMAT, version=VERSION, id=coll_id, name=name or "",
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"), finished=None, status=RUNNING,
                asked=asked, settings=dict(settings), model=shown_path(model.path), data=shown_path(data.source),
                model_fingerprint=model.fingerprint(), data_fingerprint=data.fingerprint(), num_train=len(data),
                class_names=list(class_names) if class_names else None, items=[it.record() for it in items],
                stage_times={}, seconds=None)


def save_record(folder: str, record: dict) -> None:
    atomic_write(os.path.join(folder, COLLECTION_FILE),
                 dumps_strict(record, "collection.json", indent=1, default=json_default).encode())


def load_record(folder: str) -> dict:
    path = os.path.join(folder, COLLECTION_FILE)
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError) as e:
        raise MucsError(f"{folder} is not a readable collection ({COLLECTION_FILE}): {e}") from None
    if not isinstance(r, dict) or r.get("format") != FORMAT or not isinstance(r.get("items"), list):
        raise MucsError(f"{path} is not a MUCS collection record")
    return r


def create_folder(path: str, record: dict, force: bool = False) -> str:
    """Make the collection folder `path` with its marker and record, at once: a new or empty folder,
    or an earlier collection (replaced, with its runs); anything else only with `force`."""
    path = os.path.abspath(path)
    check_out_dir(path, KIND, force=force, what="the collection folder")
    parent = os.path.dirname(path)
    staging = tempfile.mkdtemp(dir=parent, prefix=".staging-")
    try:
        inner = os.path.join(staging, "c")
        os.makedirs(inner)
        atomic_write(os.path.join(inner, MARKER), marker_bytes(KIND))
        save_record(inner, record)
        if os.path.lexists(path):   # empty, an earlier collection, or (force) anything: moved away, then removed
            os.rename(path, os.path.join(staging, "old"))
        os.rename(inner, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


# --- the batch -----------------------------------------------------------------------------------------
@dataclass
class BatchEvent:
    """A batch's progress: item `index` (of `count`) changed status, or reports an attribution
    ProgressEvent (`event`)."""
    index: int
    count: int
    status: str
    event: Optional[ProgressEvent] = None
    item: Optional[BatchItem] = None
    run_id: Optional[str] = None      # the item's run, once saved
    seconds: Optional[float] = None   # once saved: the item's own time (unlearning + L_u)


def make_query(model, item: BatchItem, background=None):
    """The item's query as the model sees it (a QueryImage), plus the notes of its conversion.
    Generation goes through this one function (mucs.sources.generate)."""
    from ..sources.data import QueryImage, load_query_image, to_model_range
    if item.kind == "generated":
        from ..sources.generate import generate
        img = generate(model, [item.label], [int(item.seed or 0)], item.sampler_steps or 50,
                       prompts=None if item.prompt is None else [item.prompt])[0]
        return QueryImage(x=to_model_range(img), conversions=[])
    src = item.pixels if item.pixels is not None else item.file
    if src is None:
        raise MucsError(f"item {item.name} has neither pixels nor a file")
    return load_query_image(src, model.channels, model.size, background)


def run_batch(attributor, items: Sequence[BatchItem], settings, folder: str, record: dict, class_names=None,
              progress: Optional[Callable[[BatchEvent], None]] = None, cancel=None, run_prefix: str = "",
              write: bool = True) -> dict:
    """Attribute `items` one after another with `attributor` (its noise set, L_o and L_null shared),
    writing each finished item as a run folder `folder/<item name>` and the record after every change.
    A refused item (bad image, bad label) is marked failed with its error and the batch goes on; a
    cancel drops the current item and marks the rest "not started". Returns the final record."""
    model, data = attributor.model, attributor.data
    count = len(items)
    t_start = time.perf_counter()
    say = progress or (lambda ev: None)
    shared: dict = {}

    def save():
        record["items"] = [it.record() for it in items]
        if write:
            save_record(folder, record)

    cancelled = False
    for n, it in enumerate(items):
        if it.status == DONE:
            continue
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        it.status = RUNNING
        save()
        say(BatchEvent(n, count, RUNNING, item=it))
        t0 = time.perf_counter()
        try:
            q = make_query(model, it, data.background())
            label = model.check_label(it.label)
            att = attributor.attribute(q, label, settings=settings, cancel=cancel, source=it.source, prompt=it.prompt,
                                       progress=lambda ev, n=n: say(BatchEvent(n, count, RUNNING, event=ev)))
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            meta = dict(kind=it.kind, source=it.source, seed=it.seed, sampler_steps=it.sampler_steps, prompt=it.prompt,
                        file=os.path.basename(it.file) if it.file else None, index=it.index,
                        conversions=list(q.conversions), model=model.path, data=data.source,
                        collection=record.get("id"))
            meta = {k: v for k, v in meta.items() if v is not None}
            if write:
                write_run(att, os.path.join(folder, it.name), meta, class_names=class_names)
        except Cancelled:
            it.status = NOT_STARTED     # the current item is dropped: nothing of it was saved
            cancelled = True
            break
        except MucsError as e:
            it.status, it.error, it.seconds = FAILED, str(e), round(time.perf_counter() - t0, 2)
            save()
            say(BatchEvent(n, count, FAILED, item=it))
            continue
        st = att.stage_times
        for k in ("original_losses", "null_loss"):      # the shared stages: paid by the first item only
            shared[k] = round(shared.get(k, 0.0) + float(st.get(k, 0.0)), 3)
        own = float(st.get("unlearning", 0.0)) + float(st.get("unlearned_losses", 0.0))
        it.status, it.seconds, it.steps, it.converged = DONE, round(time.perf_counter() - t0, 2), att.steps, att.converged
        record["stage_times"] = shared
        save()
        say(BatchEvent(n, count, DONE, item=it, run_id=run_prefix + it.name, seconds=own))
    for it in items:
        if it.status in (PENDING, RUNNING):
            it.status = NOT_STARTED
    done = sum(it.status == DONE for it in items)
    record["status"] = "cancelled" if cancelled else DONE if done == count else "partial"
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["seconds"] = round(time.perf_counter() - t_start, 2)
    save()
    return record


def short_name(item: dict, class_name=None) -> str:
    """A generation's short name for figures: 'Dress s3' (class and seed) or the file stem."""
    cls = item.get("class_name") or (class_name(item["label"]) if class_name and item.get("label") is not None else "")
    if not cls and item.get("prompt"):     # a text model's generation: its prompt, shortened
        p = str(item["prompt"])
        cls = p if len(p) <= 24 else p[:23] + "…"
    if item.get("kind") == "generated":
        return f"{cls} s{item.get('seed')}".strip()
    stem = os.path.splitext(os.path.basename(str(item.get("file") or item.get("name"))))[0]
    return f"{stem}" + (f" ({cls})" if cls else "")
