"""The Explorer's batch operations (a mixin of mucs.explorer.state.Explorer): plan a batch (class ×
seeds, or several uploads), run it as one job with the Explorer's one Attributor (noise set, L_o,
L_null, model, data and faiss indexes shared; nothing reloaded per query), stream its overall
progress, per-item status and time left, and open, export or delete the collections it writes."""
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..checks import json_default
from ..errors import MucsError
from ..progress import BatchOverall, BatchProgress
from . import collection as coll
from .collection_store import CollectionStore
from .history import safe_name
from .worker import stream_in_worker

MAX_BATCH = 64          # the most items one batch may ask for in the app


@dataclass
class BatchUpdate:
    """A progress update of `Explorer.attribute_batch_stream`; the last one has `record` set."""
    collection_id: str
    items: list                        # one dict per item: name, source, class, status, seconds, run id, error
    index: int                         # the item being attributed (-1 before the first, count after the last)
    stage: str = "starting"
    curve: list = field(default_factory=list)
    loss_null: Optional[float] = None
    overall: Optional[BatchOverall] = None
    record: Optional[dict] = None      # the final collection record




class BatchOps:
    """Batch attribution and collections; mixed into Explorer (uses its model, data, attributor,
    store, settings and class names)."""
    # what the mixin uses of Explorer (declared for the type checker; Explorer defines them)
    store: Any
    model: Any
    data: Any
    settings: Any
    attributor: Any
    class_names: Any
    upload: Any
    class_name: Any
    text: Any
    load_run: Any
    baselines_context: Any
    downloads_dir: Any
    _baseline_lock: Any

    @property
    def collections(self) -> CollectionStore:
        if getattr(self, "_collections", None) is None:
            self._collections = CollectionStore(self.store)
        return self._collections

    # --- planning -----------------------------------------------------------------------------------
    def batch_generated(self, labels, seeds, sampler_steps: int = 50, prompts=None) -> list:
        """Items for class × seeds: `labels` one class or several (ignored for an unconditional model),
        `seeds` a list or text such as '0-15' or '0,3,7'; a text model's: prompt × seeds, `prompts` a
        list or one prompt per line."""
        from ..sources.generate import check_steps
        steps = check_steps(sampler_steps, self.model.scheduler.config.num_train_timesteps)
        if self.text:
            return self._check_batch_size(coll.prompt_items(self._prompts(prompts), coll.parse_seeds(seeds), steps))
        if self.model.num_classes is None:
            labels = [None]
        else:
            if labels is None or labels == "" or labels == []:
                raise MucsError("choose a class (or several): this model is class-conditional")
            labels = list(labels) if isinstance(labels, (list, tuple)) else [labels]
            labels = [self.model.check_label(int(v)) for v in labels]
        items = coll.generated_items(labels, coll.parse_seeds(seeds), steps)
        return self._check_batch_size(items)

    def batch_uploads(self, paths: Sequence[str], labels, prompt=None) -> list:
        """Items for several uploaded files, each read (and converted) now: a bad file is one error
        before anything runs. `labels`: one class for all, or one per file; a text model's images
        share one `prompt` (the caption they were made with)."""
        paths = [p for p in (paths or []) if p]
        if not paths:
            raise MucsError("upload one or more images first")
        labels = list(labels) if isinstance(labels, (list, tuple)) else [labels] * len(paths)
        if len(labels) == 1:
            labels = labels * len(paths)
        queries = [self.upload(p) for p in paths]
        shared = None
        if self.text:
            given = self._prompts(prompt)
            if len(given) > 1:
                raise MucsError("uploaded images share one prompt: type the one they were made with, on one line")
            shared = given[0]
        if self.model.num_classes is None:
            labels = [None] * len(paths)
        else:
            if any(v is None or v == "" for v in labels):
                raise MucsError("choose the class of the uploaded images: this model is class-conditional")
            labels = [self.model.check_label(int(v)) for v in labels]
        items = coll.image_items([q.meta["file"] for q in queries], labels, kind="upload",
                                 pixels=[q.image for q in queries])
        for it, q in zip(items, queries):
            it.source, it.prompt = f"upload {q.meta['file']}", shared
        return self._check_batch_size(items)

    def _prompts(self, prompts) -> list:
        """A text model's prompts for a batch (a list, or text with one per line), each checked."""
        lines = list(prompts) if isinstance(prompts, (list, tuple)) else str(prompts or "").splitlines()
        lines = [str(p).strip() for p in lines if str(p).strip()]
        if not lines:
            raise MucsError("type a prompt (one per line): this model is text-conditional")
        return [self.model.check_prompt(p) for p in lines]

    def _check_batch_size(self, items) -> list:
        limit = getattr(self, "max_batch", MAX_BATCH)
        if len(items) > limit:
            raise MucsError(f"a batch in this app has at most {limit} items, got {len(items)} "
                            "(mucs attribute --seeds on the command line takes more)")
        return items

    # --- running ------------------------------------------------------------------------------------
    def attribute_batch(self, items, settings=None, progress=None, cancel=None, name: str = "") -> tuple:
        """Attribute `items` as one collection in the runs folder; returns (collection id, record).
        `progress` gets mucs.explorer.collection.BatchEvent's."""
        s = settings or self.settings
        cid, path, record = self._begin_batch(items, s, name)
        return cid, self._run_batch(cid, path, record, items, s, progress, cancel)

    def _begin_batch(self, items, s, name: str = "") -> tuple:
        """Check the settings' memory and make the collection's folder and record (nothing runs yet)."""
        self.attributor.check_memory(s)
        cid, path = self.collections.new_path()
        record = coll.new_record(cid, items, _asked(items), s.to_dict(), self.model, self.data, self.class_names, name)
        coll.create_folder(path, record)
        return cid, path, record

    def _run_batch(self, cid, path, record, items, s, progress, cancel) -> dict:
        return coll.run_batch(self.attributor, items, s, path, record, self.class_names, progress, cancel,
                              run_prefix=cid + "/")

    def attribute_batch_stream(self, items, settings=None, cancel=None, every: float = 0.5, name: str = ""):
        """`attribute_batch` in a worker thread, yielding a BatchUpdate at most every `every` seconds
        (overall progress, per-item status, time left) and a last one with the record. Closing the
        generator cancels the batch: finished items stay saved, the rest are not started."""
        s = settings or self.settings
        cancel = cancel or threading.Event()
        bp = BatchProgress(len(items), max_steps=s.max_steps, expected_steps=getattr(self, "_last_steps", None),
                           stage_seconds=None)
        rows = [_row(it, self) for it in items]
        cid, path, record = self._begin_batch(items, s, name)   # a refusal here: nothing was made
        state = dict(index=-1, stage="starting", curve=[], loss_null=None, cid=cid)

        def snapshot() -> BatchUpdate:
            return BatchUpdate(state["cid"], [dict(r) for r in rows], state["index"], state["stage"],
                               list(state["curve"]), state["loss_null"], bp())

        final = yield from stream_in_worker(lambda put: self._run_batch(cid, path, record, items, s, put, cancel),
                                            lambda ev: self._apply_batch(state, rows, bp, ev), snapshot, cancel,
                                            "mucs-batch", every)
        for r, it in zip(rows, final["items"]):
            r.update(status=it["status"], error=it.get("error"))
        yield BatchUpdate(cid, [dict(r) for r in rows], len(items), final["status"], list(state["curve"]),
                          state["loss_null"], bp(), record=final)

    def _apply_batch(self, state, rows, bp, ev) -> None:
        item = ev.item
        r = rows[ev.index]
        if ev.event is not None:
            e = ev.event
            state["stage"] = e.stage
            if e.stage == "unlearning" and "loss_f" in e.info:
                state["curve"].append(dict(step=e.info.get("step", len(state["curve"])), loss_f=e.info["loss_f"],
                                           loss_r=e.info.get("loss_r")))
                state["loss_null"] = e.info.get("loss_null", state["loss_null"])
            bp(e)
            return
        r["status"] = ev.status
        if ev.status == coll.RUNNING:
            state["index"], state["curve"], state["stage"] = ev.index, [], "starting"
            bp.start_item()
        elif ev.status in (coll.DONE, coll.FAILED):
            r.update(seconds=item.seconds, error=item.error, steps=item.steps, converged=item.converged)
            if ev.run_id:
                r["run"] = ev.run_id
            if ev.status == coll.DONE:
                self._last_steps = item.steps
            bp.finish_item(ev.seconds, saved=ev.status == coll.DONE)

    # --- collections -------------------------------------------------------------------------------
    def collection_table(self) -> list:
        """Rows for the collections table: id, created, status, what was asked, items done / asked, top-k."""
        rows = []
        for r in self.collections.list():
            items = r.get("items", [])
            rows.append([r["id"], r.get("created", ""), r.get("status", ""), describe_asked(r, self.class_name),
                         f"{sum(it.get('status') == coll.DONE for it in items)}/{len(items)}",
                         (r.get("settings") or {}).get("top_k", "")])
        return rows

    def open_collection(self, coll_id: str, with_agreement: bool = True) -> dict:
        """A collection's record, its runs and every overlap analysis (mucs.explorer.analysis), with
        the figures as HTML (mucs.explorer.collection_figures). Method agreement ranks each run's
        query with the baselines (their faiss indexes built once, shared with the other views)."""
        from . import analysis, collection_figures as figs
        rec = self.collections.record(coll_id)
        run_ids = self.collections.member_ids(coll_id)
        if not run_ids:
            raise MucsError(f"collection {coll_id} has no finished item to analyse (status: {rec.get('status')})")
        atts = [self.load_run(r) for r in run_ids]       # refuses runs of another training set
        by_name = {it["name"]: it for it in rec["items"]}
        names = [coll.short_name(by_name[r.rsplit("/", 1)[1]], self.class_name) for r in run_ids]
        key = (coll_id, tuple(run_ids))
        memo = getattr(self, "_coll_memo", None)
        if memo is None or memo[0] != key:
            an = analysis.analyse(run_ids, atts, names, len(self.data), self.data.labels, self.class_names)
            agree = None
            if with_agreement:
                with self._baseline_lock:
                    agree = analysis.agreement(self.baselines_context(), atts, run_ids, analysis.AGREEMENT_METHODS,
                                               len(self.data), self.data.labels, self.class_names)
            self._coll_memo = memo = (key, an, agree)
        _, an, agree = memo
        html = figs.page(an, agree, self.data.images, self.class_name, prefix=f"coll-{safe_name(coll_id)}")
        return dict(id=coll_id, record=rec, run_ids=run_ids, names=names, analysis=an, agreement=agree, html=html,
                    summary=collection_summary(rec, an, agree, self.class_name))

    def collection_data_file(self, coll_id: str, fmt: str = "json") -> str:
        """Every analysis of the collection as one JSON file, or its CSV tables in one .zip (downloads folder)."""
        import json
        import os
        import zipfile
        from . import analysis
        from ..cache import atomic_write
        fmt = (fmt or "").lower()
        if fmt not in ("csv", "json"):
            raise MucsError(f"export format must be csv or json, got {fmt!r}")
        o = self.open_collection(coll_id)
        base = os.path.join(self.downloads_dir(), f"mucs-collection-{safe_name(coll_id)}-analyses")
        if fmt == "json":
            body = dict(collection=o["record"], analyses=analysis.json_parts(o["analysis"], o["agreement"]))
            atomic_write(base + ".json", json.dumps(body, indent=1, allow_nan=False, default=json_default).encode())
            return base + ".json"
        tmp = base + ".zip.part"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for key, (header, rows) in analysis.tables(o["analysis"], o["agreement"]).items():
                z.writestr(f"{key}.csv", analysis.to_csv(header, rows))
        os.replace(tmp, base + ".zip")
        return base + ".zip"

    def delete_collection(self, coll_id: str) -> None:
        self.collections.delete(coll_id)

    def export_collection(self, coll_id: str) -> str:
        """The whole collection as one .zip in the downloads folder."""
        return self.collections.export(coll_id, out_dir=self.downloads_dir())


