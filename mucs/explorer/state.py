"""The explorer session behind the app: one model, its training set, an Attributor and a run
store. Every app callback calls one method here; nothing here knows about Gradio."""
import logging
import math
import os
import queue
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from ..checks import SEED_MAX, check_int
from ..method import overlap as ov
from ..method.attribute import Attribution, Attributor
from ..sources.data import QueryImage, load_dataset, load_query_image, to_model_range
from ..defaults import cache_dir_for, settings_for
from ..errors import Cancelled, MucsError
from ..sources.generate import generate
from .batch import BatchOps
from .history import RunStore
from ..sources.models import class_names_for, load_model
from ..method.neighbours import NeighbourIndex, pixel_features
from ..progress import Overall, OverallProgress, ProgressEvent
from ..settings import APP_WIDGETS, PAPER_KEYS, Settings

log = logging.getLogger("mucs.explorer")
KEEP_UNLEARNED = 2      # unlearned UNets kept in memory (the last runs replayed or attributed here)
MAX_REQUEST_SECONDS = 900.0   # a heavy request (attribution, replay, sampling) running longer is stopped
MAX_STEPS_LIMIT = 10_000      # the largest step cap a user may ask for in the app
MAX_JOBS = 256                # running jobs remembered for cancelling (finished ones are forgotten at once)
# the history table: the store's columns with the main settings of each run after the class
HISTORY_COLUMNS = ["id", "created (UTC)", "kind", "source", "class", "K", "lr ÷", "cap", "settings", "steps",
                   "converged", "top-k", "seconds", "model", "data"]
# the settings a user may change per run in the app, in page order (everything else comes from the model's
# defaults): the fields declared with an app widget (mucs.settings.APP_WIDGETS)
USER_SETTINGS = tuple(APP_WIDGETS)


def upscale(img: np.ndarray, target: int = 128) -> Image.Image:
    """uint8 (H, W, C) -> PIL image enlarged by an integer factor with nearest neighbours (crisp pixels)."""
    a = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    h, w = a.shape[:2]
    f = max(1, int(round(target / max(h, w))))
    return Image.fromarray(np.ascontiguousarray(a)).resize((w * f, h * f), Image.Resampling.NEAREST)


@dataclass
class Query:
    """The current query: pixels as the model sees them, its class or prompt, and where it came from."""
    image: np.ndarray            # (H, W, C) uint8
    label: Optional[int]
    meta: dict = field(default_factory=dict)   # kind (generated/upload/training), seed, steps, index, file, conversions
    prompt: Optional[str] = None   # text-conditional models: the caption it was made with (or typed for an upload)

    def to_query_image(self) -> QueryImage:
        return QueryImage(x=to_model_range(self.image), conversions=list(self.meta.get("conversions", [])),
                          prompt=self.prompt)


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
    overall: Optional[Overall] = None      # monotone overall fraction, stage and time left


class Job:
    """One heavy request running in the app: its id (what a client cancels it by), the session that
    started it, its cancel event, and the wall-clock limit after which the event is set for it."""

    def __init__(self, session: str, limit: Optional[float]):
        self.id = secrets.token_hex(6)
        self.session, self.limit = session, limit
        self.event = threading.Event()
        self.started = time.monotonic()
        self.timed_out = False
        self._timer = None
        if limit:
            self._timer = threading.Timer(limit, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self):
        self.timed_out = True
        self.event.set()

    def stop(self):
        if self._timer is not None:
            self._timer.cancel()

    def limit_error(self) -> MucsError:
        return MucsError(f"stopped after {self.limit:g} s: this app stops a request that runs longer than "
                         f"{self.limit:g} s (its operator can raise the limit with --max-request-seconds); "
                         "nothing was saved")


