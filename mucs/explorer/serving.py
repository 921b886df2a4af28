"""Serving a run's files and views to many clients at once (issue 21, point 12): every file handed to
a client is immutable once written (content-addressed, written beside and renamed into place, never
rewritten or truncated), a file is sent from the inode that was opened (so its Content-Length is
the size of the bytes sent, even when a run folder is replaced mid-request), and a run's views are
kept per run until its files change."""
import collections
import hashlib
import io
import mimetypes
import os
import stat
import threading
from typing import Callable, Hashable, Optional

from ..cache import atomic_write

CHUNK = 256 << 10
# shown in the browser; anything else is sent as a download (no HTML or script of a run folder runs)
INLINE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "text/csv", "text/plain", "application/json")


def content_file(folder: str, data: bytes, name: str) -> str:
    """`folder`/<sha256 of data>/`name` holding `data`: written to a temporary file and renamed into
    place when missing (or cut short by a crash), never rewritten in place, so a client reading it
    while another request asks for the same content never sees it truncated. Returns the path."""
    sub = os.path.join(folder, hashlib.sha256(data).hexdigest()[:40])
    path = os.path.join(sub, name)
    try:
        if os.stat(path).st_size == len(data):
            return path
    except OSError:
        pass
    atomic_write(path, data)   # the project's one writer: its temporary file is tagged for the leftovers cleanup
    return path


def png_file(folder: str, image) -> str:
    """A PIL image as an immutable content-addressed PNG in `folder` (see content_file)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return content_file(folder, buf.getvalue(), "image.png")


class Views:
    """A small thread-safe LRU of a run's computed views, keyed by the run and its files' stamp
    (RunStore.stamp): a run whose files change is computed afresh."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._items: "collections.OrderedDict[Hashable, object]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()   # outside the lock: two requests may build the same view, neither waits
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


def open_regular(path: str) -> Optional[tuple]:
    """(fd, stat) of the regular file at `path`, opened without following a final symlink and without
    waiting on a FIFO; None when it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


async def send_file(scope, send, path: str) -> bool:
    """Answer the HTTP request `scope` with the file at `path` (ASGI): its length from the opened
    file itself and its bytes read from that same file, so a run folder replaced by rename while it
    is sent changes nothing in this answer. False (nothing sent) when `path` is not a regular file."""
    import asyncio
    opened = open_regular(path)
    if opened is None and not os.path.lexists(path):
        # a run folder between the two renames of its replacement: wait for the swap (its lock), read the new one
        from ..cache import recover_for_reading
        await asyncio.to_thread(recover_for_reading, os.path.dirname(path))
        opened = open_regular(path)
    if opened is None:
        return False
    fd, st = opened
    try:
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        disposition = "inline" if kind in INLINE_TYPES else "attachment"
        if disposition == "attachment":
            kind = "application/octet-stream"
        name = os.path.basename(path).encode("ascii", "replace").decode().replace('"', "")
        headers = [(b"content-type", kind.encode()), (b"content-length", str(st.st_size).encode()),
                   (b"content-disposition", f'{disposition}; filename="{name}"'.encode()),
                   (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return True
        offset = 0
        while offset < st.st_size:
            chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, st.st_size - offset), offset)
            if not chunk:
                break   # the inode itself was cut short (not by this project's writers): the client sees a short body
            offset += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": offset < st.st_size})
        if offset < st.st_size or st.st_size == 0:
            await send({"type": "http.response.body", "body": b""})
        return True
    finally:
        os.close(fd)
