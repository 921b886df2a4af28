"""The explorer session behind the app: one model, its training set, an Attributor and a run
store. Every app callback calls one method here; nothing here knows about Gradio."""
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image

from . import overlap as ov
from .attribute import Attribution, Attributor
from .data import QueryImage, load_dataset, load_query_image, to_model_range
from .defaults import cache_dir_for, settings_for
from .errors import Cancelled, MucsError
from .generate import generate
from .history import RunStore
from .models import load_model
from .neighbours import NeighbourIndex, pixel_features
from .progress import ProgressEvent
from .settings import Settings

# the settings a user may change per run in the app (everything else comes from the model's defaults)
USER_SETTINGS = ("top_k", "noises", "noise_fraction", "lam", "tol", "max_steps", "seed",
                 "bounded", "retain", "consistent_noise", "normalised", "sigma_min", "sigma_max", "train_noise",
                 "loss_weighting")


def upscale(img: np.ndarray, target: int = 128) -> Image.Image:
    """uint8 (H, W, C) -> PIL image enlarged by an integer factor with nearest neighbours (crisp pixels)."""
    a = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    h, w = a.shape[:2]
    f = max(1, int(round(target / max(h, w))))
    return Image.fromarray(np.ascontiguousarray(a)).resize((w * f, h * f), Image.Resampling.NEAREST)


@dataclass
class Query:
    """The current query: pixels as the model sees them, its class, and where it came from."""
    image: np.ndarray            # (H, W, C) uint8
    label: Optional[int]
    meta: dict = field(default_factory=dict)   # kind (generated/upload/training), seed, steps, index, file, conversions

    def to_query_image(self) -> QueryImage:
        return QueryImage(x=to_model_range(self.image), conversions=list(self.meta.get("conversions", [])))


@dataclass
class Update:
    """A progress update from `Explorer.attribute_stream`; the last one carries the result."""
    stage: str
    fraction: float
    curve: list
    loss_null: Optional[float] = None
    info: dict = field(default_factory=dict)
    result: Optional[Attribution] = None
    run_id: Optional[str] = None


