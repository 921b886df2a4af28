"""One progress interface for the CLI (a text bar, drawn by tqdm) and the app (live plots), and an overall,
never-decreasing progress with a remaining-time estimate over the stages of one attribution."""
import sys
import threading
import time
import weakref
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


_OPEN_BARS: weakref.WeakSet = weakref.WeakSet()   # TextBars with a bar on screen (the CLI ends them before an error line)


def close_open_bars() -> None:
    """End every text bar still drawn, so that what is printed next starts on its own line."""
    for bar in list(_OPEN_BARS):
        bar.close()


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
            _OPEN_BARS.add(self)
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
        _OPEN_BARS.discard(self)


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
    own (never decreasing) fraction, seconds since the first event and an estimate of those left
    (`note` says what the estimate assumes, e.g. that unlearning runs to its step cap)."""
    fraction: float
    stage: str
    stage_fraction: float
    elapsed: float
    remaining: Optional[float] = None
    note: str = ""

    def text(self) -> str:
        """'unlearning · overall 62 % · about 20 s left (estimate)'."""
        out = f"{self.stage} · overall {self.fraction:.0%}"
        if self.remaining is not None and self.fraction < 1.0:
            out += f" · about {format_seconds(self.remaining)} left" + (f" ({self.note})" if self.note else "")
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
    fraction (L_f against its stop value) can dip between steps, the overall never does.

    How long unlearning runs is not known in advance (it stops when L_f reaches its bound, or at the
    step cap). With `max_steps` given, unlearning events that carry their step count are measured
    instead: the time left is (expected steps − steps done) × the measured time per step, plus the
    unlearned-loss stage (its time in an earlier run, else in proportion to the weights), where the
    expected steps are an earlier run's count (`expected_steps`) or else the step cap — an upper
    bound, and the text says so. Otherwise the time left is extrapolated from the mean rate so far."""

    def __init__(self, weights: Optional[Dict[str, float]] = None, clock=time.monotonic,
                 max_steps: Optional[int] = None, expected_steps: Optional[int] = None,
                 stage_seconds: Optional[Dict[str, float]] = None):
        w = dict(DEFAULT_WEIGHTS if weights is None else weights)
        w = {k: max(0.0, float(w.get(k, 0.0))) for k in STAGES}
        total = sum(w.values()) or 1.0
        self.weights = {k: v / total for k, v in w.items()}
        self.clock = clock
        self.max_steps: Any = int(max_steps) if max_steps else None
        self.expected_steps: Optional[int] = int(expected_steps) if expected_steps else None
        self.stage_seconds = dict(stage_seconds or {})   # an earlier run's seconds per stage name
        self.t0: Optional[float] = None          # time of the first event
        self.f0 = 0.0           # overall fraction at the first event (stages served from the cache)
        self.fraction = 0.0
        self.stage = "starting"
        self.stage_fraction = 0.0
        self.note = ""
        self._index = -1
        self._stage_t0: Any = None              # when the current stage began
        self._step: Optional[int] = None        # the last unlearning step reported
        self._step_t0: Any = None               # (time, step) of the first unlearning event
        self._estimate: Any = None              # (time it was made, seconds left then) from the step model

    @classmethod
    def from_times(cls, stage_times: Optional[dict], clock=time.monotonic, max_steps: Optional[int] = None,
                   expected_steps: Optional[int] = None) -> "OverallProgress":
        """Weights from an earlier run's stage_times (seconds per stage); the defaults when absent."""
        w = {TIME_KEYS[k]: float(v) for k, v in (stage_times or {}).items() if k in TIME_KEYS and v is not None}
        useful = {k: v for k, v in w.items() if v > 0.5}   # a cached stage took ~0 s last time
        if sum(useful.values()) <= 0:
            return cls(clock=clock, max_steps=max_steps, expected_steps=expected_steps)
        return cls({k: useful.get(k, DEFAULT_WEIGHTS[k] * 0.05) for k in STAGES}, clock, max_steps, expected_steps,
                   stage_seconds=useful)

    def __call__(self, ev: ProgressEvent) -> Overall:
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        if ev.stage == "done":
            self.fraction, self.stage, self.stage_fraction = 1.0, "done", 1.0
            self._estimate = None
        elif ev.stage in STAGES:
            i = STAGES.index(ev.stage)
            if i > self._index:                    # a new stage: everything before it is done
                self._index, self.stage, self.stage_fraction = i, ev.stage, 0.0
                self._stage_t0 = now
            if i == self._index:
                frac = float(ev.fraction)
                if ev.stage == "unlearning" and self.max_steps and "step" in ev.info:
                    frac = self._unlearning_fraction(int(ev.info["step"]), now)
                self.stage_fraction = max(self.stage_fraction, frac)
            done = sum(self.weights[s] for s in STAGES[:self._index])
            f = done + self.weights[STAGES[self._index]] * self.stage_fraction
            if self.t0 == now and self.fraction == 0.0:
                self.f0 = done                     # skipped (cached) stages do not count as speed
            if self._estimate is not None and self.stage == "unlearned losses":
                self._estimate = self._losses_estimate(now)
            if self.max_steps and self.stage in ("unlearning", "unlearned losses"):
                # step mode: the weights guess the stages' lengths, the time model measures them
                f = self.fraction
                if self._estimate is not None:     # time-based: the fraction agrees with the time left
                    elapsed, left = now - self.t0, self._estimate[1]
                    f = elapsed / max(1e-9, elapsed + left)
            self.fraction = min(1.0, max(self.fraction, f))
        return Overall(self.fraction, self.stage, self.stage_fraction, now - self.t0, self.remaining(now), self.note)

    def _unlearning_fraction(self, step: int, now: float) -> float:
        """The unlearning stage's fraction from its step count, and the step model's time estimate."""
        if self._step_t0 is None:
            self._step_t0 = (now, step)
        self._step = step
        cap = self.max_steps
        expected = min(cap, self.expected_steps) if self.expected_steps else cap
        if step >= expected:           # past an earlier run's count: only the cap bounds it now
            expected = cap
        self.note = ("estimate, if unlearning runs to its step cap of %d" % cap) if expected == cap else "estimate"
        t_first, s_first = self._step_t0
        if step > s_first and now > t_first:
            per_step = (now - t_first) / (step - s_first)
            unl_left = max(0, expected - step) * per_step
            lu = self.stage_seconds.get("unlearned losses")
            if lu is None:   # in proportion to the weights, from the unlearning stage's expected length
                w_u, w_l = self.weights["unlearning"], self.weights["unlearned losses"]
                lu = expected * per_step * (w_l / w_u if w_u > 0 else 0.5)
            self._estimate = (now, unl_left + lu)
        return min(1.0, step / max(1, expected))

    def _losses_estimate(self, now: float):
        """In the unlearned-loss stage: its own rate once 5 % of it is done, else the earlier estimate."""
        f = self.stage_fraction
        if f >= 0.05 and now > self._stage_t0:
            self.note = "estimate"
            return now, (1.0 - f) * (now - self._stage_t0) / f
        return self._estimate

    def remaining(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left: from the step model during unlearning (see the class), else at the mean rate
        so far (None until 2 s and 3 % of progress have passed)."""
        if self.t0 is None:
            return None
        now = self.clock() if now is None else now
        if self.fraction >= 1.0:
            return 0.0
        if self._estimate is not None:
            made, left = self._estimate
            return max(0.0, left - (now - made))
        dt, df = now - self.t0, self.fraction - self.f0
        if dt < 2.0 or df < 0.03:
            return None
        return (1.0 - self.fraction) * dt / df


@dataclass
class BatchOverall:
    """Where a batch stands: items done (of count), the current item's overall progress, the batch's
    fraction (never decreasing) and the seconds left (an estimate: see BatchProgress)."""
    done: int
    count: int
    fraction: float
    elapsed: float
    remaining: Optional[float]
    item: Optional[Overall] = None
    note: str = ""

    def text(self) -> str:
        """'item 3 of 16 · unlearning · overall 14 % · about 9 min 10 s left (estimate)'."""
        cur = min(self.count, self.done + 1)
        out = f"item {cur} of {self.count}" + (f" · {self.item.stage}" if self.item is not None else "")
        out += f" · overall {int(self.fraction * 100)}%"     # floor: 99.9 % is not yet 100 %
        if self.remaining is not None and self.fraction < 1.0:
            out += f" · about {format_seconds(self.remaining)} left" + (f" ({self.note})" if self.note else "")
        return out


class BatchProgress:
    """Folds a batch's item events into one monotone fraction and a time-left estimate.

    The first item also pays for the shared stages (L_o, L_null) unless cached; every item pays for
    its unlearning and L_u. Once an item is finished, each remaining one is expected to take the mean
    of the finished items' own time (unlearning + L_u); before that, the current item's own estimate
    (OverallProgress: the step cap and the measured step time) stands for every item."""

    def __init__(self, count: int, clock=time.monotonic, **item_options):
        self.count, self.clock, self.item_options = int(count), clock, item_options
        self.t0: Optional[float] = None
        self.done = 0
        self.fraction = 0.0
        self.item: Any = None           # the current item's OverallProgress
        self._item_t0: Optional[float] = None   # when the current item's unlearning began
        self._own: list = []            # finished items' own seconds
        self._last: Any = None

    def start_item(self) -> None:
        self.item = OverallProgress(clock=self.clock, **self.item_options)
        self._item_t0, self._last = None, None

    def finish_item(self, own_seconds: Optional[float] = None, saved: bool = True) -> None:
        """An item ended (saved, or failed when `saved` is False); `own_seconds`: its unlearning + L_u."""
        self.done += 1
        if saved and own_seconds is not None and own_seconds > 0:
            self._own.append(float(own_seconds))
        self.item, self._last = None, None

    def __call__(self, ev: Optional[ProgressEvent] = None) -> BatchOverall:
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        o = None
        if ev is not None:
            if self.item is None:
                self.start_item()
            o = self.item(ev)
            if ev.stage == "unlearning" and self._item_t0 is None:
                self._item_t0 = now
            self._last = o
        elif self.item is not None and self._last is not None:
            o = self._last
        item_frac = o.fraction if o is not None and self.item is not None else 0.0
        f = (self.done + item_frac) / max(1, self.count)
        left, note = self._remaining(now, o)
        if left is not None:
            elapsed = now - self.t0
            f = max(f, min(0.999, elapsed / max(1e-9, elapsed + left))) if self.done < self.count else 1.0
        self.fraction = 1.0 if self.done >= self.count else min(0.999, max(self.fraction, f))
        return BatchOverall(self.done, self.count, self.fraction, now - self.t0, left, o, note)

    def _remaining(self, now, o):
        rest = self.count - self.done - (1 if self.item is not None else 0)
        if self.done >= self.count:
            return 0.0, ""
        cur_left = None
        if self.item is not None:
            cur_left = self.item.remaining(now)
        if self._own:
            per = sum(self._own) / len(self._own)
            if cur_left is None:
                cur_left = per * (1.0 - (o.fraction if o is not None else 0.0)) if self.item is not None else 0.0
            return cur_left + rest * per, "estimate"
        if cur_left is None or self._item_t0 is None:
            return None, ""
        per = (now - self._item_t0) + cur_left        # the current item's own expected length
        return cur_left + rest * per, self.item.note or "estimate"
