"""A bounded local cache of small repository objects (index files, set objects, trees).

`ObjectCache(directory, max_bytes)` keeps objects as files `<directory>/<kind>/<name>`, the
least recently used dropped first once their total size exceeds `max_bytes`. It is meant for
a daemon's state directory, one cache per repository (the repository's id names the
directory), so `sets`, `ls`, browsing and change detection do not fetch the same immutable
objects from an object store again. What always holds:
- the cache only ever holds objects that are immutable and named by their content (or, for
  sealed ones, by the content they authenticate): a name always means the same bytes;
- it is never trusted: `get` returns bytes that the caller must verify exactly as if they
  came from the repository (hash against the name, authentication of sealed bytes), and the
  caller drops (`drop`) an entry that fails and fetches the object again;
- objects are kept as the repository stores them (sealed in an encrypted repository), files
  0600 in directories 0700, each written to a temp file and renamed, so a reader sees a whole
  file or none (a torn file from a crash only fails verification);
- whether an object still exists in the repository is never answered here: index files and
  sets are read only under names the repository's listing gives now, and trees only when a
  listed set leads to them (see docs/format.md, "The local cache");
- the bound holds after every `put` (an object larger than the bound is not kept); several
  processes on one directory stay safe (renames are atomic, reads verified), only the bound
  is then approximate.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections import OrderedDict

KINDS = ("index", "sets", "trees")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
LATER_QUEUE = 512  # objects waiting for the background writer; more are not cached
DIR_MODE = 0o700
FILE_MODE = 0o600


def _valid(kind: str, name: str) -> bool:
    return kind in KINDS and bool(name) and all(c in "0123456789abcdef" for c in name) and len(name) <= 128


class ObjectCache:
    """See the module docstring. Thread-safe."""

    def __init__(self, directory: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = os.path.abspath(directory)
        self.max_bytes = max(0, int(max_bytes))
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], int] = OrderedDict()  # oldest first
        self.total = 0
        self.hits = 0
        self.misses = 0
        self.dropped = 0
        self._later: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue(LATER_QUEUE)
        self._writer: threading.Thread | None = None
        self._scan()

    def _path(self, kind: str, name: str) -> str:
        return os.path.join(self.directory, kind, name)

    def _scan(self) -> None:
        """Learn what an earlier run left, oldest first by modification time (hits touch it)."""
        found = []
        for kind in KINDS:
            d = os.path.join(self.directory, kind)
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for name in names:
                path = os.path.join(d, name)
                if name.startswith(".tmp-"):
                    _unlink(path)  # of a write that did not finish
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if _valid(kind, name):
                    found.append((st.st_mtime_ns, kind, name, st.st_size))
                else:
                    _unlink(path)
        for _, kind, name, size in sorted(found):
            self._entries[(kind, name)] = size
            self.total += size
        with self._lock:
            self._evict()

    def get(self, kind: str, name: str) -> bytes | None:
        """The cached bytes of an object, or None. Verify them before use (module docstring)."""
        if not _valid(kind, name) or self.max_bytes == 0:
            return None
        key = (kind, name)
        with self._lock:
            known = key in self._entries
        if not known:
            self.misses += 1
            return None
        path = self._path(kind, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.utime(path)  # recency survives a restart
        except OSError:
            self.drop(kind, name)
            self.misses += 1
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        self.hits += 1
        return data

    def put(self, kind: str, name: str, data: bytes) -> None:
        """Keep an object (already verified by the caller). Failures to write are ignored: the
        cache is an optimisation, never a place data must reach."""
        if not _valid(kind, name) or len(data) > self.max_bytes:
            return
        key = (kind, name)
        d = os.path.join(self.directory, kind)
        tmp = os.path.join(d, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
        try:
            os.makedirs(d, mode=DIR_MODE, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(tmp, self._path(kind, name))
        except OSError:
            _unlink(tmp)
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.total -= old
            self._entries[key] = len(data)
            self.total += len(data)
            self._evict()

    def put_later(self, kind: str, name: str, data: bytes) -> None:
        """`put` in a background thread, so a reader (a restore walking every tree) does not
        wait for the cache's file writes; when the writer falls behind the object is not kept."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="cache-writer", daemon=True)
                self._writer.start()
        try:
            self._later.put_nowait((kind, name, data))
        except queue.Full:
            pass

    def _write_loop(self) -> None:
        while True:
            item = self._later.get()
            if item is None:
                return
            self.put(*item)

    def close(self) -> None:
        """Finish the background writes."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._later.put(None)
            writer.join()

    def drop(self, kind: str, name: str) -> None:
        """Forget an object (it failed verification, or the repository no longer lists it)."""
        with self._lock:
            size = self._entries.pop((kind, name), None)
            if size is not None:
                self.total -= size
                self.dropped += 1
        if _valid(kind, name):
            _unlink(self._path(kind, name))

    def names(self, kind: str) -> list[str]:
        """The names of the cached objects of `kind`."""
        with self._lock:
            return [n for k, n in self._entries if k == kind]

    def keep_only(self, kind: str, listed: set[str]) -> None:
        """Drop cached objects of `kind` that the repository's listing no longer names."""
        for name in self.names(kind):
            if name not in listed:
                self.drop(kind, name)

    def _evict(self) -> None:
        while self.total > self.max_bytes and self._entries:
            (kind, name), size = self._entries.popitem(last=False)
            self.total -= size
            _unlink(self._path(kind, name))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