def collection_summary(rec: dict, an: dict, agree, class_name=str) -> str:
    """The collection in a few lines of Markdown: what was asked, status, and the headline numbers."""
    items = rec.get("items", [])
    done = sum(it.get("status") == coll.DONE for it in items)
    c, p, conc = an["coverage"], an["pairs"], an["concentration"]
    g, k = an["count"], max(an["sizes"]) if an["sizes"] else 0
    lines = [f"**Collection** `{rec['id']}`: {describe_asked(rec, class_name)}; {done} of {len(items)} items "
             f"attributed ({rec.get('status')}); top-k = {k}.",
             f"Its {g} top-k sets cover **{c['distinct'][-1]}** distinct training images of {an['n_items']} "
             f"(G·k = {c['bound'][-1]}; random sets: {c['random_mean'][-1]:.1f}, 95 % within "
             f"{c['random_lo'][-1]:.0f}–{c['random_hi'][-1]:.0f})."]
    if p["mean"] is not None:
        lines.append(f"Mean pairwise overlap **{p['mean']:.3f}** (random: {p['random_mean']:.3f}); same class "
                     + (f"{p['within']['mean']:.3f} over {p['within']['n']} pairs" if p["within"]["n"] else "—")
                     + ", different classes "
                     + (f"{p['across']['mean']:.3f} over {p['across']['n']} pairs" if p["across"]["n"] else "—") + ".")
    t1 = conc.get("top 1 %")
    if t1:
        lines.append(f"The top 1 % of training images take **{t1['observed']:.0%}** of the top-k slots (random: "
                     f"{t1['random_mean']:.0%}); Gini {conc['gini']['observed']:.2f} (random {conc['gini']['random_mean']:.2f}).")
    if agree is not None:
        lines.append("Mean overlap@k with MUCS: " + ", ".join(
            f"{m['label']} {m['mean']:.2f} ± {m['std']:.2f}" for m in agree["methods"] if m["method"] != "mucs") + ".")
    failed = [it for it in items if it.get("status") == coll.FAILED]
    if failed:
        lines.append("⚠️ Failed: " + "; ".join(f"{it['name']}: {it.get('error')}" for it in failed[:3]))
    return "  \n".join(lines)


