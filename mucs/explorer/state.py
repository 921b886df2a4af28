"""The explorer session behind the app: one model, its training set, an Attributor and a run
store. Every app callback calls one method here; nothing here knows about Gradio."""
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from ..method.attribute import Attribution, Attributor
from ..sources.data import load_dataset
from ..defaults import cache_dir_for, settings_for
from ..errors import Cancelled, MucsError
from .batch import BatchOps
from .queries import Query, QueryOps  # noqa: F401 (Query re-exported)
from .stored_runs import KEEP_UNLEARNED, StoredRuns, paper_mark, upscale  # noqa: F401 (re-exported)
from .history import RunStore
from .worker import stream_in_worker
from ..sources.models import class_names_for, load_model
from ..method.neighbours import NeighbourIndex
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


class Explorer(QueryOps, StoredRuns, BatchOps):
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
        state: dict[str, Any] = dict(stage="starting", fraction=0.0, curve=[], loss_null=None, info={}, overall=None)
        overall = OverallProgress.from_times(self._last_times)

        def apply(ev: ProgressEvent):
            _apply(state, ev)
            state["overall"] = overall(ev)

        def snapshot() -> Update:
            o = state["overall"]
            if o is not None:   # the time left keeps counting down between events
                o = Overall(o.fraction, o.stage, o.stage_fraction, o.elapsed, overall.remaining())
            return Update(state["stage"], state["fraction"], list(state["curve"]), state["loss_null"],
                          dict(state["info"]), overall=o)

        run_id, att = yield from stream_in_worker(lambda put: self.attribute(q, settings, put, cancel), apply, snapshot,
                                                  cancel, "mucs-attribute", every)
        yield Update("done", 1.0, att.curve, att.loss_null, {}, result=att, run_id=run_id,
                     overall=overall(ProgressEvent("done", 1.0)))


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


def _source(q: Query) -> str:
    m = q.meta
    if m.get("kind") == "generated":
        return f"generated seed {m.get('seed')}"
    if m.get("kind") == "training":
        return f"training item {m.get('index')}"
    if m.get("kind") == "upload":
        return f"upload {m.get('file')}"
    return str(m.get("kind", ""))
