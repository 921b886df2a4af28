"""A small in-memory LRU memo bounded by entries and bytes, whose entries made by a failed request
are dropped again."""
import contextlib


def nbytes(value) -> int:
    """Bytes held by a numpy array, a torch tensor or an object whose fields are such (a NoiseSet)."""
    if hasattr(value, "nbytes") and not callable(value.nbytes):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.element_size() * value.numel())
    fields_ = getattr(value, "__dict__", None)
    return sum(nbytes(v) for v in fields_.values()) if isinstance(fields_, dict) else 0


class BoundedMemo:
    """A small in-memory LRU memo: at most `max_entries` entries and `max_bytes` bytes (the most
    recently used entry is always kept, however large, so that a request can reuse what it just made).

    `request()` is a context manager for one request: entries added inside it are dropped again when
    the request fails (an exception, cancellation included), so a failed oversized request leaves
    nothing behind."""

    def __init__(self, max_entries: int = 4, max_bytes: int = 1 << 30):
        import threading
        from collections import OrderedDict
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self._local = threading.local()    # the keys added by the request running in this thread

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __getitem__(self, key):
        with self._lock:
            value = self._items[key][0]
            self._items.move_to_end(key)
            return value

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._items[key] = (value, nbytes(value))
            self._items.move_to_end(key)
            added = getattr(self._local, "added", None)
            if added is not None:
                added.append(key)
            self._evict()

    def pop(self, key, default=None):
        with self._lock:
            item = self._items.pop(key, None)
        return default if item is None else item[0]

    def total_bytes(self) -> int:
        with self._lock:
            return sum(b for _, b in self._items.values())

    def _evict(self) -> None:
        while len(self._items) > 1 and (len(self._items) > self.max_entries or self.total_bytes() > self.max_bytes):
            self._items.popitem(last=False)

    @contextlib.contextmanager
    def request(self):
        outer = getattr(self._local, "added", None)
        mine: list = []
        self._local.added = mine
        try:
            yield self
        except BaseException:
            for key in mine:
                self.pop(key)
            raise
        finally:
            self._local.added = outer
            if outer is not None:
                outer.extend(mine)