def _asked(items) -> dict:
    """What a batch asked for, in collection.json: class × seeds, or the images."""
    kinds = {it.kind for it in items}
    if kinds == {"generated"}:
        labels, seeds, prompts = [], [], []
        for it in items:
            if it.label not in labels:
                labels.append(it.label)
            if it.seed not in seeds:
                seeds.append(it.seed)
            if it.prompt is not None and it.prompt not in prompts:
                prompts.append(it.prompt)
        return dict(kind="generated", labels=labels, seeds=seeds, sampler_steps=items[0].sampler_steps,
                    **(dict(prompts=prompts) if prompts else {}))
    extra = dict(prompt=items[0].prompt) if items and items[0].prompt is not None else {}
    return dict(kind="images", files=[it.record().get("file") for it in items], labels=[it.label for it in items],
                **extra)


def describe_asked(record: dict, class_name=str) -> str:
    """'class 3 (Dress) × seeds 0-15' / '5 uploaded images'."""
    a = record.get("asked") or {}
    if a.get("kind") == "generated":
        if a.get("prompts"):
            ps = a["prompts"]
            return (f"{len(ps)} prompts" if len(ps) > 1 else f"“{ps[0]}”") + f" × seeds {_ranges(a.get('seeds', []))}"
        labs = [v for v in a.get("labels", []) if v is not None]
        cls = ", ".join(f"{v} ({class_name(v)})" for v in labs) if labs else "unconditional"
        return f"class {cls} × seeds {_ranges(a.get('seeds', []))}"
    n = len(a.get("files") or [])
    return f"{n} image{'s' if n != 1 else ''}"


def _ranges(vals) -> str:
    vals = [int(v) for v in vals]
    out, i = [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out)


def _row(it, ex) -> dict:
    return dict(name=it.name, source=it.source, label=it.label,
                class_name=ex.class_name(it.label) if it.label is not None else (it.prompt or ""), status=it.status,
                seconds=None, run=None, error=None, steps=None, converged=None)
