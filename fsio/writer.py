"""Applying a restore stream to a target directory, safely.

What always holds:
- nothing is written outside the target: a path that is absolute, empty, has '.' or '..'
  components, or whose parent is not a directory this restore made or verified (for example
  a symlink restored earlier) is refused with a clear error and skipped;
- files are created with O_NOFOLLOW and, when overwriting, an existing entry is unlinked
  first, so a write never goes through a link;
- directory metadata (mode, owner, times, xattrs) is applied last, deepest first, so a
  read-only directory does not block its own contents;
- owners are restored only when running as root; holes are restored as holes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from cairn.errors import FailedPreconditionError, InvalidArgumentError

from .records import Data, EntryMeta, Failed, Hole, Record

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_SPARSE_BLOCK = 64 * 1024
_ZEROS = bytes(_SPARSE_BLOCK)


@dataclass
class WriteStats:
    """What a writer restored, and the per-entry problems it met."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


def prepare_target(target: str | bytes, overwrite: bool) -> bytes:
    """Create the target directory if needed; refuse a file, or a non-empty dir unless overwrite."""
    t = os.path.abspath(os.fsencode(target))
    try:
        st = os.stat(t)
    except FileNotFoundError:
        os.makedirs(t, exist_ok=True)
        return t
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgumentError(f"restore target '{os.fsdecode(t)}' is not a directory")
    if not overwrite and os.listdir(t):
        raise FailedPreconditionError(f"restore target '{os.fsdecode(t)}' is not empty",
                                      hint="choose an empty directory or pass --overwrite")
    return t


def check_rel(path: bytes) -> bytes:
    """Return a normalised safe relative path or raise InvalidArgumentError."""
    if not path or path.startswith(b"/") or b"\0" in path:
        raise InvalidArgumentError(f"refusing unsafe path '{os.fsdecode(path)}'")
    parts = path.split(b"/")
    if any(p in (b"", b".", b"..") for p in parts):
        raise InvalidArgumentError(f"refusing unsafe path '{os.fsdecode(path)}'")
    return path


