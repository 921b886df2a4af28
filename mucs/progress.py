"""One progress interface for the CLI (a text bar) and the app (live plots)."""
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

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
    """A progress callback drawing one bar per stage on stderr (used by the CLI)."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self.stage, self.last = None, 0.0

    def __call__(self, ev: ProgressEvent):
        now = time.monotonic()
        if ev.stage != self.stage:
            if self.stage is not None:
                self.stream.write("\n")
            self.stage, self.last = ev.stage, 0.0
        elif ev.fraction < 1.0 and now - self.last < 0.2:
            return
        self.last = now
        filled = int(ev.fraction * self.width)
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.info.items())
        self.stream.write(f"\r{ev.stage:<18} [{'#' * filled}{'.' * (self.width - filled)}] {ev.fraction:6.1%} {extra}   ")
        self.stream.flush()

    def close(self):
        if self.stage is not None:
            self.stream.write("\n")
            self.stream.flush()
