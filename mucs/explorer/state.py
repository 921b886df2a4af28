"""The explorer session behind the app: one model, its training set, an Attributor and a run
store. Every app callback calls one method here; nothing here knows about Gradio."""
import logging
import os
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from ..checks import SEED_MAX, check_int
from ..method.attribute import Attribution, Attributor
from ..sources.data import QueryImage, load_dataset, load_query_image, to_model_range
from ..defaults import cache_dir_for, settings_for
from ..errors import Cancelled, MucsError
from ..sources.generate import generate
from .batch import BatchOps
from .stored_runs import KEEP_UNLEARNED, StoredRuns, paper_mark, upscale  # noqa: F401 (re-exported)
from .history import RunStore
from ..sources.models import class_names_for, load_model
from ..method.neighbours import NeighbourIndex, pixel_features
from ..progress import Overall, OverallProgress, ProgressEvent
from ..settings import APP_WIDGETS, Settings

log = logging.getLogger("mucs.explorer")
MAX_REQUEST_SECONDS = 900.0   # a heavy request (attribution, replay, sampling) running longer is stopped
MAX_STEPS_LIMIT = 10_000      # the largest step cap a user may ask for in the app
MAX_JOBS = 256                # running jobs remembered for cancelling (finished ones are forgotten at once)
# the history table: the store's columns with the main settings of each run after the class
HISTORY_COLUMNS = ["id", "created (UTC)", "kind", "source", "class", "K", "lr ÷", "cap", "settings", "steps",
                   "converged", "top-k", "seconds", "model", "data"]
# the settings a user may change per run in the app, in page order (everything else comes from the model's
# defaults): the fields declared with an app widget (mucs.settings.APP_WIDGETS)
USER_SETTINGS = tuple(APP_WIDGETS)


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


class Explorer(StoredRuns, BatchOps):
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
