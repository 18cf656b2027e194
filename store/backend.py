"""Storage backends: where repository objects live.

A backend stores immutable objects under a few kinds ("config", "packs", "index", "sets",
"locks", "wal") by name. What always holds:
- `put` is atomic: a reader sees the whole object or none of it (the local backend writes a
  temp file, fsyncs it, renames it into place and fsyncs the directory);
- nothing above this interface relies on rename, so object stores fit behind it;
- `get` of a missing object raises NotFoundError, any I/O failure raises BackendError;
- packs never change once written, so the local backend keeps a few open for ranged reads
  (restores read thousands of small ranges) and closes a descriptor only when no read uses it.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

from cairn.fsio.durable import fsync_dir

from .errors import BackendError, NotFoundError

KINDS = ("config", "packs", "index", "sets", "locks", "wal")
OPEN_PACKS = 32  # pack descriptors a local backend keeps open for ranged reads


class Backend(Protocol):
    """The narrow interface the repository needs from storage."""

    def get(self, kind: str, name: str) -> bytes: ...
    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes: ...
    def put(self, kind: str, name: str, data: bytes) -> None: ...
    def list(self, kind: str) -> Iterator[str]: ...
    def delete(self, kind: str, name: str) -> None: ...
    def stat(self, kind: str, name: str) -> int: ...
    def location(self) -> str: ...


class _OpenPack:
    """A pack descriptor kept open by a local backend, with the number of reads using it."""

    __slots__ = ("fd", "users", "dropped")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.dropped = False


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise BackendError(f"unknown object kind '{kind}'")


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
            raise NotFoundError(f"unable to read {kind} object '{name}': not found") from None
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
            raise NotFoundError(f"unable to read {kind} object '{name}': not found") from None
        except OSError as e:
            raise BackendError(f"unable to open '{path}' for read: {e.strerror}") from e

    def _acquire(self, name: str) -> _OpenPack:
        """An open descriptor of pack `name`, kept for later reads (packs never change). A
        descriptor is closed only when no reader holds it, so it is never reused under one."""
        with self._fd_lock:
            handle = self._fds.get(name)
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
        if d in self._made:
            return
        os.makedirs(d, exist_ok=True)
        self._made.add(d)

    def put(self, kind: str, name: str, data: bytes) -> None:
        path = self._path(kind, name)
        self._forget_fd(kind, name)
        d = os.path.dirname(path)
        tmp = os.path.join(d, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
        try:
            self._ensure_dir(d)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            fsync_dir(d)
        except OSError as e:
            _unlink_quiet(tmp)
            raise BackendError(f"unable to write '{path}': {e.strerror or e}") from e

    def list(self, kind: str) -> Iterator[str]:
        _check_kind(kind)
        base = os.path.join(self.root, kind)
        dirs = [base]
        if kind == "packs":
            try:
                dirs = [os.path.join(base, d) for d in sorted(os.listdir(base))]
            except FileNotFoundError:
                return
        for d in dirs:
            try:
                names = sorted(os.listdir(d))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for n in names:
                if not n.startswith(".tmp-"):
                    yield n

    def delete(self, kind: str, name: str) -> None:
        path = self._path(kind, name)
        self._forget_fd(kind, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise NotFoundError(f"unable to delete {kind} object '{name}': not found") from None
        except OSError as e:
            raise BackendError(f"unable to delete '{path}': {e.strerror}") from e
        fsync_dir(os.path.dirname(path))

    def stat(self, kind: str, name: str) -> int:
        path = self._path(kind, name)
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            raise NotFoundError(f"{kind} object '{name}' not found") from None
        except OSError as e:
            raise BackendError(f"unable to stat '{path}': {e.strerror}") from e


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class MemoryBackend:
    """Objects in a dict: for unit tests and fault injection."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def location(self) -> str:
        return "memory:"

    def get(self, kind: str, name: str) -> bytes:
        _check_kind(kind)
        try:
            return self.objects[(kind, name)]
        except KeyError:
            raise NotFoundError(f"unable to read {kind} object '{name}': not found") from None

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        return self.get(kind, name)[offset:offset + length]

    def put(self, kind: str, name: str, data: bytes) -> None:
        _check_kind(kind)
        with self._lock:
            self.objects[(kind, name)] = bytes(data)

    def list(self, kind: str) -> Iterator[str]:
        _check_kind(kind)
        with self._lock:
            names = sorted(n for k, n in self.objects if k == kind)
        yield from names

    def delete(self, kind: str, name: str) -> None:
        _check_kind(kind)
        with self._lock:
            if self.objects.pop((kind, name), None) is None:
                raise NotFoundError(f"unable to delete {kind} object '{name}': not found")

    def stat(self, kind: str, name: str) -> int:
        return len(self.get(kind, name))
