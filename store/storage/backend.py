"""Storage backends: where repository objects live.

A backend stores immutable objects under a few kinds ("config", "packs", "index", "sets",
"locks", "wal") by name. What always holds:
- `put` is atomic: a reader sees the whole object or none of it (the local backend writes a
  temp file, fsyncs it, renames it into place and fsyncs the directory; a directory it
  creates is fsynced in its parent; directories are 0700 and files 0600);
- temp files of interrupted local writes are named `.tmp-<name>-<pid>-<host tag>-<random>`,
  never listed, and removed by `sweep_temp` once their writer is gone or they are old;
- nothing above this interface relies on rename, so object stores fit behind it;
- `get` of a missing object raises NotFoundError, any I/O failure raises BackendError;
- `put_if_absent` creates an object only if none of that name exists and says whether this
  call created it (local: the temp file is hard-linked into place, which fails if the name
  exists; memory: under its lock); an existing object is left as it was;
- `list` yields the names of one kind, sorted; `list_info` yields the same objects with their
  size and last-modified time (seconds since the epoch);
- packs never change once written, so the local backend keeps a few open for ranged reads
  (restores read thousands of small ranges) and closes a descriptor only when no read uses it;
  a kept descriptor serves a read only while the pack's path still names its file (a pack
  deleted or replaced by hand is read as it is now);
- the local backend never makes a repository out of a directory without one: it creates the
  root or a kind's directory (other than `config` and `keys`, which init writes first) only
  beside an existing `config/config`, and lists a missing kind's directory as empty only then.
  A repository disk unmounted under a running daemon is "unable to write ... (is its file
  system mounted?)", never a new config-less repository on the bare mount point.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import blake3
from cairn.fsio.durable import fsync_dir, write_synced

from ..errors import BackendError, NotFoundError, short

KINDS = ("config", "packs", "index", "sets", "locks", "wal", "keys", "gc")
OPEN_PACKS = 32  # pack descriptors a local backend keeps open for ranged reads
DIR_MODE = 0o700  # repository directories and files are private: they hold every backed-up path
FILE_MODE = 0o600
TEMP_MAX_AGE = 6 * 3600  # a temp file not written for this long belongs to no write in progress
HOST_TAG = blake3.blake3(socket.gethostname().encode()).hexdigest()[:8]


class ObjectInfo(NamedTuple):
    """One listed object: its name, size in bytes and last-modified time (epoch seconds)."""

    name: str
    size: int
    time: float


class Backend(Protocol):
    """The narrow interface the repository needs from storage."""

    def get(self, kind: str, name: str) -> bytes: ...
    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes: ...
    def put(self, kind: str, name: str, data: bytes) -> None: ...
    def put_if_absent(self, kind: str, name: str, data: bytes) -> bool: ...
    def list(self, kind: str) -> Iterator[str]: ...
    def list_info(self, kind: str) -> Iterator[ObjectInfo]: ...
    def delete(self, kind: str, name: str) -> None: ...
    def stat(self, kind: str, name: str) -> int: ...
    def location(self) -> str: ...


class _OpenPack:
    """A pack descriptor kept open by a local backend, with the number of reads using it."""

    __slots__ = ("fd", "users", "dropped", "file")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.file = (st.st_dev, st.st_ino)  # which file it is: a pack replaced at its path is another
        self.users = 0
        self.dropped = False


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise BackendError(f"unknown object kind '{kind}'")


SETUP_KINDS = ("config", "keys")  # written by init before the config: their directories may be made first


_HEX_ID = re.compile(r"[0-9a-f]{32,}")  # ids and keys; not WAL file names (24 hex digits)


def shown_id(name: str) -> str:
    """An object's name as messages give it: an id (hex) in its short form 'ab12cd34..', any
    other name (a lock's, a WAL file's) whole."""
    return short(name) if _HEX_ID.fullmatch(name) else name


class LocalBackend:
    """A repository in a local directory. Packs are fanned out by the first two hex digits."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._made: set[str] = set()
        self._fds: OrderedDict[str, _OpenPack] = OrderedDict()  # open packs for ranged reads
        self._fd_lock = threading.Lock()

    def location(self) -> str:
        return self.root

    def _dir(self, kind: str, name: str) -> str:
        _check_kind(kind)
        if kind == "packs":
            return os.path.join(self.root, kind, name[:2])
        return os.path.join(self.root, kind)

    def _path(self, kind: str, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise BackendError(f"invalid object name '{name}'")
        return os.path.join(self._dir(kind, name), name)

    def get(self, kind: str, name: str) -> bytes:
        path = self._path(kind, name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFoundError(f"unable to read {kind} object '{shown_id(name)}': not found") from None
        except IsADirectoryError:
            raise BackendError(f"unable to read '{path}': a directory is where an object belongs",
                               hint="move it out of the repository (nothing Cairn writes is a directory "
                                    "there)") from None
        except OSError as e:
            raise BackendError(f"unable to read '{path}': {e.strerror}") from e

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        path = self._path(kind, name)
        if kind != "packs":
            fd = self._open(kind, name, path)
            try:
                return self._pread(fd, path, offset, length)
            finally:
                os.close(fd)
        handle = self._acquire(name)
        try:
            return self._pread(handle.fd, path, offset, length)
        finally:
            self._release(handle)

    @staticmethod
    def _pread(fd: int, path: str, offset: int, length: int) -> bytes:
        try:
            return os.pread(fd, length, offset)
        except OSError as e:
            raise BackendError(f"unable to read '{path}': {e.strerror}") from e

    @staticmethod
    def _open(kind: str, name: str, path: str) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"unable to read {kind} object '{shown_id(name)}': not found") from None
        except OSError as e:
            raise BackendError(f"unable to open '{path}' for read: {e.strerror}") from e

    def _acquire(self, name: str) -> _OpenPack:
        """An open descriptor of pack `name`, kept for later reads (packs never change). A
        descriptor is closed only when no reader holds it, so it is never reused under one.

        A kept descriptor is used only while the path still names its file: a pack deleted or
        put back by hand (an operator replacing a damaged pack with a good copy) is read as the
        directory holds it now, as verify reads it, not as it was when first opened."""
        path = self._path("packs", name)
        try:
            st = os.stat(path)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            now = None  # gone: reopening says how
        with self._fd_lock:
            handle = self._fds.get(name)
            if handle is not None and handle.file != now:
                self._drop(self._fds.pop(name))
                handle = None
            if handle is None:
                handle = _OpenPack(self._open("packs", name, self._path("packs", name)))
                self._fds[name] = handle
                self._evict()
            self._fds.move_to_end(name)
            handle.users += 1
            return handle

    def _release(self, handle: _OpenPack) -> None:
        with self._fd_lock:
            handle.users -= 1
            if handle.users == 0 and handle.dropped:
                os.close(handle.fd)

    def _evict(self) -> None:
        while len(self._fds) > OPEN_PACKS:
            self._drop(self._fds.popitem(last=False)[1])

    @staticmethod
    def _drop(handle: _OpenPack) -> None:
        handle.dropped = True
        if handle.users == 0:
            os.close(handle.fd)

    def _forget_fd(self, kind: str, name: str) -> None:
        if kind == "packs":
            with self._fd_lock:
                handle = self._fds.pop(name, None)
                if handle is not None:
                    self._drop(handle)

    def close(self) -> None:
        """Close the descriptors kept open for reads."""
        with self._fd_lock:
            for handle in self._fds.values():
                self._drop(handle)
            self._fds.clear()

    def _ensure_dir(self, d: str) -> None:
        """Create `d` and missing parents, private (0700), each made durable in its parent; the
        root or a kind's directory only while the repository's config exists (module docstring)."""
        if d in self._made:
            return
        missing = []
        p = d
        while not os.path.isdir(p):
            missing.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        top = [q for q in missing if q == self.root or os.path.dirname(q) == self.root]
        if top and not all(os.path.basename(q) in SETUP_KINDS for q in top if q != self.root):
            self._require_config(d)
        for p in reversed(missing):
            try:
                os.mkdir(p, DIR_MODE)
            except FileExistsError:
                pass  # made by a concurrent writer: sync its entry anyway, that writer may die first
            fsync_dir(os.path.dirname(p))
        self._made.add(d)

    def sweep_temp(self, max_age: float = TEMP_MAX_AGE) -> int:
        """Remove temporary files that interrupted writes left; returns how many.

        A temp file is removed when the process that wrote it is known to be gone (this host,
        pid not alive) or when it was last written more than `max_age` seconds ago. A write in
        progress keeps its temp file fresh (it writes, then fsyncs and renames at once), so a
        concurrent writer's temp file is never removed."""
        removed = 0
        now = time.time()
        dirs = [os.path.join(self.root, k) for k in KINDS]
        try:
            dirs += [os.path.join(self.root, "packs", d) for d in os.listdir(os.path.join(self.root, "packs"))]
        except OSError:
            pass
        for d in dirs:
            try:
                names = [n for n in os.listdir(d) if n.startswith(".tmp-")]
            except OSError:
                continue
            for n in names:
                path = os.path.join(d, n)
                try:
                    age = now - os.lstat(path).st_mtime
                except OSError:
                    continue
                if age > max_age or _writer_gone(n):
                    try:
                        os.unlink(path)
                        removed += 1
                    except OSError:
                        pass
        return removed

    def put(self, kind: str, name: str, data: bytes) -> None:
        path = self._path(kind, name)
        self._forget_fd(kind, name)
        d = os.path.dirname(path)
        tmp = os.path.join(d, f".tmp-{name}-{os.getpid()}-{HOST_TAG}-{uuid.uuid4().hex[:8]}")
        try:
            self._ensure_dir(d)
            write_synced(tmp, data, FILE_MODE)
            os.rename(tmp, path)
            fsync_dir(d)
        except OSError as e:
            _unlink_quiet(tmp)
            raise BackendError(f"unable to write '{path}': {e.strerror or e}") from e

    def put_if_absent(self, kind: str, name: str, data: bytes) -> bool:
        """Create the object only if none exists: the temp file (written and fsynced as by put)
        is hard-linked into place, which the file system refuses atomically when the name is
        taken. True if this call created the object."""
        path = self._path(kind, name)
        d = os.path.dirname(path)
        tmp = os.path.join(d, f".tmp-{name}-{os.getpid()}-{HOST_TAG}-{uuid.uuid4().hex[:8]}")
        try:
            self._ensure_dir(d)
            if os.path.lexists(path):
                return False
            write_synced(tmp, data, FILE_MODE)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            fsync_dir(d)
            return True
        except OSError as e:
            raise BackendError(f"unable to write '{path}': {e.strerror or e}") from e
        finally:
            _unlink_quiet(tmp)

    def list_info(self, kind: str) -> Iterator[ObjectInfo]:
        for name in self.list(kind):
            try:
                st = os.stat(self._path(kind, name))
            except FileNotFoundError:  # deleted since the listing
                continue
            except OSError as e:
                raise BackendError(f"unable to stat '{self._path(kind, name)}': {e.strerror}") from e
            yield ObjectInfo(name, st.st_size, st.st_mtime)

    def _require_config(self, where: str) -> None:
        """Refuse to create `where` (or to call a missing directory empty) in a directory that
        holds no repository: the repository's file system is probably not mounted."""
        if not os.path.isfile(os.path.join(self.root, "config", "config")):
            raise BackendError(f"unable to use '{where}': '{self.root}' holds no repository config (is its file "
                               "system mounted?)")

    def list(self, kind: str) -> Iterator[str]:
        _check_kind(kind)
        base = os.path.join(self.root, kind)
        dirs = [base]
        if kind == "packs":
            try:
                dirs = [os.path.join(base, d) for d in sorted(os.listdir(base))]
            except FileNotFoundError:
                self._require_config(base)
                return
            except OSError as e:
                raise BackendError(f"unable to list '{base}': {e.strerror}") from e
        for d in dirs:
            try:
                names = sorted(os.listdir(d))
            except (FileNotFoundError, NotADirectoryError):
                if d == base and kind not in SETUP_KINDS:
                    self._require_config(base)
                continue
            except OSError as e:  # never a partial listing: gc would take the missing packs for gone
                raise BackendError(f"unable to list '{d}': {e.strerror}") from e
            for n in names:
                if not n.startswith(".tmp-"):
                    yield n

    def delete(self, kind: str, name: str) -> None:
        path = self._path(kind, name)
        self._forget_fd(kind, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise NotFoundError(f"unable to delete {kind} object '{shown_id(name)}': not found") from None
        except OSError as e:
            raise BackendError(f"unable to delete '{path}': {e.strerror}") from e
        fsync_dir(os.path.dirname(path))

    def stat(self, kind: str, name: str) -> int:
        path = self._path(kind, name)
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            raise NotFoundError(f"{kind} object '{shown_id(name)}' not found") from None
        except OSError as e:
            raise BackendError(f"unable to stat '{path}': {e.strerror}") from e


_TEMP = re.compile(r"^\.tmp-.+-(\d+)-([0-9a-f]{8})-[0-9a-f]{8}$")


def _writer_gone(temp_name: str) -> bool:
    """True when the temp file's writer ran on this host and its process no longer exists."""
    m = _TEMP.match(temp_name)
    if m is None or m.group(2) != HOST_TAG:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class MemoryBackend:
    """Objects in a dict: for unit tests and fault injection."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.times: dict[tuple[str, str], float] = {}  # when each object was last written
        self._lock = threading.Lock()

    def location(self) -> str:
        return "memory:"

    def get(self, kind: str, name: str) -> bytes:
        _check_kind(kind)
        try:
            return self.objects[(kind, name)]
        except KeyError:
            raise NotFoundError(f"unable to read {kind} object '{shown_id(name)}': not found") from None

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        return self.get(kind, name)[offset:offset + length]

    def put(self, kind: str, name: str, data: bytes) -> None:
        _check_kind(kind)
        with self._lock:
            self.objects[(kind, name)] = bytes(data)
            self.times[(kind, name)] = time.time()

    def put_if_absent(self, kind: str, name: str, data: bytes) -> bool:
        _check_kind(kind)
        with self._lock:
            if (kind, name) in self.objects:
                return False
            self.objects[(kind, name)] = bytes(data)
            self.times[(kind, name)] = time.time()
            return True

    def list(self, kind: str) -> Iterator[str]:
        _check_kind(kind)
        with self._lock:
            names = sorted(n for k, n in self.objects if k == kind)
        yield from names

    def list_info(self, kind: str) -> Iterator[ObjectInfo]:
        _check_kind(kind)
        with self._lock:
            found = sorted(ObjectInfo(n, len(data), self.times.get((k, n), 0.0))
                           for (k, n), data in self.objects.items() if k == kind)
        yield from found

    def delete(self, kind: str, name: str) -> None:
        _check_kind(kind)
        with self._lock:
            self.times.pop((kind, name), None)
            if self.objects.pop((kind, name), None) is None:
                raise NotFoundError(f"unable to delete {kind} object '{shown_id(name)}': not found")

    def stat(self, kind: str, name: str) -> int:
        return len(self.get(kind, name))