class Explorer:
    def __init__(self, model_path: str, data_path: str, overrides: Optional[dict] = None,
                 runs_dir: Optional[str] = None, examples_dir: Optional[str] = "default", device: Optional[str] = None):
        self.model_path = model_path
        self.model = load_model(model_path, device)
        self.data = load_dataset(data_path)
        self.data.check_matches(self.model)
        self.settings = settings_for(model_path, **(overrides or {})).validate()
        self.attributor = Attributor(self.model, self.data, self.settings, cache_dir_for(model_path))
        if examples_dir == "default":
            from .history import DEFAULT_EXAMPLES
            examples_dir = DEFAULT_EXAMPLES
        self.store = RunStore(runs_dir, examples_dir)
        self._neigh = None
        self._cancel = {}
        self._lock = threading.Lock()

    # --- description -----------------------------------------------------------------------------
    @property
    def class_names(self) -> Optional[list]:
        if self.model.num_classes is None:
            return None
        names = self.data.class_names or self.model.class_names
        return [str(names[i]) if names and i < len(names) else str(i) for i in range(self.model.num_classes)]

    def class_choices(self) -> list:
        return [(f"{i}: {n}", i) for i, n in enumerate(self.class_names or [])]

    def describe(self) -> str:
        m, d = self.model, self.data
        cond = f"class-conditional, {m.num_classes} classes" if m.num_classes else "unconditional"
        params = sum(p.numel() for p in m.unet.parameters())
        return (f"**Model** `{os.path.basename(m.path)}`: {m.size}×{m.size}, {m.channels} channel(s), {cond}, "
                f"{params / 1e6:.2f} M parameters, {m.prediction_type} prediction, device {m.device}.  \n"
                f"**Training set** `{os.path.basename(d.source)}`: {len(d)} images.")

    def user_settings(self, overrides: Optional[dict] = None) -> Settings:
        ov_ = {k: v for k, v in (overrides or {}).items() if k in USER_SETTINGS and v is not None}
        for k in ("top_k", "noises", "max_steps", "seed"):
            if k in ov_:
                ov_[k] = int(ov_[k])
        return self.settings.replace(**ov_).validate()

    # --- cancellation (one event per session) -----------------------------------------------------
    def cancel_event(self, session: str) -> threading.Event:
        with self._lock:
            ev = threading.Event()
            self._cancel[session] = ev
            return ev

    def cancel(self, session: str) -> bool:
        with self._lock:
            ev = self._cancel.get(session)
        if ev is None:
            return False
        ev.set()
        return True

    # --- queries ------------------------------------------------------------------------------------
    def generate(self, label: Optional[int], seed: int, count: int = 1, steps: int = 50,
                 progress=None, cancel=None) -> list:
        """`count` queries from consecutive seeds with the deterministic sampler."""
        if self.model.num_classes is None:
            label = None
        elif label is None or label == "":
            raise MucsError("choose a class: this model is class-conditional")
        label = self.model.check_label(None if label is None else int(label))
        count, seed, steps = int(count), int(seed), int(steps)
        if not 1 <= count <= 16:
            raise MucsError("generate between 1 and 16 images at a time")
        if not 1 <= steps <= 1000:
            raise MucsError("sampler steps must be in 1..1000")
        seeds = [seed + i for i in range(count)]
        imgs = generate(self.model, [label] * count, seeds, steps, progress=progress, cancel=cancel)
        return [Query(image=im, label=label, meta=dict(kind="generated", seed=s, sampler_steps=steps,
                                                       conversions=[]))
                for im, s in zip(imgs, seeds)]

    def upload(self, path: str) -> Query:
        """Read an uploaded file (any size/mode) as the model sees it; the class is left to the user."""
        if not path:
            raise MucsError("no file uploaded")
        q = load_query_image(path, self.model.channels, self.model.size)
        return Query(image=q.uint8, label=None,
                     meta=dict(kind="upload", file=os.path.basename(str(path)), conversions=list(q.conversions)))

    def training_item(self, index) -> Query:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise MucsError(f"training index must be an integer, got {index!r}") from None
        if not 0 <= i < len(self.data):
            raise MucsError(f"training index {i} out of range 0..{len(self.data) - 1}")
        label = None if self.data.labels is None or self.model.num_classes is None else int(self.data.labels[i])
        return Query(image=self.data.images[i], label=label, meta=dict(kind="training", index=i, conversions=[]))

    def with_label(self, q: Query, label) -> Query:
        """The query with the class chosen by the user (checked against the model)."""
        if q is None:
            raise MucsError("no query yet: generate, upload or pick a training image first")
        if self.model.num_classes is None:
            return Query(q.image, None, q.meta)
        if label is None or label == "":
            raise MucsError("choose the query's class: this model is class-conditional")
        return Query(q.image, self.model.check_label(int(label)), q.meta)

    # --- attribution ----------------------------------------------------------------------------------
    def attribute(self, q: Query, settings: Optional[Settings] = None, progress=None, cancel=None) -> tuple:
        """Run MUCS for a query and store the run; returns (run_id, Attribution)."""
        s = settings or self.settings
        att = self.attributor.attribute(q.to_query_image(), q.label, settings=s, progress=progress, cancel=cancel,
                                        source=_source(q))
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        run_id = self.store.save(att, dict(q.meta, kind=q.meta.get("kind"), source=_source(q),
                                           model=self.model.path, data=self.data.source))
        return run_id, att

    def attribute_stream(self, q: Query, settings: Optional[Settings] = None, cancel=None, every: float = 0.5):
        """`attribute` in a worker thread, yielding an Update at most every `every` seconds and
        a final one with the result. Closing the generator cancels the run; nothing is stored then."""
        cancel = cancel or threading.Event()
        events = queue.Queue()
        out = {}
        state = dict(stage="starting", fraction=0.0, curve=[], loss_null=None, info={})

        def on_progress(ev: ProgressEvent):
            events.put(ev)

        def work():
            try:
                out["result"] = self.attribute(q, settings, on_progress, cancel)
            except BaseException as e:   # handed to the caller's thread
                out["error"] = e
            finally:
                events.put(None)

        t = threading.Thread(target=work, name="mucs-attribute", daemon=True)
        t.start()
        try:
            done = False
            while not done:
                try:
                    ev = events.get(timeout=every)
                    while True:
                        if ev is None:
                            done = True
                            break
                        _apply(state, ev)
                        ev = events.get_nowait()
                except queue.Empty:
                    pass
                if not done:
                    yield Update(state["stage"], state["fraction"], list(state["curve"]), state["loss_null"],
                                 dict(state["info"]))
            if "error" in out:
                raise out["error"]
            run_id, att = out["result"]
            yield Update("done", 1.0, att.curve, att.loss_null, {}, result=att, run_id=run_id)
        finally:
            if t.is_alive():
                cancel.set()
                t.join(timeout=30)

    # --- results -------------------------------------------------------------------------------------
    def class_name(self, label) -> str:
        if label is None:
            return ""
        names = self.class_names
        return names[int(label)] if names and 0 <= int(label) < len(names) else str(label)

    def top_gallery(self, att: Attribution, target: int = 128) -> list:
        """[(image, caption)] of the top-k training items, best first."""
        out = []
        for rank, i in enumerate(att.top, 1):
            i = int(i)
            lab = "" if self.data.labels is None else f" {self.class_name(self.data.labels[i])}"
            out.append((upscale(self.data.images[i], target), f"#{rank} · {i}{lab} · {att.scores[i]:.4f}"))
        return out

    def neighbours(self, image: np.ndarray, k: int = 8, target: int = 128) -> list:
        """[(image, caption)] of the k nearest training items in pixel space (for comparison)."""
        if self._neigh is None:
            self._neigh = NeighbourIndex.pixels(self.data)
        d, idx = self._neigh.search(pixel_features(to_model_range(image)[None]), k)
        out = []
        for dist, i in zip(d[0], idx[0]):
            i = int(i)
            lab = "" if self.data.labels is None else f" {self.class_name(self.data.labels[i])}"
            out.append((upscale(self.data.images[i], target), f"{i}{lab} · d²={dist:.3g}"))
        return out

    def check_run(self, att: Attribution) -> None:
        """Refuse a stored run made with another model or training set."""
        fp = att.info.get("data_fingerprint")
        if len(att.scores) != len(self.data) or (fp and fp != self.data.fingerprint()):
            raise MucsError("this run was made with another training set; open it with the matching --data")

    def summary(self, att: Attribution, run_id: str = "") -> str:
        q = att.query
        cls = f"class **{q.get('class_name')}** ({q.get('label')})" if q.get("label") is not None else "no class"
        conv = "; ".join(q.get("conversions") or []) or "none"
        stop = "converged (L_f reached (1−τ)·L_null)" if att.converged else "**hit the step cap** (not converged)"
        st = att.stage_times
        times = ", ".join(f"{k.replace('_', ' ')} {v:.1f}s" for k, v in st.items())
        s = att.settings
        return (f"**Run** `{run_id}`: query {q.get('source') or ''}, {cls}; conversions: {conv}.  \n"
                f"Unlearning: {att.steps} steps, {stop}; L_null = {att.loss_null:.4g}.  \n"
                f"Settings: K={s.get('noises')}, f={s.get('noise_fraction')}, λ={s.get('lam')}, τ={s.get('tol')}, "
                f"cap={s.get('max_steps')}, top-k={s.get('top_k')}, seed={s.get('seed')}"
                f"{'' if s.get('bounded', True) else ', unbounded'}{'' if s.get('retain', True) else ', no retain'}"
                f"{'' if s.get('consistent_noise', True) else ', fresh noise'}"
                f"{'' if s.get('normalised', True) else ', un-normalised'}; "
                + (f"noise grid σ {s['sigma_min']:g}–{s['sigma_max']:g}" if "sigma_min" in s
                   else "noise grid over the scheduler's full σ range (a run made before the fix)")
                + f"{_levels(att.info.get('noise_levels'))}, training-time noise {s.get('train_noise', 'uniform')}, "
                f"loss weighting {s.get('loss_weighting', 'none')}.  \n"
                f"Time: {times}." + "".join(f"  \n⚠️ {w}" for w in self.warnings(att)))

    def warnings(self, att: Attribution) -> list:
        """Plain-language warnings for a run (tied top-k, saturated class, step cap)."""
        from .diagnostics import warnings
        return warnings(att.scores, att.top, att.labels, att.query.get("label"), att.converged, att.steps)

    # --- overlap --------------------------------------------------------------------------------------
    def overlap(self, run_ids, pairs: int = 2000) -> dict:
        """Overlap statistics of the top-k sets of two or more stored runs."""
        run_ids = [r for r in (run_ids or []) if r]
        if len(run_ids) < 2:
            raise MucsError("choose at least two runs to compare")
        atts = [self.store.load(r) for r in run_ids]
        for a in atts:
            self.check_run(a)
        sets = [list(map(int, a.top)) for a in atts]
        names = [_short(r, a) for r, a in zip(run_ids, atts)]
        pw = ov.pairwise_overlaps(sets)
        rnd = ov.random_overlaps(len(self.data), [len(s) for s in sets], pairs=pairs, seed=0)
        return dict(names=names, matrix=ov.overlap_matrix(sets), pairwise=pw, random=rnd,
                    mean=float(pw.mean()), random_mean=float(rnd.mean()), recurring=ov.recurring(sets, 12))

    def recurring_gallery(self, rec: list, target: int = 128) -> list:
        out = []
        for i, c in rec:
            lab = "" if self.data.labels is None else f" {self.class_name(self.data.labels[i])}"
            out.append((upscale(self.data.images[i], target), f"{i}{lab} · in {c} sets"))
        return out