class TreeWriter:
    """Writes records into `target`. Call apply() per record, then finish()."""

    def __init__(self, target: str | bytes, *, overwrite: bool = False, restore_owner: bool | None = None) -> None:
        self.root = prepare_target(target, overwrite)
        self.overwrite = overwrite
        self.owner = os.geteuid() == 0 if restore_owner is None else restore_owner
        self.stats = WriteStats()
        self._safe_dirs: set[bytes] = {b""}
        self._dir_meta: list[tuple[bytes, EntryMeta]] = []
        self._fd: int | None = None
        self._cur: EntryMeta | None = None
        self._cur_path = b""
        self._offset = 0

    # -- stream ----------------------------------------------------------------
    def apply(self, rec: Record) -> None:
        if isinstance(rec, EntryMeta):
            self._close_file()
            self._entry(rec)
        elif isinstance(rec, Data):
            self._data(rec.data)
        elif isinstance(rec, Hole):
            self._offset += rec.length
        elif isinstance(rec, Failed):
            self._fail(rec.message)

    def finish(self) -> WriteStats:
        self._close_file()
        for path, meta in sorted(self._dir_meta, key=lambda pm: pm[0].count(b"/"), reverse=True):
            self._guard(path, self._meta_dir, path, meta)
        self._dir_meta.clear()
        return self.stats

    # -- entries ---------------------------------------------------------------
    def _guard(self, path: bytes, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except (OSError, InvalidArgumentError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.stats.errors.append(f"unable to restore '{os.fsdecode(path)}': {msg}")
            return False

    def _entry(self, m: EntryMeta) -> None:
        self._guard(m.path, self._entry_unsafe, m)

    def _abs(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel

    def _parent_ok(self, rel: bytes) -> None:
        parent = rel.rpartition(b"/")[0]
        if parent in self._safe_dirs:
            return
        # Verify each component of a parent this restore did not create: real directories only.
        cur = b""
        for part in parent.split(b"/"):
            cur = cur + b"/" + part if cur else part
            if cur in self._safe_dirs:
                continue
            st = os.lstat(self._abs(cur))
            if not stat.S_ISDIR(st.st_mode):
                raise InvalidArgumentError(f"refusing to write through '{os.fsdecode(cur)}': not a directory")
            self._safe_dirs.add(cur)

    def _entry_unsafe(self, m: EntryMeta) -> None:
        rel = check_rel(m.path)
        self._parent_ok(rel)
        p = self._abs(rel)
        if m.kind == "dir":
            self._make_dir(p, rel, m)
            return
        self._clear(p)
        if m.kind == "file":
            self._fd = os.open(p, _FILE_FLAGS, 0o600)
            self._cur, self._cur_path, self._offset = m, rel, 0
        elif m.kind == "symlink":
            os.symlink(m.target, p)
            self._meta_link(p, m)
        elif m.kind == "hardlink":
            src_rel = check_rel(m.link_to)
            self._parent_ok(src_rel)  # the link source must not be reached through a symlink either
            src = self._abs(src_rel)
            if not stat.S_ISREG(os.lstat(src).st_mode):
                raise InvalidArgumentError(f"refusing to link to '{os.fsdecode(src_rel)}': not a regular file")
            os.link(src, p, follow_symlinks=False)
            self.stats.links += 1
        elif m.kind == "fifo":
            os.mkfifo(p, stat.S_IMODE(m.mode))
            self._meta_path(p, m)
        elif m.kind in ("chardev", "blockdev"):
            os.mknod(p, m.mode, m.rdev)
            self._meta_path(p, m)

    def _make_dir(self, p: bytes, rel: bytes, m: EntryMeta) -> None:
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode):
                if not self.overwrite:
                    raise
                os.unlink(p)
                os.mkdir(p, 0o700)
        self._safe_dirs.add(rel)
        self._dir_meta.append((rel, m))
        self.stats.dirs += 1

    def _clear(self, p: bytes) -> None:
        if not self.overwrite:
            return
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgumentError("a directory is in the way")
        os.unlink(p)

    # -- file content ------------------------------------------------------------
    def _data(self, data: bytes) -> None:
        if self._fd is None:
            return
        try:
            if self._cur is not None and self._cur.sparse:
                _write_sparse(self._fd, bytes(data), self._offset)
            else:
                _write_all(self._fd, memoryview(data), self._offset)
            self._offset += len(data)
            self.stats.bytes += len(data)
        except OSError as e:
            self._fail(f"write failed: {e.strerror}")

    def _fail(self, message: str) -> None:
        if self._cur is None:
            self.stats.errors.append(message)
            return
        path = self._cur_path
        os.close(self._fd)
        self._fd, self._cur = None, None
        try:
            os.unlink(self._abs(path))
        except OSError:
            pass
        self.stats.errors.append(f"unable to restore '{os.fsdecode(path)}': {message}")

    def _close_file(self) -> None:
        if self._fd is None:
            return
        fd, m, rel = self._fd, self._cur, self._cur_path
        self._fd, self._cur = None, None
        try:
            if self._offset != m.size or m.sparse:
                os.ftruncate(fd, m.size)
            if self.owner:
                os.fchown(fd, m.uid, m.gid)
            for k, v in m.xattrs.items():
                _setxattr(fd, k, v)
            os.fchmod(fd, stat.S_IMODE(m.mode))
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            self.stats.files += 1
        except OSError as e:
            self.stats.errors.append(f"unable to restore '{os.fsdecode(rel)}': {e.strerror}")
        finally:
            os.close(fd)

    # -- metadata --------------------------------------------------------------
    def _meta_path(self, p: bytes, m: EntryMeta) -> None:
        if self.owner:
            os.chown(p, m.uid, m.gid, follow_symlinks=False)
        for k, v in m.xattrs.items():
            _setxattr(p, k, v)
        os.chmod(p, stat.S_IMODE(m.mode))
        os.utime(p, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)

    def _meta_link(self, p: bytes, m: EntryMeta) -> None:
        if self.owner:
            os.chown(p, m.uid, m.gid, follow_symlinks=False)
        os.utime(p, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)
        self.stats.links += 1

    def _meta_dir(self, rel: bytes, m: EntryMeta) -> None:
        p = self._abs(rel)
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if self.owner:
                os.fchown(fd, m.uid, m.gid)
            for k, v in m.xattrs.items():
                _setxattr(fd, k, v)
            os.fchmod(fd, stat.S_IMODE(m.mode))
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)


def _write_all(fd: int, view: memoryview, off: int) -> None:
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _write_sparse(fd: int, data: bytes, off: int) -> None:
    """Write `data` at `off` but skip all-zero blocks: the file is fresh, so they stay holes."""
    start = None
    for i in range(0, len(data), _SPARSE_BLOCK):
        zero = data[i:i + _SPARSE_BLOCK] == _ZEROS[:min(_SPARSE_BLOCK, len(data) - i)]
        if zero and start is not None:
            _write_all(fd, memoryview(data)[start:i], off + start)
            start = None
        elif not zero and start is None:
            start = i
    if start is not None:
        _write_all(fd, memoryview(data)[start:], off + start)


def _setxattr(target: int | bytes, name: bytes, value: bytes) -> None:
    try:
        os.setxattr(target, name, value)
    except OSError as e:
        if not name.startswith(b"user.") and e.errno in (1, 95):  # EPERM, EOPNOTSUPP on system namespaces
            return
        raise
