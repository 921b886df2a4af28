"""A long call in a worker thread, streamed: its progress events applied as they come, a snapshot
yielded at most every `every` seconds, its result returned (or its error raised) in the caller's thread."""
import queue
import threading
from typing import Any, Callable, Generator


def stream_in_worker(work: Callable[[Callable], Any], apply: Callable[[Any], None], snapshot: Callable[[], Any],
                     cancel: threading.Event, name: str, every: float = 0.5) -> Generator[Any, None, Any]:
    """Run `work(put)` (it reports progress events with `put`) in a thread; `apply` each event, yield
    `snapshot()` while it runs; `result = yield from stream_in_worker(...)`. Closing the generator
    sets `cancel` and waits for the thread (at most 30 s), so nothing runs on unseen."""
    events: queue.Queue = queue.Queue()
    out: dict = {}

    def run():
        try:
            out["result"] = work(events.put)
        except BaseException as e:   # handed to the caller's thread
            out["error"] = e
        finally:
            events.put(None)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    try:
        done = False
        while not done:
            try:
                ev = events.get(timeout=every)
                while True:     # every event already queued, then one snapshot
                    if ev is None:
                        done = True
                        break
                    apply(ev)
                    ev = events.get_nowait()
            except queue.Empty:
                pass
            if not done:
                yield snapshot()
        if "error" in out:
            raise out["error"]
        return out["result"]
    finally:
        if t.is_alive():
            cancel.set()
            t.join(timeout=30)
