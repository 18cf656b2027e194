"""What a handle opened with a write-only key keeps and refuses.

A write-only key (store/content/crypto.py WriteOnlyKey) opens no set, tree or WAL entry another writer
sealed, so the host keeps the plaintext of what it needs itself, in a `HostCache` (in its state
directory: directories 0700, files 0600, each written to a temp file, fsynced and renamed):
- the set objects it committed (as committed: the repository only holds them sealed),
- the trees of those sets (change detection compares against the base set's trees; only the
  trees reachable from the newest cached set of each source and its attachments are kept),
- the WAL catalog entries it pushed (a retried push of the same content is a no-op).
A cached record is written *before* the object it mirrors, so a crash leaves at most a record
of an object that does not exist: listings intersect with the repository's own listing. A tree
record damaged on disk (it does not decode, or not to its id) is dropped when met: a backup then
reads that directory from the source again instead of failing on it for good. A record
that cannot be written (a full state directory) or a cache directory that cannot be made is
one BackendError naming it and the reason (its OSError kept as the cause), and leaves no temp
file; directories a full file system does not let it make when it is opened are made by the
first record written, and hold no record until then. One process uses a cache at a time (the
daemon holds its state directory's lock), so temp files found when it is opened are leftovers
of a killed write and removed.

`GuardedBackend` wraps the handle's (sealed) backend: it reads sets and WAL entries from the
cache, refuses to read another writer's (WriteOnlyKeyError) and refuses every delete except of
this handle's own lock objects and of index files it wrote itself (a write session's rescue
rewrites those). The software refusing is not a guarantee against a hostile host: on an object
store the credentials of write-only hosts should be denied DeleteObject (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from collections.abc import Callable, Iterator

from ..content.crypto import ASK_FULL_KEY, WriteOnlyKeyError, write_only_refusal
from ..errors import BackendError, CorruptionError, short
from ..storage.backend import Backend
from .trees import decode_tree

KINDS = ("sets", "trees", "wal")
TREE_GRACE = 24 * 3600.0  # cached trees younger than this stay (a backup running may need them)
WAL_KEEP = 7 * 24 * 3600.0  # cached WAL entries (for retried pushes) are forgotten after this
WAL_SWEEP_EVERY = 256  # pushes between two sweeps of old WAL records
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
# The commands a hint may name that a write-only key cannot run: they read what other writers
# sealed, delete, or manage keys.
_FULL_KEY_COMMAND = re.compile(r"'cairn (?:repair|verify|prune|restore|restore-db|unlock|copy|key add|key remove)"
                               r"(?: [^']*)?'")


def full_key_hint(hint: str | None) -> str | None:
    """`hint` as a write-only host must read it. The store's hints name the commands that inspect
    or repair the repository ('cairn verify', 'cairn repair index'), which this host cannot run:
    a hint that says to run one asks a host with a full key to run it, and any other hint naming
    some says to ask such a host to run them. A hint naming none, or asking such a host already,
    is returned unchanged."""
    if not hint or ASK_FULL_KEY in hint:  # addressed to such a host already (a write-only refusal)
        return hint
    found = _FULL_KEY_COMMAND.search(hint)
    if found is None:
        return hint
    if hint[:found.start()].endswith("run "):
        head = hint[:found.start() - len("run ")]
        return f"{head}{ASK_FULL_KEY} (this host's key is write-only) to run {hint[found.start():]}"
    named = list(dict.fromkeys(m.group(0) for m in _FULL_KEY_COMMAND.finditer(hint)))
    return f"{hint} ({ASK_FULL_KEY} to run {' and '.join(named)}: this host's key is write-only)"


class HostCache:
    """Plaintext records of this host's own sets, trees and WAL entries (see module doc).
    `path` None keeps them in memory (store tests, a handle without a state directory)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._mem: dict[str, dict[str, bytes]] = {k: {} for k in KINDS}
        self._mem_time: dict[tuple[str, str], float] = {}  # in-memory trees: when last stored
        self._lock = threading.Lock()
        self._made = path is None
        if path is not None:
            try:
                self._make()
            except BackendError as exc:
                if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno not in NO_ROOM:
                    raise
                # a full state directory: the records are read as none, and the first put makes
                # the directories (the daemon refuses this host's backups until there is room)

    def _make(self) -> None:
        """Make the directories (0700) and remove the temp files of writes killed midway."""
        assert self.path is not None
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            os.chmod(self.path, 0o700)
            for kind in KINDS:
                os.makedirs(os.path.join(self.path, kind), mode=0o700, exist_ok=True)
                for leftover in os.listdir(os.path.join(self.path, kind)):
                    if ".tmp-" in leftover:
                        os.unlink(os.path.join(self.path, kind, leftover))
        except OSError as exc:
            where = os.fsdecode(exc.filename) if exc.filename is not None else self.path
            raise BackendError(f"unable to prepare the write-only host's records in '{where}': "
                               f"{exc.strerror or exc}") from exc
        self._made = True

    def _file(self, kind: str, name: str) -> str:
        assert self.path is not None
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad cache name {name!r}")
        return os.path.join(self.path, kind, name)

    def put(self, kind: str, name: str, data: bytes, *, durable: bool = True) -> None:
        """Store a record. Trees are content-addressed and checked when read, so they are
        written without fsync (`durable=False`); one already there with the same bytes only has
        its time renewed (one damaged on disk is written again)."""
        if self.path is None:
            with self._lock:
                self._mem[kind][name] = bytes(data)
                self._mem_time[(kind, name)] = time.time()
            return
        if not self._made:
            self._make()
        final = self._file(kind, name)
        if not durable:
            try:
                if os.stat(final).st_size == len(data):
                    with open(final, "rb") as f:
                        same = f.read() == data
                    if same:
                        os.utime(final)
                        return
            except FileNotFoundError:
                pass
        tmp = f"{final}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            if durable:
                dfd = os.open(os.path.dirname(final), os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:  # a full state directory: one line naming the record, no temp file left
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise BackendError(f"unable to write '{final}': {exc.strerror or exc}") from exc

    def age(self, kind: str, name: str) -> float:
        """Seconds since a record was last stored (0 when unknown)."""
        if self.path is None:
            return time.time() - self._mem_time.get((kind, name), time.time())
        try:
            return time.time() - os.stat(self._file(kind, name)).st_mtime
        except (FileNotFoundError, ValueError):
            return 0.0

    def get(self, kind: str, name: str) -> bytes | None:
        if self.path is None:
            with self._lock:
                return self._mem[kind].get(name)
        try:
            with open(self._file(kind, name), "rb") as f:
                return f.read()
        except (FileNotFoundError, ValueError):
            return None

    def names(self, kind: str) -> list[str]:
        if self.path is None:
            with self._lock:
                return list(self._mem[kind])
        try:
            return [n for n in os.listdir(os.path.join(self.path, kind)) if ".tmp-" not in n]
        except FileNotFoundError:
            if self._made:
                raise
            return []  # not made yet (a full state directory at start): no record

    def remove(self, kind: str, name: str) -> None:
        if self.path is None:
            with self._lock:
                self._mem[kind].pop(name, None)
            return
        try:
            os.unlink(self._file(kind, name))
        except FileNotFoundError:
            pass

    def expire(self, kind: str, older_than: float) -> int:
        """Forget records of `kind` stored more than `older_than` seconds ago."""
        gone = [n for n in self.names(kind) if self.age(kind, n) > older_than]
        for n in gone:
            self.remove(kind, n)
        return len(gone)

    def keep_trees_of(self, roots: list[bytes], younger_than: float | None = None) -> int:
        """Forget every cached tree not reachable from `roots` and not stored in the last
        `younger_than` seconds (a session in progress stores trees no set names yet); returns
        how many went."""
        grace = TREE_GRACE if younger_than is None else younger_than
        keep: set[str] = set()
        todo = [r.hex() for r in roots]
        while todo:
            tid = todo.pop()
            if tid in keep:
                continue
            data = self.get("trees", tid)
            if data is None:
                continue
            try:
                entries = decode_tree(bytes.fromhex(tid), data)
            except CorruptionError:  # damaged in the state directory: dropped, never followed
                self.remove("trees", tid)
                continue
            keep.add(tid)
            todo += [e.subtree.hex() for e in entries if e.subtree]
        gone = [n for n in self.names("trees") if n not in keep and self.age("trees", n) > grace]
        for n in gone:
            self.remove("trees", n)
        return len(gone)


class GuardedBackend:
    """The backend of a write-only handle (see module doc)."""

    def __init__(self, inner: Backend, cache: HostCache) -> None:
        self.inner = inner
        self.cache = cache
        self._own: set[tuple[str, str]] = set()  # (kind, name) of locks and index files written here
        self._own_lock = threading.Lock()
        self._wal_puts = 0
        self.after_set: Callable[[str], None] | None = None  # told when one of this host's sets is stored

    def get(self, kind: str, name: str) -> bytes:
        if kind in ("sets", "wal"):
            data = self.cache.get(kind, name)
            if data is not None:
                return data
            self.inner.stat(kind, name)  # NotFoundError when absent
            what = "set" if kind == "sets" else "WAL entry"
            raise WriteOnlyKeyError(f"unable to read {what} '{short(name)}': another host wrote it and this "
                                    "host's repository key is write-only")
        return self.inner.get(kind, name)

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(kind, name, offset, length)

    def put(self, kind: str, name: str, data: bytes) -> None:
        self._before_put(kind, name, data)
        self.inner.put(kind, name, data)
        if kind == "sets" and self.after_set is not None:
            self.after_set(name)

    def put_if_absent(self, kind: str, name: str, data: bytes) -> bool:
        self._before_put(kind, name, data)
        return self.inner.put_if_absent(kind, name, data)  # type: ignore[attr-defined]

    def _before_put(self, kind: str, name: str, data: bytes) -> None:
        if kind in ("sets", "wal"):
            self.cache.put(kind, name, data)  # before the object: a crash leaves a record, never a gap
            if kind == "wal":
                self._wal_puts += 1
                if self._wal_puts % WAL_SWEEP_EVERY == 0:
                    self.cache.expire("wal", WAL_KEEP)
        elif kind in ("locks", "index"):
            with self._own_lock:
                self._own.add((kind, name))

    def list(self, kind: str) -> Iterator[str]:
        return self.inner.list(kind)

    def delete(self, kind: str, name: str) -> None:
        with self._own_lock:
            own = (kind, name) in self._own
        if not own:
            raise write_only_refusal(f"to delete {kind} object '{short(name)}'")
        self.inner.delete(kind, name)
        with self._own_lock:
            self._own.discard((kind, name))

    def stat(self, kind: str, name: str) -> int:
        return self.inner.stat(kind, name)

    def location(self) -> str:
        return self.inner.location()

    def __getattr__(self, attr: str):  # sweep_temp, close, list_with_times, ...: the inner backend's
        return getattr(self.inner, attr)
