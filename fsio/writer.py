"""Applying a restore stream to a target directory, safely.

What always holds:
- nothing is written outside the target: a path that is absolute, empty, or has '.' or '..'
  components is refused; every entry is made, changed or removed through a descriptor of its
  parent opened at that moment without following any link (fsio/beneath.py), so a parent
  that is not a real directory of the target (a symlink restored earlier, or one another user
  swapped in while the restore runs) is refused with a clear error and the entry skipped;
- files are created with O_NOFOLLOW and, when overwriting, an existing entry is unlinked
  first, so a write never goes through a link;
- directory metadata (mode, owner, times, xattrs) is applied last, deepest first, so a
  read-only directory does not block its own contents;
- owners are restored only when running as root; holes are restored as holes;
- an entry gets the set's xattrs and no others: where it may inherit an ACL from a default
  ACL of the directory it is made in (the target has one, or --overwrite writes into existing
  directories), the ACLs the set does not give it are removed again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cairn.errors import FailedPreconditionError, InvalidArgumentError

from .beneath import Beneath
from .names import shown
from .records import Data, EntryMeta, Failed, Hole, LaneData, LaneEnd, LaneGauge, Notice, Record

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_SPARSE_BLOCK = 64 * 1024
_ZEROS = bytes(_SPARSE_BLOCK)


@dataclass
class WriteStats:
    """What a writer restored, and the per-entry problems it met."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0  # content of the files restored whole (a file that failed counts none)
    xattrs_skipped: int = 0  # extended attributes not set: outside user.* when not root, or none held here
    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # about entries restored all the same (records.Notice)


def prepare_target(target: str | bytes, overwrite: bool) -> bytes:
    """Create the target directory if needed; refuse a file, or a non-empty dir unless overwrite."""
    t = os.path.abspath(os.fsencode(target))
    try:
        st = os.stat(t)
    except FileNotFoundError:
        os.makedirs(t, exist_ok=True)
        return t
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgumentError(f"restore target '{shown(t)}' is not a directory")
    if not overwrite and os.listdir(t):
        raise FailedPreconditionError(f"restore target '{shown(t)}' is not empty",
                                      hint="choose an empty directory, mend it with --delta (only what differs "
                                           "is written), or pass --overwrite")
    return t


def check_rel(path: bytes) -> bytes:
    """Return a normalised safe relative path or raise InvalidArgumentError."""
    if not path or path.startswith(b"/") or b"\0" in path:
        raise InvalidArgumentError(f"refusing unsafe path '{shown(path)}'")
    parts = path.split(b"/")
    if b"" in parts or b"." in parts or b".." in parts:  # (no generator: once per restored entry)
        raise InvalidArgumentError(f"refusing unsafe path '{shown(path)}'")
    return path


