"""One progress interface for the CLI (a text bar, drawn by tqdm) and the app (live plots), and an overall,
never-decreasing progress with a remaining-time estimate over the stages of one attribution."""
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from .errors import Cancelled


@dataclass
class ProgressEvent:
    """A progress report: stage name, fraction done in [0, 1], and stage-specific figures
    (during unlearning: step, L_f, L_r, L_null)."""
    stage: str
    fraction: float
    info: dict = field(default_factory=dict)


ProgressFn = Callable[[ProgressEvent], None]


class Reporter:
    """Wraps an optional progress callback and an optional cancel event for the library loops."""

    def __init__(self, callback: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None):
        self.callback = callback
        self.cancel = cancel

    def __call__(self, stage: str, fraction: float, **info):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"cancelled during {stage}")
        if self.callback is not None:
            self.callback(ProgressEvent(stage, float(min(max(fraction, 0.0), 1.0)), info))


class TextBar:
    """A progress callback drawing one bar per stage (tqdm) on `stream`, stderr by default (used by the
    CLI): the stage, the bar, the percentage, the stage's figures and tqdm's elapsed<remaining time."""

    def __init__(self, stream=None, width: int = 30):
        self.stream, self.width = stream, width
        self.stage: Optional[str] = None
        self.bar: Any = None               # the tqdm bar of the current stage

    def __call__(self, ev: ProgressEvent):
        from tqdm import tqdm
        new = ev.stage != self.stage
        if new:
            self.close()
            self.stage = ev.stage
            self.bar = tqdm(total=1.0, desc=f"{ev.stage:<18}", file=self.stream or sys.stderr, ascii=".#",
                            mininterval=0.2, miniters=0, dynamic_ncols=False,
                            bar_format="{desc} [{bar:%d}] {percentage:5.1f}%%{postfix}  {elapsed}<{remaining}" % self.width)
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.info.items())
        self.bar.set_postfix_str(extra, refresh=False)
        if new or ev.fraction >= 1.0:          # a stage's first and last report are always drawn
            self.bar.n = ev.fraction
            self.bar.refresh()
        else:                                  # tqdm draws at most every 0.2 s
            self.bar.update(ev.fraction - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# The stages of one attribution, in the order they run, with their usual share of the time on a CPU
# (the embedded model: L_o 18 s, L_null 21 s, unlearning 30-45 s, L_u 17-21 s). A stage served from
# the cache reports nothing and counts as done once a later stage starts.
STAGES = ("original losses", "null loss", "unlearning", "unlearned losses")
DEFAULT_WEIGHTS = {"original losses": 0.18, "null loss": 0.2, "unlearning": 0.4, "unlearned losses": 0.22}
# stage_times keys of a stored run -> stage names of the progress events
TIME_KEYS = {"original_losses": "original losses", "null_loss": "null loss", "unlearning": "unlearning",
             "unlearned_losses": "unlearned losses"}


@dataclass
class Overall:
    """Where a run stands as a whole: overall fraction (never decreases), the current stage and its
    own (never decreasing) fraction, seconds since the first event and an estimate of those left."""
    fraction: float
    stage: str
    stage_fraction: float
    elapsed: float
    remaining: Optional[float] = None

    def text(self) -> str:
        """'unlearning · overall 62 % · about 20 s left'."""
        out = f"{self.stage} · overall {self.fraction:.0%}"
        if self.remaining is not None and self.fraction < 1.0:
            out += f" · about {format_seconds(self.remaining)} left"
        return out


def format_seconds(sec: float) -> str:
    sec = max(0.0, float(sec))
    if sec < 60:
        return f"{max(1, int(round(sec)))} s"
    m, s = divmod(int(round(sec)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class OverallProgress:
    """Folds the per-stage ProgressEvents of one attribution into one monotone overall fraction.

    Each stage has a weight (by default DEFAULT_WEIGHTS; `from_times` takes them from an earlier
    run's stage_times); the overall fraction is the weight of the stages already finished plus the
    current stage's weight times its fraction. Fractions only ever grow: the unlearning stage's own
    fraction (L_f against its stop value) can dip between steps, the overall never does. The time
    left is extrapolated from the rate since the first event, once there is enough to go on."""

    def __init__(self, weights: Optional[Dict[str, float]] = None, clock=time.monotonic):
        w = dict(DEFAULT_WEIGHTS if weights is None else weights)
        w = {k: max(0.0, float(w.get(k, 0.0))) for k in STAGES}
        total = sum(w.values()) or 1.0
        self.weights = {k: v / total for k, v in w.items()}
        self.clock = clock
        self.t0 = None          # time of the first event
        self.f0 = 0.0           # overall fraction at the first event (stages served from the cache)
        self.fraction = 0.0
        self.stage = "starting"
        self.stage_fraction = 0.0
        self._index = -1

    @classmethod
    def from_times(cls, stage_times: Optional[dict], clock=time.monotonic) -> "OverallProgress":
        """Weights from an earlier run's stage_times (seconds per stage); the defaults when absent."""
        w = {TIME_KEYS[k]: float(v) for k, v in (stage_times or {}).items() if k in TIME_KEYS and v is not None}
        useful = {k: v for k, v in w.items() if v > 0.5}   # a cached stage took ~0 s last time
        if sum(useful.values()) <= 0:
            return cls(clock=clock)
        return cls({k: useful.get(k, DEFAULT_WEIGHTS[k] * 0.05) for k in STAGES}, clock)

    def __call__(self, ev: ProgressEvent) -> Overall:
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        if ev.stage == "done":
            self.fraction, self.stage, self.stage_fraction = 1.0, "done", 1.0
        elif ev.stage in STAGES:
            i = STAGES.index(ev.stage)
            if i > self._index:                    # a new stage: everything before it is done
                self._index, self.stage, self.stage_fraction = i, ev.stage, 0.0
            if i == self._index:
                self.stage_fraction = max(self.stage_fraction, float(ev.fraction))
            done = sum(self.weights[s] for s in STAGES[:self._index])
            f = done + self.weights[STAGES[self._index]] * self.stage_fraction
            if self.t0 == now and self.fraction == 0.0:
                self.f0 = done                     # skipped (cached) stages do not count as speed
            self.fraction = min(1.0, max(self.fraction, f))
        return Overall(self.fraction, self.stage, self.stage_fraction, now - self.t0, self.remaining(now))

    def remaining(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left at the mean rate so far (None until 2 s and 3 % of progress have passed)."""
        if self.t0 is None:
            return None
        now = self.clock() if now is None else now
        if self.fraction >= 1.0:
            return 0.0
        dt, df = now - self.t0, self.fraction - self.f0
        if dt < 2.0 or df < 0.03:
            return None
        return (1.0 - self.fraction) * dt / df