class Explorer(BatchOps):
    def __init__(self, model_path: str, data_path: str, overrides: Optional[dict] = None,
                 runs_dir: Optional[str] = None, examples_dir: Optional[str] = "default", device: Optional[str] = None,
                 max_request_seconds: Optional[float] = MAX_REQUEST_SECONDS,
                 max_steps_limit: Optional[int] = MAX_STEPS_LIMIT, profile: str = "recommended",
                 lora: Optional[str] = None, caption_column: Optional[str] = None, allow_untrained: bool = False,
                 train_lr: Optional[float] = None, cache_dir: Optional[str] = None, image_column: Optional[str] = None,
                 label_column: Optional[str] = None):
        self.model_path = model_path
        if max_request_seconds is not None and not (0 < float(max_request_seconds) < float("inf")):
            raise MucsError(f"the request time limit must be a positive number of seconds, got {max_request_seconds}")
        if max_steps_limit is not None and int(max_steps_limit) < 1:
            raise MucsError(f"the step cap limit must be at least 1, got {max_steps_limit}")
        self.max_request_seconds = None if max_request_seconds is None else float(max_request_seconds)
        self.max_steps_limit = None if max_steps_limit is None else int(max_steps_limit)
        self.model = load_model(model_path, device, train_lr=train_lr, lora=lora)
        self.data = load_dataset(data_path, image_column=image_column, label_column=label_column,
                                 caption_column=caption_column)
        self.data.check_matches(self.model)
        from ..settings import check_settings_dict
        # the settings profile (recommended, fast or paper; mucs.defaults.PROFILES), then the app's --settings
        self.profile = profile
        self.settings = settings_for(self.model.path or model_path, profile,   # a Hub id: its snapshot folder
                                     **check_settings_dict(overrides or {}, "settings")).validate()
        if self.settings.top_k > len(self.data):
            raise MucsError(f"top-k {self.settings.top_k} is more than the {len(self.data)} training images")
        self.attributor = Attributor(self.model, self.data, self.settings, cache_dir or cache_dir_for(model_path),
                                     allow_untrained=allow_untrained)
        if examples_dir == "default":
            from .history import DEFAULT_EXAMPLES
            examples_dir = DEFAULT_EXAMPLES
        self.store = RunStore(runs_dir, examples_dir)
        self._neigh: Optional[NeighbourIndex] = None
        self._cancel: OrderedDict = OrderedDict()   # job id -> Job, running jobs only (bounded by MAX_JOBS)
        self._lock = threading.Lock()
        self._unlearned: OrderedDict = OrderedDict()   # run id -> unlearned UNet (bounded by KEEP_UNLEARNED)
        self._ctx: Any = None               # baselines Context (faiss indexes shared across queries)
        self._baseline_lock = threading.RLock()   # one baseline computation at a time (shared memo and hooks)
        self._settings_cache: dict = {}     # run id -> settings dict (runs never change)
        self._last_times: Optional[dict] = None   # stage times of the last run here: weights of the overall progress
        self._downloads: Optional[str] = None     # one folder for the files offered for download (replaced, not piled up)
        self.user_settings(None)   # settings this app could never run refuse the start, not every request

    # --- description -----------------------------------------------------------------------------
    @property
    def class_names(self) -> Optional[list]:
        return class_names_for(self.model, self.data)

    def class_choices(self) -> list:
        return [(f"{i}: {n}", i) for i, n in enumerate(self.class_names or [])]

    @property
    def text(self) -> bool:
        """True for a text-conditional model: queries have prompts, training items captions."""
        return self.model.conditioning == "text"

    def default_guidance(self) -> float:
        from ..sources.generate import default_guidance
        return default_guidance(self.model)

    def describe(self) -> str:
        m, d = self.model, self.data
        cond = (f"class-conditional, {m.num_classes} classes" if m.num_classes else
                "text-conditional (prompts)" if self.text else "unconditional")
        params = sum(p.numel() for p in m.unet.parameters())
        kind = (f"{type(m.unet).__name__}, latent diffusion ({'×'.join(map(str, m.x0_shape))} latents)" if m.latent
                else type(m.unet).__name__) + (f" + LoRA adapter ({m.lora['parameters']:,} parameters)" if m.lora else "")
        caps = f", {len(set(d.captions))} distinct captions" if d.captions is not None and self.text else ""
        return (f"**Model** `{os.path.basename(m.path)}`: {kind}; images {m.size}×{m.size}, {m.channels} channel(s), "
                f"{cond}, {params / 1e6:.2f} M parameters, {m.prediction_type} prediction, device {m.device}.  \n"
                f"**Training set** `{os.path.basename(d.source)}`: {len(d)} images{caps}.  \n"
                f"**Settings**: {self.profile_text()}")

    def profile_text(self) -> str:
        """Which settings the app serves, in words: a model folder with no recommended settings
        (mucs_settings.json) gets the paper's under the name 'recommended', and the page says so."""
        from ..defaults import has_recommended
        own = has_recommended(self.model.path or self.model_path)
        if self.profile == "fast":
            return ("the fast profile (half the unlearning batch at twice the lr, screened scoring: faster, top-k "
                    "close to the full way's; docs/benchmarks.md, attribution speed)"
                    + ("." if own else "; this model recommends no settings of its own (no mucs_settings.json), so "
                       "the rest are the paper's."))
        if self.profile == "recommended" and not own:
            return ("the paper's: this model recommends no settings of its own "
                    "(no mucs_settings.json in its folder; docs/models.md), so they may take longer than needed.")
        return f"the {self.profile} profile."

    def user_settings(self, overrides: Optional[dict] = None) -> Settings:
        """The settings of one run asked for in the app or through its API. `overrides`: a dict of
        mucs.Settings values by field name; a missing (or null) field keeps the model's recommended
        value. An unknown field, a value of the wrong type, a field that is not a per-run choice
        (USER_SETTINGS), settings over the app's limits or too big for memory: one MucsError."""
        from ..settings import check_settings_dict
        if isinstance(overrides, dict):
            overrides = {k: v for k, v in overrides.items() if v is not None}
        ov_ = check_settings_dict({} if overrides is None else overrides, what="settings")
        fixed = [k for k in ov_ if k not in USER_SETTINGS]
        if fixed:
            raise MucsError(f"settings: {fixed[0]} is not chosen per run in this app (it comes from the model's "
                            f"mucs_settings.json or the app's --settings); per run: {', '.join(USER_SETTINGS)}")
        s = self.settings.replace(**ov_).validate()
        if s.top_k > len(self.data):
            raise MucsError(f"top-k {s.top_k} is more than the {len(self.data)} training images: choose at most "
                            f"{len(self.data)}")
        if self.max_steps_limit is not None and s.max_steps > self.max_steps_limit:
            raise MucsError(f"step cap {s.max_steps} is above this app's limit of {self.max_steps_limit} "
                            "(its operator can raise it with --max-steps-limit)")
        self.attributor.check_memory(s)
        return s

    def estimate_text(self, settings: Optional[Settings] = None) -> str:
        """'<profile> settings: about … on cpu (…)': what the page says before an attribution starts."""
        return f"{self.profile} settings; {self.attributor.estimate(settings or self.settings).text()}"

    # --- jobs: cancellation by session or job id, and the per-request time limit ---------------------
    def start_job(self, session: str, limit: Optional[float] = -1) -> Job:
        """Register a heavy request of `session`; its event is set by `cancel` (by session or job id)
        or when it has run `limit` seconds (default: the app's max_request_seconds). Call
        `finish_job` when it ends (or use `job`)."""
        job = Job(session, self.max_request_seconds if limit == -1 else limit)
        with self._lock:
            self._cancel[job.id] = job
            while len(self._cancel) > MAX_JOBS:      # only reachable with that many jobs running at once
                self._cancel.popitem(last=False)[1].stop()
        return job

    def finish_job(self, job: Job) -> None:
        job.stop()
        with self._lock:
            self._cancel.pop(job.id, None)

    def job(self, session: str, limit: Optional[float] = -1):
        """Context manager around a heavy request: yields the Job; on the way out forgets it, and turns
        the Cancelled of a request stopped by the time limit into a MucsError that says so."""
        return _JobContext(self, session, limit)

    def cancel(self, key: str) -> bool:
        """Cancel the running job whose id is `key`, or every running job of the session `key`.
        True when something was cancelled."""
        key = str(key or "")
        with self._lock:
            jobs = [j for j in self._cancel.values() if j.id == key or j.session == key]
        for j in jobs:
            j.event.set()
        return bool(jobs)

    def running_jobs(self) -> list:
        with self._lock:
            return [dict(id=j.id, session=j.session, seconds=round(time.monotonic() - j.started, 1))
                    for j in self._cancel.values()]

    # --- queries ------------------------------------------------------------------------------------
    def generate(self, label: Union[int, str, None], seed: int, count: int = 1, steps: int = 50,
                 progress=None, cancel=None, prompt: Optional[str] = None, guidance_scale: Union[float, str, None] = None,
                 negative_prompt: str = "") -> list:
        """`count` queries from consecutive seeds with the deterministic sampler (a text model's from
        `prompt`, with classifier-free guidance)."""
        from ..sources.generate import check_guidance, default_guidance
        if self.model.num_classes is None:
            label = None
        elif label is None or label == "":
            raise MucsError("choose a class: this model is class-conditional")
        lab = self.model.check_label(None if label is None else int(label))
        prompt = self.model.check_prompt(prompt if self.text else None)
        guidance = default_guidance(self.model) if guidance_scale in (None, "") else check_guidance(guidance_scale)
        count = check_int(count, "the number of images (1..16 at a time)", 1, 16)
        steps = check_int(steps, "sampler steps", 1, 1000)
        seed = check_int(seed, "the seed", 0, SEED_MAX - count)
        seeds = [seed + i for i in range(count)]
        imgs = generate(self.model, [lab] * count, seeds, steps, progress=progress, cancel=cancel,
                        prompts=None if prompt is None else [prompt] * count, guidance_scale=guidance,
                        negative_prompt=negative_prompt or "")
        extra = dict(prompt=prompt, guidance_scale=guidance, negative_prompt=negative_prompt or "") if self.text else {}
        return [Query(image=im, label=lab, meta=dict(kind="generated", seed=s, sampler_steps=steps, conversions=[],
                                                       **extra), prompt=prompt)
                for im, s in zip(imgs, seeds)]

    def upload(self, path: str) -> Query:
        """Read an uploaded file (any size/mode) as the model sees it; the class is left to the user."""
        if not path:
            raise MucsError("no file uploaded")
        q = load_query_image(path, self.model.channels, self.model.size, self.data.background())
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
        prompt = self.data.caption(i) if self.text else None
        return Query(image=self.data.images[i], label=label, meta=dict(kind="training", index=i, conversions=[]),
                     prompt=prompt)

    def with_prompt(self, q: Optional[Query], prompt) -> Optional[Query]:
        """The query with a new prompt typed by the user (blank: none); checked when attributed."""
        if q is None or not self.text:
            return q
        p = prompt.strip() if isinstance(prompt, str) else ""
        return Query(q.image, q.label, q.meta, p or None)

    def with_label(self, q: Query, label, prompt: Optional[str] = None) -> Query:
        """The query with the class (or, for a text model, the prompt) chosen by the user, checked
        against the model; a text query keeps its own prompt when none is given."""
        if q is None:
            raise MucsError("no query yet: generate, upload or pick a training image first")
        if self.text:
            p = prompt if isinstance(prompt, str) and prompt.strip() else q.prompt
            if not p:
                raise MucsError("type the query's prompt: this model is text-conditional (the caption the image "
                                "was made with, or the one you want to ask about)")
            return Query(q.image, None, q.meta, self.model.check_prompt(p))
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
                                        source=_source(q), prompt=q.prompt)
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        run_id = self.store.save(att, dict(q.meta, kind=q.meta.get("kind"), source=_source(q),
                                           model=self.model.path, data=self.data.source),
                                 class_names=self.class_names)
        self._last_times = dict(att.stage_times)
        unet = getattr(att, "unlearned_unet", None)     # kept when the Attributor hands it over
        if unet is not None:
            self.keep_unlearned(run_id, unet)
        return run_id, att

    def attribute_stream(self, q: Query, settings: Optional[Settings] = None, cancel=None, every: float = 0.5):
        """`attribute` in a worker thread, yielding an Update at most every `every` seconds and
        a final one with the result. Closing the generator cancels the run; nothing is stored then."""
        cancel = cancel or threading.Event()
        events: queue.Queue = queue.Queue()
        out: dict = {}
        state: dict[str, Any] = dict(stage="starting", fraction=0.0, curve=[], loss_null=None, info={}, overall=None)
        overall = OverallProgress.from_times(self._last_times)

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
                        state["overall"] = overall(ev)
                        ev = events.get_nowait()
                except queue.Empty:
                    pass
                if not done:
                    o = state["overall"]
                    if o is not None:   # the time left keeps counting down between events
                        o = Overall(o.fraction, o.stage, o.stage_fraction, o.elapsed, overall.remaining())
                    yield Update(state["stage"], state["fraction"], list(state["curve"]), state["loss_null"],
                                 dict(state["info"]), overall=o)
            if "error" in out:
                raise out["error"]
            run_id, att = out["result"]
            yield Update("done", 1.0, att.curve, att.loss_null, {}, result=att, run_id=run_id,
                         overall=overall(ProgressEvent("done", 1.0)))
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

    def item_text(self, i, limit: int = 60) -> str:
        """How a training item is named under its image: its class, or (text models) its caption."""
        i = int(i)
        if self.data.captions is not None and (self.text or self.data.labels is None):
            c = self.data.caption(i)
            return f"“{c[:limit - 1]}…”" if len(c) > limit else f"“{c}”"
        return "" if self.data.labels is None else self.class_name(self.data.labels[i])

    def _lab(self, i) -> str:
        t = self.item_text(i)
        return f" {t}" if t else ""

    def top_gallery(self, att: Attribution, target: int = 128) -> list:
        """[(image, caption)] of the top-k training items, best first."""
        out = []
        for rank, i in enumerate(att.top, 1):
            i = int(i)
            out.append((upscale(self.data.images[i], target), f"#{rank} · {i}{self._lab(i)} · {att.scores[i]:.4f}"))
        return out

    def neighbours(self, image: np.ndarray, k: int = 8, target: int = 128) -> list:
        """[(image, caption)] of the k nearest training items in pixel space (for comparison)."""
        d, idx = self.pixel_index().search(pixel_features(to_model_range(image)[None]), k)
        out = []
        for dist, i in zip(d[0], idx[0]):
            i = int(i)
            out.append((upscale(self.data.images[i], target), f"{i}{self._lab(i)} · d²={dist:.3g}"))
        return out

    def check_run(self, att: Attribution) -> None:
        """Refuse a stored run made with another model or training set."""
        fp = att.info.get("data_fingerprint")
        if len(att.scores) != len(self.data) or (fp and fp != self.data.fingerprint()):
            raise MucsError("this run was made with another training set; open it with the matching --data")
        m, q = self.model, att.query_image
        if q is not None and q.shape != (m.size, m.size, m.channels):
            raise MucsError(f"this run's query.png is {'x'.join(map(str, q.shape))}, not the model's "
                            f"{m.size}x{m.size}x{m.channels}: the run was made with another model or edited")

    def summary(self, att: Attribution, run_id: str = "") -> str:
        q = att.query
        cls = (f"class **{q.get('class_name')}** ({q.get('label')})" if q.get("label") is not None else
               f"prompt “{q['prompt']}”" if q.get("prompt") else "no class")
        conv = "; ".join(q.get("conversions") or []) or "none"
        if att.loss_null is None:   # a run of another method (mucs attribute --method dtrak|trak|abu|..)
            times = ", ".join(f"{k.replace('_', ' ')} {v:.1f}s" for k, v in att.stage_times.items())
            return (f"**Run** `{run_id}`: query {q.get('source') or ''}, {cls}; conversions: {conv}.  \n"
                    f"Method **{att.info.get('method')}**: {att.info.get('method_description', '')}.  \n"
                    f"Time: {times}.")
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
        """[(image, caption)] of the images found in two or more of the compared top-k sets."""
        out = []
        for i, c in rec:
            out.append((upscale(self.data.images[i], target), f"{i}{self._lab(i)} · in {c} of the sets"))
        return out

    # --- history with the main settings -------------------------------------------------------------
    def run_settings_dict(self, run_id: str) -> dict:
        """The settings a stored run recorded ({} when its files are damaged or gone)."""
        try:
            return self.store.settings(run_id)
        except MucsError:
            return {}

    def history_table(self, every: bool = False) -> list:
        """The store's rows, newest first, plus the main settings of each run (K, lr factor, step cap,
        whether it used the paper's settings) and the model and training set it was made with. Only
        the served model's and training set's runs (and those that do not say) unless `every`: the
        others do not open here."""
        metas = {m["id"]: m for m in self.store.list()}
        rows = []
        for row in self.store.table():   # id, created, kind, source, class, steps, converged, top-k, seconds
            m = metas.get(row[0], {})
            if not every and not self.is_served(m):
                continue
            st = self.run_settings_dict(row[0])
            extra = [st.get("noises", ""), _lr_text(st), st.get("max_steps", ""), paper_mark(st) if st else ""]
            names = [os.path.basename(os.path.normpath(str(m[k]))) if m.get(k) else "" for k in ("model", "data")]
            # compact cells (the table's columns fit their words): minutes of the UTC time, whole seconds
            when = str(row[1] or "")[:16].replace("T", " ")
            secs = round(float(row[8])) if isinstance(row[8], (int, float)) and math.isfinite(row[8]) else row[8]
            rows.append([row[0], when] + list(row[2:5]) + extra + list(row[5:8]) + [secs] + names)
        return rows

    def is_served(self, meta: dict) -> bool:
        """Whether a run's meta.json names the served model and training set (or does not say). A
        bare name (the shipped examples record 'fashion16', not this machine's path) is compared
        with the served folder's or file's name."""
        from ..defaults import shown_path
        for key, here in (("model", self.model.path or self.model_path), ("data", self.data.source)):
            theirs = meta.get(key)
            if not theirs or not here:
                continue
            theirs, here = os.path.normpath(str(theirs)), os.path.normpath(shown_path(here))
            if theirs != here and (os.sep in theirs or theirs != os.path.basename(here)):
                return False
        return True

    # --- explain, compare, report --------------------------------------------------------------------
    def load_run(self, run_id: str) -> Attribution:
        if not run_id:
            raise MucsError("no run chosen: attribute a query or open a run from the history first")
        att = self.store.load(run_id)
        self.check_run(att)
        return att

    def keep_unlearned(self, run_id: str, unet) -> None:
        """Keep a run's unlearned UNet in memory (the last KEEP_UNLEARNED runs only)."""
        with self._lock:
            self._unlearned[run_id] = unet
            self._unlearned.move_to_end(run_id)
            while len(self._unlearned) > KEEP_UNLEARNED:
                self._unlearned.popitem(last=False)

    def unlearned(self, run_id: str):
        with self._lock:
            return self._unlearned.get(run_id)

    def replay(self, run_id: str, progress=None, cancel=None) -> dict:
        """Re-run a stored run's unlearning (deterministic) and keep the unlearned UNet for 'why'."""
        from .why import replay_unlearning, run_settings
        att = self.load_run(run_id)
        unet, info = replay_unlearning(self.model, self.attributor.inputs(), att, run_settings(att, self.settings), progress,
                                       cancel)
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        self.keep_unlearned(run_id, unet)
        return info

    def baselines_context(self):
        """The baselines' Context, on a private copy of the UNet: the feature baseline hooks the UNet's
        mid-block, which must not catch the forward passes of an attribution running at the same time."""
        import copy
        from ..method.baselines import Context
        with self._baseline_lock:
            if self._ctx is None:
                model = copy.copy(self.model)
                model.unet = copy.deepcopy(self.model.unet).eval()
                from ..method.baselines import CPU_OPTIONS
                self._ctx = Context(model, self.data, self.settings, self.attributor.cache_dir,
                                    options={k: dict(v) for k, v in CPU_OPTIONS.items()})
        return self._ctx

    def pixel_index(self) -> NeighbourIndex:
        if self._neigh is None:
            self._neigh = NeighbourIndex.pixels(self.data)
        return self._neigh

    def why(self, run_id: str, index, with_baselines: bool = True):
        """`mucs.explorer.why.Why` for training item `index` of run `run_id` (per-noise L_u when the run's
        unlearned model is in memory)."""
        from .compare import method_scores
        from .why import explain
        att = self.load_run(run_id)
        rank_scores = None
        if with_baselines and att.query_image is not None:
            with self._baseline_lock:
                rank_scores = method_scores(self.baselines_context(), att, run_id, ("pixel_nn", "feature_nn"))
        return explain(self.model, self.data, self.attributor, att, index, self.unlearned(run_id), rank_scores,
                       self.pixel_index(), class_name=self.class_name)

    def index_gallery(self, items, target: int = 96) -> list:
        """[(image, 'index class · extra')] for [(index, extra)]."""
        out = []
        for i, extra in items:
            out.append((upscale(self.data.images[int(i)], target), f"{int(i)}{self._lab(i)}" + (f" · {extra}" if extra else "")))
        return out

    def compare_methods(self, run_id: str, methods=None) -> dict:
        """Methods side by side for a run's query (see mucs.explorer.compare.methods_side_by_side), with an HTML grid."""
        from .compare import METHODS, grid_html, methods_side_by_side
        att = self.load_run(run_id)
        with self._baseline_lock:
            m = methods_side_by_side(self.baselines_context(), att, run_id, tuple(methods or METHODS))
        mucs_top = set(m["tops"].get("mucs", []))
        rows: list = []
        for name, label in zip(m["names"], m["labels"]):
            items = m["tops"][name]
            mark = {i: ("m", "also MUCS") for i in items if name != "mucs" and i in mucs_top}
            if name == "mucs":
                mark = {i: ("s", f"+{m['shared'][i] - 1} other list{'s' if m['shared'][i] > 2 else ''}")
                        for i in items if i in m["shared"]}
            rows.append(dict(title=label, subtitle=(f"{len(m['with_mucs'][name])}/{len(items)} shared with MUCS"
                             if name != "mucs" else "the run's own scores") + f" · {m['seconds'][name]:.1f} s", items=items,
                             scores={i: _score_text(name, m["scores"][name][i]) for i in items}, mark=mark,
                             query=att.query_image if not rows else None))
        key = ('<span style="border-color:#2a9d4b;background:#e9f7ee">green: also in MUCS\'s top-k</span>'
               '<span style="border-color:#e8890c;background:#fff4e0">orange (MUCS row): in other methods\' lists too</span>')
        m["html"] = grid_html(rows, self.data.images, self._cls_of, key, "methods")
        return m

    def compare_runs(self, run_ids) -> dict:
        """Runs side by side: each run's query and top-k in one row, images shared between runs highlighted."""
        from .compare import grid_html, runs_side_by_side
        run_ids = [r for r in (run_ids or []) if r]
        if len(run_ids) < 2:
            raise MucsError("choose at least two runs to compare")
        atts = [self.load_run(r) for r in run_ids]
        names = [_short(r, a) for r, a in zip(run_ids, atts)]
        c = runs_side_by_side(atts, names)
        rows = []
        for r, a, name in zip(run_ids, atts, names):
            items = [int(i) for i in a.top]
            rows.append(dict(title=name, subtitle=r, items=items, query=a.query_image,
                             query_note=a.query.get("source") or "",
                             scores={i: _score_text("mucs", a.scores[i]) for i in items},
                             mark={i: ("s", f"in {c['shared'][i]} runs") for i in items if i in c["shared"]}))
        key = '<span style="border-color:#e8890c;background:#fff4e0">orange: in two or more of these runs</span>'
        c["html"] = grid_html(rows, self.data.images, self._cls_of, key, "runs")
        return c

    def _cls_of(self, i) -> str:
        return self.item_text(i, 40)

    def downloads_dir(self) -> str:
        """This session's folder for downloadable files (a file per run and format, replaced atomically)."""
        if self._downloads is None or not os.path.isdir(self._downloads):
            self._downloads = tempfile.mkdtemp(prefix="mucs-downloads-")
        return self._downloads

    def export_file(self, run_id: str, fmt: str) -> str:
        """The run's scores as CSV or JSON (see RunStore.export), in the downloads folder."""
        return self.store.export(run_id, fmt, out_dir=self.downloads_dir(), class_names=self.class_names)

    def report_file(self, run_id: str, out_dir: Optional[str] = None) -> str:
        """Write the run's self-contained HTML report into `out_dir` (default: the downloads folder)."""
        from .report import render_report, write_report
        att = self.load_run(run_id)
        meta = self.store.meta(run_id)
        text = render_report(att, run_id, meta, self.data, self.class_names)
        out_dir = out_dir or self.downloads_dir()
        return write_report(os.path.join(out_dir, f"mucs-report-{run_id.replace(':', '-')}.html"), text)