def _apply(state: dict, ev: ProgressEvent) -> None:
    state["stage"], state["fraction"], state["info"] = ev.stage, ev.fraction, dict(ev.info)
    if ev.stage == "unlearning" and "loss_f" in ev.info:
        state["curve"].append(dict(step=ev.info.get("step", len(state["curve"])), loss_f=ev.info["loss_f"],
                                   loss_r=ev.info.get("loss_r")))
        state["loss_null"] = ev.info.get("loss_null", state["loss_null"])


def _levels(levels) -> str:
    """' (kept: σ 0.40–80, steps 301–991)' from result.json's noise_levels, '' for older runs."""
    if not levels:
        return ""
    sig = [lv["sigma_t"] for lv in levels]
    ts = [lv["timestep"] for lv in levels]
    return f" (kept: σ {min(sig):.2g}–{max(sig):.3g}, steps {min(ts)}–{max(ts)})"


def _source(q: Query) -> str:
    m = q.meta
    if m.get("kind") == "generated":
        return f"generated seed {m.get('seed')}"
    if m.get("kind") == "training":
        return f"training item {m.get('index')}"
    if m.get("kind") == "upload":
        return f"upload {m.get('file')}"
    return str(m.get("kind", ""))


def _short(run_id: str, att: Attribution) -> str:
    cls = att.query.get("class_name")
    tail = run_id.split(":")[-1][-6:]
    return f"{cls or 'query'} {tail}"