class TreeWriter:
    """Writes records into `target`. Call apply() per record, then finish()."""

    def __init__(self, target: str | bytes, *, overwrite: bool = False, restore_owner: bool | None = None) -> None:
        self.root = prepare_target(target, overwrite)
        self.overwrite = overwrite
        # entries made here may inherit ACLs the set does not give them (a default ACL of the
        # target, or of an existing directory written into): each one's xattrs are pruned
        self.inherit = overwrite or _has_default_acl(self.root)
        self.owner = os.geteuid() == 0 if restore_owner is None else restore_owner
        self.stats = WriteStats()
        self.beneath = Beneath(self.root)
        self._dir_meta: list[tuple[bytes, EntryMeta]] = []
        self._fd: int | None = None
        self._cur: EntryMeta | None = None
        self._cur_path = b""
        self._offset = 0
        self._open_lanes: dict[bytes, tuple] = {}  # lane path -> (fd, meta, path, offset)
        self._written: dict[bytes, int] = {}  # bytes written per open file: counted once it is complete

    # -- stream ----------------------------------------------------------------
    def apply(self, rec: Record) -> None:
        if isinstance(rec, EntryMeta):
            self._close_file()
            if rec.kind == "hardlink" and rec.link_to in self._open_lanes:
                self._lane_end(rec.link_to, "the restore stream linked to it before its content ended")
            self._entry(rec)
            if rec.lane and self._cur is not None:  # its content comes as LaneData: set it aside
                self._open_lanes[self._cur_path] = (self._fd, self._cur, self._cur_path, 0)
                self._fd, self._cur = None, None
        elif isinstance(rec, Data):
            self._data(rec.data)
        elif isinstance(rec, Hole):
            self._offset += rec.length
        elif isinstance(rec, Failed):
            self._fail(rec.message)
        elif isinstance(rec, Notice):
            self.stats.notices.append(rec.message)
        elif isinstance(rec, LaneData):
            if rec.path in self._open_lanes:
                with self._lane(rec.path) as alive:
                    if alive:
                        self._data(rec.data)
            else:
                self._stray(rec.path)
        elif isinstance(rec, LaneEnd):
            self._lane_end(rec.path, rec.failed)

    def _stray(self, path: bytes) -> None:
        """Lane content for no open lane: a producer's error. The file it names is not trusted:
        removed if this restore made it, and reported (once)."""
        msg = f"unable to restore '{shown(path)}': its content came for no open file"
        if msg in self.stats.errors:
            return
        if path == self._cur_path and self._cur is not None:
            self._fail("its content came for no open file")  # reports it
        else:
            self.stats.errors.append(msg)

    @contextlib.contextmanager
    def _lane(self, path: bytes):
        """Make lane `path` the open file for a moment (it is set aside again unless it ended)."""
        saved = (self._fd, self._cur, self._cur_path, self._offset)
        self._fd, self._cur, self._cur_path, self._offset = self._open_lanes.pop(path)
        try:
            yield self._cur is not None
        finally:
            if self._cur is not None:
                self._open_lanes[path] = (self._fd, self._cur, self._cur_path, self._offset)
            self._fd, self._cur, self._cur_path, self._offset = saved

    def _lane_end(self, path: bytes, failed: str) -> None:
        if path not in self._open_lanes:
            return
        with self._lane(path):
            if failed:
                self._fail(failed)
            else:
                self._close_file()

    def settle(self) -> None:
        """Complete every file the stream has given so far (a lane still open is ended as failed):
        what follows is written after all of it. The stream may go on."""
        self._close_file()
        for path in list(self._open_lanes):
            self._lane_end(path, "the restore stream ended before the file's content")

    def finish(self) -> WriteStats:
        self._close_file()
        for path in list(self._open_lanes):
            self._lane_end(path, "the restore stream ended before the file's content")
        for path, meta in sorted(self._dir_meta, key=lambda pm: pm[0].count(b"/"), reverse=True):
            self._guard(path, self._meta_dir, path, meta)
        self._dir_meta.clear()
        self.beneath.close()
        return self.stats

    # -- entries ---------------------------------------------------------------
    def _guard(self, path: bytes, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except (OSError, InvalidArgumentError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.stats.errors.append(f"unable to restore '{shown(path) or '.'}': {msg}")
            return False

    def _entry(self, m: EntryMeta) -> None:
        if m.path == b"" and m.kind == "dir":  # the set's root: the target itself, its metadata last
            self._dir_meta.append((b"", m))
            return
        self._guard(m.path, self._entry_unsafe, m)

    def _entry_unsafe(self, m: EntryMeta) -> None:
        rel = check_rel(m.path)
        with self.beneath.parent(rel) as (pfd, name):
            if m.kind == "dir":
                self._make_dir(pfd, name, rel, m)
                return
            self._clear(pfd, name)
            if m.kind == "file":
                self._fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
                self._cur, self._cur_path, self._offset = m, rel, 0
            elif m.kind == "symlink":
                os.symlink(m.target, name, dir_fd=pfd)
                self._meta_link(pfd, name, m)
            elif m.kind == "hardlink":
                src_rel = check_rel(m.link_to)
                with self.beneath.parent(src_rel) as (sfd, src):  # nor is the source reached through a link
                    try:
                        st = os.stat(src, dir_fd=sfd, follow_symlinks=False)
                    except FileNotFoundError:  # its own failure is reported already: say why this one follows
                        raise InvalidArgumentError(f"not linked: the file it is a hard link of, "
                                                   f"'{shown(src_rel)}', was not restored") from None
                    if not stat.S_ISREG(st.st_mode):
                        raise InvalidArgumentError(f"refusing to link to '{shown(src_rel)}': not a regular file")
                    os.link(src, name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
                self.stats.links += 1
            elif m.kind == "fifo":
                os.mkfifo(name, stat.S_IMODE(m.mode), dir_fd=pfd)
                self._meta_path(pfd, name, m)
            elif m.kind in ("chardev", "blockdev"):
                os.mknod(name, m.mode, m.rdev, dir_fd=pfd)
                self._meta_path(pfd, name, m)

    def _make_dir(self, pfd: int, name: bytes, rel: bytes, m: EntryMeta) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                if not self.overwrite:
                    raise
                os.unlink(name, dir_fd=pfd)
                os.mkdir(name, 0o700, dir_fd=pfd)
        self._dir_meta.append((rel, m))
        self.stats.dirs += 1

    def _clear(self, pfd: int, name: bytes) -> None:
        if not self.overwrite:
            return
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgumentError("a directory is in the way")
        os.unlink(name, dir_fd=pfd)

    def _unlink(self, rel: bytes) -> None:
        """Remove the file this restore made at `rel` (it failed); quietly, as best it can."""
        with contextlib.suppress(OSError, InvalidArgumentError), self.beneath.parent(rel) as (pfd, name):
            os.unlink(name, dir_fd=pfd)

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
            self._written[self._cur_path] = self._written.get(self._cur_path, 0) + len(data)
        except OSError as e:
            self._fail(f"write failed: {e.strerror}")

    def _fail(self, message: str) -> None:
        if self._cur is None:
            self.stats.errors.append(message)
            return
        path = self._cur_path
        os.close(self._fd)
        self._fd, self._cur = None, None
        self._written.pop(path, None)
        self._unlink(path)
        self.stats.errors.append(f"unable to restore '{shown(path)}': {message}")

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
            if self.inherit:
                _drop_inherited(fd, m)
            for k, v in xattr_order(m.xattrs):
                self.stats.xattrs_skipped += not _setxattr(fd, k, v)
            os.fchmod(fd, stat.S_IMODE(m.mode))
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            self.stats.files += 1
            self.stats.bytes += self._written.pop(rel, 0)  # a file that failed counts no bytes either
        except OSError as e:
            self.stats.errors.append(f"unable to restore '{shown(rel)}': {e.strerror}")
        finally:
            os.close(fd)

    # -- metadata --------------------------------------------------------------
    def _meta_path(self, pfd: int, name: bytes, m: EntryMeta) -> None:
        self.stats.xattrs_skipped += set_meta_at(pfd, name, m, self.owner, prune_xattrs=self.inherit)

    def _meta_link(self, pfd: int, name: bytes, m: EntryMeta) -> None:
        self.stats.xattrs_skipped += set_link_meta_at(pfd, name, m, self.owner)
        self.stats.links += 1

    def _meta_dir(self, rel: bytes, m: EntryMeta) -> None:
        self.stats.xattrs_skipped += apply_dir_meta(self.beneath, rel, m, self.owner, prune_xattrs=self.inherit)


def set_link_meta_at(pfd: int, name: bytes, m: EntryMeta, owner: bool, prune_xattrs: bool = False) -> int:
    """Owner (when `owner`), xattrs and mtime of the symlink `name` in directory `pfd`, never of
    what it points to (a link has no mode of its own); with `prune_xattrs` (a delta) those it has
    and the set does not are removed. How many xattrs it was not allowed to set."""
    skipped = 0
    if owner:
        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
    if m.xattrs or prune_xattrs:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:  # /proc/self/fd of an O_PATH descriptor of the link: the link itself, not its target
            proc = b"/proc/self/fd/%d" % fd
            if prune_xattrs:
                for k in [os.fsencode(n) for n in os.listxattr(proc)]:
                    if k not in m.xattrs and owner:
                        os.removexattr(proc, k)
            for k, v in xattr_order(m.xattrs):
                skipped += not _setxattr(proc, k, v)
        finally:
            os.close(fd)
    os.utime(name, ns=(m.mtime_ns, m.mtime_ns), dir_fd=pfd, follow_symlinks=False)
    return skipped


def set_meta_at(pfd: int, name: bytes, m: EntryMeta, owner: bool, prune_xattrs: bool = False) -> int:
    """Owner (when `owner`), xattrs, mode and mtime of the special file (fifo, device) `name` in
    directory `pfd`, never through a link; with `prune_xattrs` (a delta, or a restore whose entries
    may inherit ACLs) those it has and the set does not are removed (only the names settable_xattr
    allows). How many xattrs it was not allowed to set."""
    if owner:
        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        # through /proc: the very inode just made, not a path again
        skipped = _set_xattrs(b"/proc/self/fd/%d" % fd, m, owner, prune_xattrs)
    finally:
        os.close(fd)
    os.chmod(name, stat.S_IMODE(m.mode), dir_fd=pfd, follow_symlinks=False)
    os.utime(name, ns=(m.mtime_ns, m.mtime_ns), dir_fd=pfd, follow_symlinks=False)
    return skipped


def apply_dir_meta(beneath: Beneath, rel: bytes, m: EntryMeta, owner: bool, prune_xattrs: bool = False) -> int:
    """Owner (when `owner`), xattrs, mode and mtime of directory `rel` of the target (b"": the
    target itself), reached without following a link (a directory's metadata is applied last,
    after its entries). The directory is not opened for reading (one that is 0300 or 0100 is
    set all the same); its xattrs go through /proc on an O_PATH descriptor of it. With
    `prune_xattrs` (a delta, or a restore whose entries may inherit ACLs) the xattrs it has and
    the set does not are removed (only user.* and ACLs when not `owner`: settable_xattr).
    Returns how many extended attributes it was not allowed to set."""
    with beneath.parent(rel) if rel else contextlib.nullcontext((beneath.fd, b".")) as (pfd, name):
        if owner:
            os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            # this very directory, whatever its path now
            skipped = _set_xattrs(b"/proc/self/fd/%d" % fd, m, owner, prune_xattrs)
        finally:
            os.close(fd)
        os.chmod(name, stat.S_IMODE(m.mode), dir_fd=pfd, follow_symlinks=False)
        os.utime(name, ns=(m.mtime_ns, m.mtime_ns), dir_fd=pfd, follow_symlinks=False)
    return skipped


def _set_xattrs(proc: bytes, m: EntryMeta, owner: bool, prune: bool) -> int:
    """Give the inode behind `proc` (a /proc/self/fd path) the xattrs of `m`, first removing
    those it has and `m` has not when `prune` (only the names settable_xattr allows). Returns
    how many it was not allowed to set."""
    if prune:
        for k in [os.fsencode(n) for n in os.listxattr(proc)]:
            if k not in m.xattrs and settable_xattr(k, owner):
                os.removexattr(proc, k)
    return sum(not _setxattr(proc, k, v) for k, v in xattr_order(m.xattrs))


def _write_all(fd: int, view: memoryview, off: int) -> None:
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _write_sparse(fd: int, data: bytes, off: int) -> None:
    """Write `data` at `off` but skip all-zero blocks: the file is fresh, so they stay holes."""
    start = None
    for i in range(0, len(data), _SPARSE_BLOCK):
        end = min(i + _SPARSE_BLOCK, len(data))
        # most blocks hold data at their first, middle or last byte: no copy, no scan for those
        zero = not (data[i] or data[end - 1] or data[(i + end) // 2]) and data[i:end] == _ZEROS[:end - i]
        if zero and start is not None:
            _write_all(fd, memoryview(data)[start:i], off + start)
            start = None
        elif not zero and start is None:
            start = i
    if start is not None:
        _write_all(fd, memoryview(data)[start:], off + start)


def settable_xattr(name: bytes, owner: bool) -> bool:
    """Whether a restore can set (and so compares and removes) extended attribute `name`: any
    as root (`owner`); otherwise user.* and the POSIX ACLs (system.posix_acl_*), which the
    owner of a file may set, as the restore's own files are."""
    return owner or name.startswith((b"user.", b"system.posix_acl_"))


_ACLS = (b"system.posix_acl_access", b"system.posix_acl_default")


def _has_default_acl(path: bytes) -> bool:
    """Whether directory `path` has a default ACL, which entries made in it inherit."""
    try:
        os.getxattr(path, _ACLS[1])
        return True
    except OSError:
        return False


def _drop_inherited(fd: int, m: EntryMeta) -> None:
    """Remove from the file open as `fd` the ACLs it inherited and the set does not give it."""
    for name in _ACLS:
        if name not in m.xattrs:
            with contextlib.suppress(OSError):  # none there (ENODATA), or not this process's to remove
                os.removexattr(fd, name)


def xattr_order(xattrs: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """`xattrs` in the order a restore sets them: the POSIX ACLs (system.posix_acl_*) last. An
    access ACL sets the owner's bits of the mode, and one that gives the owner no write
    permission would make every attribute set after it refused to an owner that is not root
    (setting user.* needs write access to the file), failing the entry."""
    return sorted(xattrs.items(), key=lambda kv: kv[0].startswith(b"system.posix_acl_"))


def _setxattr(target: int | bytes, name: bytes, value: bytes) -> bool:
    """Set one extended attribute; False when it cannot be set here (a trusted., security. or
    system. attribute without the privilege, or a file system that holds no extended attributes,
    or none of that namespace, as vfat, exFAT, ramfs and some network ones): the caller counts
    those for the restore's report, and the entry is restored without it, as tar and cp -a do
    (its content is never given up for an attribute). Any other failure raises."""
    try:
        os.setxattr(target, name, value)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP or (e.errno == errno.EPERM and not name.startswith(b"user.")):
            return False
        raise
    return True


STREAM_FROM = 1 << 20  # a file with this much content waiting goes to the pool before its end
GROUP_FILES = 32  # small files handed to the pool as one task (fewer hand-overs between threads)
GROUP_BYTES = 4 << 20


class _OpenFile:
    """A file of a ParallelTreeWriter that the pool creates, writes and finalizes."""

    __slots__ = ("fd", "meta", "rel", "lane", "queue", "queued", "end", "running", "closed", "error", "done",
                 "written")
    # `done` is a plain flag under the writer's lock, waited on with the writer's `_settled`
    # condition: a threading.Event per file cost 8 us to make (a Condition and its lock each).

    def __init__(self, meta: EntryMeta, rel: bytes) -> None:
        self.fd: int | None = None  # opened by the pool, before its first write
        self.meta, self.rel, self.lane = meta, rel, meta.lane
        self.queue: deque[tuple[bytes, int]] = deque()  # (data, offset) waiting for the pool
        self.queued = 0  # bytes in the queue
        self.end = 0  # the end of the content given so far
        self.running = False  # a pool thread is working on it (one at a time per file)
        self.closed = False  # the stream moved past this file: finalize after the last write
        self.error = ""  # the first failure: the file is removed and reported, never counted
        self.done = False  # finalized: complete, or removed and reported
        self.written = 0  # bytes written: counted in the stats once the file is complete


class ParallelTreeWriter(TreeWriter):
    """A TreeWriter whose files are created, written and finalized by a pool of threads: several
    files at once, each file's writes in order by one thread at a time. (Writing ranges of one
    file from several threads gains nothing: a buffered write holds the file's inode lock, so
    the writers queue on it, and spinning on that lock cost twice the CPU of one writer when
    measured.) It also takes lanes (fsio.records): a large file's content interleaved with the
    rest of the stream, so that its serial writes overlap everything else.

    Everything TreeWriter guarantees still holds: paths are checked, directories made, parents
    verified and links and special files created in stream order by the caller's thread exactly
    as TreeWriter does; a regular file is then created by the pool (O_NOFOLLOW, an existing entry
    unlinked first when overwriting) in a directory that already exists, and written, and its own
    metadata (size, owner, xattrs, mode, times) applied after its last write. A small file goes
    to the pool once the stream has moved past it, with up to GROUP_FILES others in one task (a
    hand-over between threads per file cost more than writing it); a file with STREAM_FROM
    bytes waiting, or a lane, is written while its content still comes. In addition:
    - at most `max_pending` bytes of content wait for the pool; the caller blocks beyond that;
    - a file that cannot be created or written (or whose stream reports a failure) is removed and
      named in stats.errors; it is never counted in stats.files, so no partial file is reported
      restored; nor is a lane the stream never ended;
    - a hardlink waits until its source file is complete (and is refused if that failed);
    - finish() waits for every file before directory metadata is applied; abort() (after the
      caller's own failure) waits too, and removes every file not completed.
    """

    def __init__(self, target: str | bytes, *, overwrite: bool = False, restore_owner: bool | None = None,
                 workers: int = 4, max_pending: int = 64 << 20, lanes: LaneGauge | None = None) -> None:
        super().__init__(target, overwrite=overwrite, restore_owner=restore_owner)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="restore-write")
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._settled = threading.Condition(self._lock)  # a file was finalized (_OpenFile.done)
        self._inflight = 0
        self._max_pending = max_pending
        self._gauge = lanes if lanes is not None else LaneGauge()
        self._job: _OpenFile | None = None
        self._jobs: dict[bytes, _OpenFile] = {}  # files not yet finalized, by path
        self._lanes: dict[bytes, list] = {}  # open lanes: path -> [job, next offset]
        self._ready: list[_OpenFile] = []  # complete small files not handed to the pool yet
        self._ready_bytes = 0

    # -- stream ----------------------------------------------------------------
    def apply(self, rec: Record) -> None:
        if isinstance(rec, Data):
            job = self._job
            if job is not None:
                self._enqueue(job, rec.data, self._offset)
            self._offset += len(rec.data)
        elif isinstance(rec, LaneData):
            lane = self._lanes.get(rec.path)
            if lane is not None:
                self._enqueue(lane[0], rec.data, lane[1])
                lane[1] += len(rec.data)
            else:
                self._stray(rec.path)
        elif isinstance(rec, EntryMeta):
            self._close_file()
            if rec.kind == "file":
                self._file(rec)
                return
            if rec.kind == "hardlink":
                self._await_source(rec.link_to)
            self._entry(rec)
        elif isinstance(rec, Hole):
            self._offset += rec.length
        elif isinstance(rec, LaneEnd):
            lane = self._lanes.pop(rec.path, None)
            if lane is not None:
                self._end(lane[0], rec.failed)
        elif isinstance(rec, Notice):
            self.stats.notices.append(rec.message)
        elif isinstance(rec, Failed):
            job = self._job
            if job is None:
                self.stats.errors.append(rec.message)
                return
            with self._lock:
                if not job.error:
                    job.error = rec.message

    def settle(self) -> None:
        """Wait until every file the stream has given so far is complete: written and finalized, or
        removed and named in stats.errors (a lane still open is ended as failed). The stream may go
        on; what follows is written after all of it."""
        self._close_file()
        for path in list(self._lanes):
            self._end(self._lanes.pop(path)[0], "the restore stream ended before the file's content")
        self._flush_ready()
        with self._settled:
            jobs = list(self._jobs.values())
            for job in jobs:
                while not job.done:
                    self._settled.wait()

    def finish(self) -> WriteStats:
        self._close_file()
        for path in list(self._lanes):
            self._end(self._lanes.pop(path)[0], "the restore stream ended before the file's content")
        self._flush_ready()
        self._pool.shutdown(wait=True)
        return super().finish()

    def abort(self) -> None:
        """After a failure of the caller: wait for the pool, remove files not completed."""
        open_jobs = [self._job] if self._job is not None else []
        open_jobs += [lane[0] for lane in self._lanes.values()]
        self._job = None
        self._lanes.clear()
        for job in open_jobs:
            self._end(job, "the restore stopped")
        group, self._ready, self._ready_bytes = self._ready, [], 0
        self._run_group(group)  # files whose content all came are written (the failed ones removed)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left = list(self._jobs.values())
            self._jobs.clear()
        for j in left:  # a cancelled task never ran: finalize (remove) those files here
            if not j.done:
                j.error = j.error or "the restore stopped"
                self._finalize(j)
        self.beneath.close()

    # -- files -----------------------------------------------------------------
    def _file(self, m: EntryMeta) -> None:
        """Check a regular file's path here, in stream order; create and write it in the pool (its
        parent is reached there, when the file is created)."""
        rel = m.path
        if not self._guard(rel, lambda: check_rel(rel)):
            return
        job = _OpenFile(m, rel)
        with self._lock:
            self._jobs[rel] = job
        if m.lane:
            self._lanes[rel] = [job, 0]
        else:
            self._job, self._offset = job, 0

    def _enqueue(self, job: _OpenFile, data: bytes, off: int) -> None:
        """Queue content of `job`. A file goes to the pool once STREAM_FROM bytes of it wait (a
        lane at once); a smaller one when the stream has moved past it, in a group of files."""
        n = len(data)
        if self._ready and self._inflight + n > self._max_pending:
            self._flush_ready()  # what waits in the group counts against the bound: never wait on it
        with self._room:
            while self._inflight > 0 and self._inflight + n > self._max_pending:
                self._room.wait()
            self._inflight += n
            if job.lane:
                self._gauge.add(job.rel, n)
            job.queue.append((data, off))
            job.queued += n
            job.end = max(job.end, off + n)
            start = not job.running and (job.lane or job.queued >= STREAM_FROM)
            if start:
                job.running = True
        if start:
            self._pool.submit(self._drain, job)

    def _flush_ready(self) -> None:
        if self._ready:
            group, self._ready, self._ready_bytes = self._ready, [], 0
            self._pool.submit(self._run_group, group)

    def _run_group(self, group: list[_OpenFile]) -> None:
        for job in group:
            self._drain(job)

    def _drain(self, job: _OpenFile) -> None:
        """Create the file if not yet done, then write its queued content in order until the
        queue is empty; the file is finalized here when the stream has moved past it."""
        if job.fd is None and not job.error:
            try:
                with self.beneath.parent(job.rel) as (pfd, name):
                    self._clear(pfd, name)
                    job.fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
            except (OSError, InvalidArgumentError) as e:
                with self._lock:
                    job.error = job.error or (e.strerror if isinstance(e, OSError) and e.strerror else str(e))
        while True:
            with self._room:
                if not job.queue:
                    job.running = False
                    last = job.closed
                    break
                data, off = job.queue.popleft()
                job.queued -= len(data)
                skip = bool(job.error)
            err = ""
            if not skip:
                try:
                    if job.meta.sparse:
                        _write_sparse(job.fd, bytes(data), off)
                    else:
                        _write_all(job.fd, memoryview(data), off)
                except OSError as e:
                    err = f"write failed: {e.strerror}"
                    with contextlib.suppress(OSError):  # the file is removed when the stream passes it;
                        os.ftruncate(job.fd, 0)  # its room (a full disk) is for the files after it now
            with self._room:
                self._inflight -= len(data)
                if job.lane:
                    self._gauge.add(job.rel, -len(data))
                self._room.notify_all()
                if err and not job.error:
                    job.error = err
                elif not skip and not err:
                    job.written += len(data)
        if last:
            self._finalize(job)

    def _close_file(self) -> None:
        job = self._job
        if job is None:
            return
        self._job = None
        self._end(job, "")

    def _end(self, job: _OpenFile, failed: str) -> None:
        """The stream is done with `job` (with `failed`, it failed): finalize it after its last write."""
        with self._lock:
            if failed and not job.error:
                job.error = failed
            job.closed = True
            idle = not job.running
            job.running = True  # if idle, claimed here: it goes to the pool with a group
        if idle:  # created, written and finalized by the pool, with other small files
            self._ready.append(job)
            self._ready_bytes += job.queued
            if len(self._ready) >= GROUP_FILES or self._ready_bytes >= GROUP_BYTES:
                self._flush_ready()

    def _finalize(self, job: _OpenFile) -> None:
        m = job.meta
        skipped = 0
        try:
            if job.error:
                if job.fd is not None:  # only what this restore created is removed
                    self._unlink(job.rel)
                msg = f"unable to restore '{shown(job.rel)}': {job.error}"
            else:
                msg = ""
                try:
                    if job.end != m.size or m.sparse:  # the size, and a trailing hole (ext4 charges
                        os.ftruncate(job.fd, m.size)  # for a truncate even to the same size)
                    if self.owner:
                        os.fchown(job.fd, m.uid, m.gid)
                    if self.inherit:
                        _drop_inherited(job.fd, m)
                    for k, v in xattr_order(m.xattrs):
                        skipped += not _setxattr(job.fd, k, v)
                    os.fchmod(job.fd, stat.S_IMODE(m.mode))
                    os.utime(job.fd, ns=(m.mtime_ns, m.mtime_ns))
                except OSError as e:
                    msg = f"unable to restore '{shown(job.rel)}': {e.strerror}"
        finally:
            if job.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(job.fd)
            with self._lock:
                self.stats.xattrs_skipped += skipped
                if msg:
                    self.stats.errors.append(msg)
                else:
                    self.stats.files += 1
                    self.stats.bytes += job.written
                if self._jobs.get(job.rel) is job:
                    del self._jobs[job.rel]
                job.done = True
                self._settled.notify_all()

    def _stray(self, path: bytes) -> None:
        job = self._job
        if job is not None and job.rel == path:  # the open file's content came as a lane: not trusted
            with self._lock:
                job.error = job.error or "its content came for no open file"  # reported when finalized
            return
        super()._stray(path)

    def _await_source(self, link_to: bytes) -> None:
        lane = self._lanes.pop(link_to, None)
        if lane is not None:  # a producer must end a lane before linking to it; refuse the file
            self._end(lane[0], "the restore stream linked to it before its content ended")
        with self._lock:
            job = self._jobs.get(link_to)
        if job is not None:
            self._flush_ready()
            with self._settled:
                while not job.done:
                    self._settled.wait()