class _JobContext:
    def __init__(self, ex: Explorer, session: str, limit):
        self.ex, self.session, self.limit = ex, session, limit

    def __enter__(self) -> Job:
        self.job = self.ex.start_job(self.session, self.limit)
        return self.job

    def __exit__(self, kind, value, tb):
        self.ex.finish_job(self.job)
        if kind is not None and issubclass(kind, Cancelled) and self.job.timed_out:
            raise self.job.limit_error() from None
        return False


# --- history with the main settings -------------------------------------------------------------------
def paper_mark(settings: dict) -> str:
    """'paper' when a run used the paper's choices (Settings() defaults; the step cap and top-k do not
    count), 'paper (old σ grid)' for such runs made before the noise range existed, '' otherwise."""
    ref = Settings().to_dict()
    old_grid = "sigma_min" not in settings
    for k in PAPER_KEYS:
        if k in ("sigma_min", "sigma_max") and old_grid:
            continue
        v, r = settings.get(k, ref[k]), ref[k]
        if isinstance(r, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
            if abs(float(v) - r) > 1e-9 * max(1.0, abs(r)):
                return ""
        elif (list(v) if isinstance(v, (list, tuple)) else v) != (list(r) if isinstance(r, (list, tuple)) else r):
            return ""
    return "paper (old σ grid)" if old_grid else "paper"


def _score_text(method: str, score: float) -> str:
    """A method's score as its caption shows it: skew for MUCS, squared distance for the NN
    baselines (their score is −d²), mean normalised rank for ensembles."""
    if "+" in method:
        return f"rank avg {score:.3f}"
    if method.endswith("_nn"):
        return f"d² {max(0.0, -float(score)):.3g}"
    if method in ("dtrak", "trak"):
        return f"score {score:.3g}"
    if method == "abu":
        return f"Δloss {score:.3g}"
    return f"skew {score:.4f}"


def _lr_text(settings: dict) -> str:
    if settings.get("lr") is not None:
        return f"lr {settings['lr']:g}"
    f = settings.get("lr_factor")
    return "" if f is None else f"{f:g}"


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
