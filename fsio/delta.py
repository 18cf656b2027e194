"""Delta restore and verification: compare a tree on disk with a set's manifest, then mend it.

A manifest is the list of `EntryMeta` of a restore (pre-order, a directory before its
contents; the set's root, path b"", first when the set records it) in which each file carries
its chunk ids and sizes. `plan()` reads the target and says what differs: entries missing or
of the wrong kind, file chunks whose content (blake3 of the bytes at the chunk's range, keyed
with `id_key` in an encrypted repository) is not the chunk's id, lengths, metadata (mode,
times, owner when root, xattrs, link targets, device numbers) and, when asked, extra entries
the set does not hold. Nothing is written while planning, so the same plan serves --dry-run
and --verify (a dry run then counts what a delta writes of sparse files from their chunks'
content, `count_sparse_writes`). `DeltaWriter` then mends the tree: wrong entries are removed and made again,
existing files are opened in place (never through a link) and only the chunks that differ
are written (the caller fetches their content), a file made anew is written under a new
temporary name and renamed into place once complete, zeros of a file the set holds sparse
stay holes, then lengths and metadata are set, extras removed, and directory metadata
applied deepest first.

What always holds: nothing outside the target is touched or read — every change goes through
a descriptor of the entry's parent reached without following links at the moment of use
(fsio/beneath.py), every read of the plan (stat, listing, xattrs, link target, content)
through a descriptor of its parent reached the same way (`_Target` keeps the last ones), never
a path from the root: a link swapped into the target redirects neither, and the tree may be
nested deeper than PATH_MAX; files are opened with O_NOFOLLOW; a file whose inode is shared
with another path (several hard links that the set does not link there) is replaced, not
written in place, so no other path changes; a file made anew never appears at its place empty or partial, and
its temporary name never takes over an entry already there, and a delta that stops anywhere
(an error, a cancellation, KeyboardInterrupt) removes every temporary file it made. One that is
killed (SIGKILL, a crash, the power) cannot: the next delta into the target finds what it left
(regular files named TEMP_PREFIX and 24 hex digits, names only a delta makes) and removes them,
with or without `delete`, since they are never anyone's data. A file or directory this
process owns but may not write is given its owner's write permission while it is mended (a
client that is not root and a tree with read-only directories), and the set's mode after; a
tree it removes has the directories it owns opened up first (`remove_tree`).
Other extras are
removed only when `delete` is set, and without it a directory holding entries is never removed
to make room for a file (an error of the plan instead).

`DeltaStream` runs a delta (or its dry run, or a verification) on a manifest that comes in
batches, a window at a time, so that a tree of millions of entries is mended in bounded
memory; `cairn restore --delta` runs it, in the client and in the daemon alike. `mend()` takes
a whole manifest (restore-db --delta). Both keep everything above.

One delta per target directory at a time (`target_lock`): whichever process writes the target
(a client for its own delta, the daemon for the one it runs, restore-db --delta) holds an
exclusive flock on the directory itself while it mends it, so a second one is refused
(BusyError, naming the holder's pid where /proc/locks tells it) instead of writing pg_control
or a file back while the first still mends. The lock goes with its process (also on kill -9)
and leaves nothing in the target.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import blake3
from cairn.errors import AbortedError, BusyError, CairnError, InvalidArgumentError

from .beneath import XATTR_LIST_MAX, Beneath, listxattr_at
from .names import shown
from .records import EntryMeta
from .writer import (
    _setxattr,
    _write_all,
    apply_dir_meta,
    check_rel,
    set_link_meta_at,
    set_meta_at,
    settable_xattr,
    xattr_order,
)

HASH_WORKERS = 4
TEMP_PREFIX = b".cairn-delta-"
_OPEN_RW = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class FilePlan:
    """What one file of the manifest needs: `fresh` (made anew) and the chunks to write."""

    meta: EntryMeta
    fresh: bool
    writes: list[tuple[int, int]] = field(default_factory=list)  # (chunk index, offset)
    resize: bool = False
    fix_meta: bool = False
    old_size: int = 0  # the file's length in the target before the delta (0: made anew)
    counted: int | None = None  # what a delta writes, when counted (a sparse file's holes: count_sparse_writes)

    @property
    def write_bytes(self) -> int:
        if self.counted is not None:
            return self.counted
        return sum(self.meta.chunk_sizes[i] for i, _ in self.writes)


@dataclass
class DeltaPlan:
    """Differences between a target and a manifest (see the module docstring)."""

    files: list[FilePlan] = field(default_factory=list)  # files that need anything
    remake: list[EntryMeta] = field(default_factory=list)  # non-file entries missing or wrong
    fix_meta: list[EntryMeta] = field(default_factory=list)  # non-file entries whose metadata differs
    dirs: list[EntryMeta] = field(default_factory=list)  # every directory of the manifest
    extras: list[bytes] = field(default_factory=list)  # in the target, not in the set
    leftovers: list[bytes] = field(default_factory=list)  # temporaries of a killed delta: always removed
    checked_files: int = 0
    checked_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def write_bytes(self) -> int:
        return sum(f.write_bytes for f in self.files)

    dir_meta: list[bytes] = field(default_factory=list)  # directories whose metadata differs

    @property
    def clean(self) -> bool:
        """True when the target equals the manifest (content and metadata; extras count)."""
        return not (self.files or self.remake or self.fix_meta or self.extras or self.leftovers or self.errors
                    or self.dir_meta)

    def changes(self) -> list[str]:
        """One line per difference, for --dry-run and --verify reports."""
        out: list[str] = []
        for f in self.files:
            what = "new file" if f.fresh else (f"{len(f.writes)} chunks" if f.writes else "")
            bits = [b for b in (what, "length" if f.resize and not f.fresh else "",
                                "metadata" if f.fix_meta and not f.fresh and not f.writes else "") if b]
            out.append(f"write {shown(f.meta.path)} ({', '.join(bits)}; {f.write_bytes} bytes)")
        out += [f"make {m.kind} {shown(m.path)}" for m in self.remake]
        out += [f"fix metadata of {shown(m.path)}" for m in self.fix_meta]
        out += [f"fix metadata of {shown(p) or '.'}" for p in self.dir_meta]
        out += [f"remove {shown(p)} (left by an interrupted delta)" for p in self.leftovers]
        out += [f"delete {shown(p)}" for p in self.extras]
        return out


_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # names listed by fd are str
DIR_CACHE = 64  # descriptors of directories the plan keeps (the manifest lists a directory's entries together)


class _Target:
    """The target as the plan reads it: each entry through a descriptor of its parent directory
    reached without following a link (fsio/beneath.py), never by a path from the root, so the
    tree may be nested deeper than PATH_MAX and a link swapped in redirects no read. The
    descriptors of the directories last used are kept (DIR_CACHE, O_PATH), so an entry costs
    the system calls its path did: one for its stat, one for its xattr names (listxattrat, or
    through /proc/self/fd on kernels without it; their values, where it has some, through
    /proc/self/fd). The plan writes nothing, so a directory found missing (or not a real
    directory) stays so while it runs."""

    def __init__(self, root: bytes, owner: bool) -> None:
        self.root = root
        self.owner = owner
        try:
            self.beneath: Beneath | None = Beneath(root)
        except OSError:
            self.beneath = None  # no target (yet): everything is missing
        self._dirs: OrderedDict[bytes, int] = OrderedDict()  # rel -> O_PATH descriptor, least recent first
        self._gone: set[bytes] = set()
        self._names = ctypes.create_string_buffer(XATTR_LIST_MAX)  # xattr names (the plan's thread only)

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self.beneath is not None:
            self.beneath.close()

    def dir_fd(self, rel: bytes) -> int | None:
        """A descriptor of directory `rel` (b"": the target), kept by the cache: used at once,
        before the next call (which may close it). None when `rel` is not a real directory of
        the target (missing, a link, a file, below one of those)."""
        fd = self._dirs.get(rel)
        if fd is not None:
            self._dirs.move_to_end(rel)
            return fd
        if self.beneath is None:
            return None
        if not rel:
            return self.beneath.fd
        if rel in self._gone:
            return None
        head, _, name = rel.rpartition(b"/")
        pfd = self._dirs.get(head) if head else self.beneath.fd
        try:  # one component below a kept parent, else the whole path below the target
            fd = os.open(name, _DIR_PATH, dir_fd=pfd) if pfd is not None else self.beneath.open_dir(rel)
        except (OSError, InvalidArgumentError):
            self._gone.add(rel)
            return None
        self._dirs[rel] = fd
        if len(self._dirs) > DIR_CACHE:
            os.close(self._dirs.popitem(last=False)[1])
        return fd

    def lstat_root(self) -> os.stat_result | None:
        return os.fstat(self.beneath.fd) if self.beneath is not None else None

    def lstat(self, rel: bytes) -> os.stat_result | None:
        head, _, name = rel.rpartition(b"/")
        pfd = self.dir_fd(head)
        if pfd is None:
            return None
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def xattrs(self, rel: bytes) -> dict[bytes, bytes]:
        """The extended attributes of entry `rel` (b"": the target itself), not through a link."""
        if not rel:
            return _xattrs(b"/proc/self/fd/%d" % self.beneath.fd) if self.beneath is not None else {}
        head, _, name = rel.rpartition(b"/")
        pfd = self.dir_fd(head)
        if pfd is None:
            return {}
        try:  # most entries have none: one call says so (the values are read when there are some)
            if listxattr_at(pfd, name, self._names) == []:
                return {}
        except OSError:
            return {}
        return _xattrs(b"/proc/self/fd/%d/%s" % (pfd, name), follow=False)

    def readlink(self, rel: bytes) -> bytes | None:
        head, _, name = rel.rpartition(b"/")
        pfd = self.dir_fd(head)
        if pfd is None:
            return None
        try:
            return os.readlink(name, dir_fd=pfd)
        except OSError:
            return None

    def open_dir(self, rel: bytes) -> int:
        """A new descriptor of directory `rel` for listing it (the caller closes it); OSError
        when it is not a real directory of the target."""
        if not rel:
            if self.beneath is None:
                raise FileNotFoundError(2, "no target")
            return os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.beneath.fd)
        head, _, name = rel.rpartition(b"/")
        pfd = self.dir_fd(head)
        if pfd is None:
            raise FileNotFoundError(2, "not a directory of the target")
        return os.open(name, _DIR_READ, dir_fd=pfd)

    def listdir(self, rel: bytes) -> list[bytes]:
        fd = self.open_dir(rel)
        try:
            return [n.encode(_FS_ENCODING, _FS_ERRORS) for n in os.listdir(fd)]
        finally:
            os.close(fd)

    def names(self, rel: bytes) -> Iterator[bytes]:
        """The names in directory `rel`, one at a time (a large directory's are never all held);
        OSError when it is not a real directory of the target."""
        fd = self.open_dir(rel)
        try:
            with os.scandir(fd) as found:
                for e in found:
                    yield e.name.encode(_FS_ENCODING, _FS_ERRORS)
        finally:
            os.close(fd)


def _kind(st: os.stat_result) -> str:
    m = st.st_mode
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev"),
                       (stat.S_ISSOCK, "socket")):
        if test(m):
            return kind
    return "unknown"


def _xattrs(target: int | bytes, follow: bool = True) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(target, follow_symlinks=follow) if not isinstance(target, int) else os.listxattr(target)
        return {os.fsencode(n): os.getxattr(target, n) if isinstance(target, int)
                else os.getxattr(target, n, follow_symlinks=follow) for n in names}
    except OSError:
        return {}


def _meta_same(st: os.stat_result, m: EntryMeta, owner: bool, t: _Target, rel: bytes, times: bool = True) -> bool:
    if m.kind != "symlink" and stat.S_IMODE(st.st_mode) != stat.S_IMODE(m.mode):
        return False
    if times and st.st_mtime_ns != m.mtime_ns:
        return False
    if owner and (st.st_uid, st.st_gid) != (m.uid, m.gid):
        return False
    have = t.xattrs(rel)
    want = dict(m.xattrs)
    if not owner:  # only user.* and ACLs can be set without privileges; compare what a restore can set
        have = {k: v for k, v in have.items() if settable_xattr(k, owner)}
        want = {k: v for k, v in want.items() if settable_xattr(k, owner)}
    return have == want


_buffers = threading.local()


def _read_buffer(size: int) -> bytearray:
    """This thread's read buffer, at least `size` bytes (hashing reuses it for every chunk)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = _buffers.buf = bytearray(size)
    return buf


def chunk_id(data: bytes | memoryview, id_key: bytes | None = None) -> bytes:
    """A chunk's id as the repository makes it: blake3 of its content, keyed with `id_key` in
    an encrypted repository."""
    return blake3.blake3(data, key=id_key).digest() if id_key else blake3.blake3(data).digest()


def _hash_file(t: _Target, m: EntryMeta, id_key: bytes | None = None) -> tuple[list[int], int] | None:
    """(indexes of the chunks whose content differs, current length) of file `m` of the target;
    None if unreadable (or reached only through a link). `id_key`: the repository's chunk id key
    (an encrypted repository's ids are keyed blake3)."""
    if t.beneath is None:
        return None
    try:
        fd = t.beneath.open_file(m.path, _FILE_READ)  # safe from any thread: it keeps nothing
    except (OSError, InvalidArgumentError):
        return None
    try:
        length = os.fstat(fd).st_size
        bad: list[int] = []
        off = 0
        buf = _read_buffer(max(m.chunk_sizes, default=0))
        for i, (cid, size) in enumerate(zip(m.chunks, m.chunk_sizes, strict=True)):
            if off + size > length:
                bad.append(i)
            else:
                view = memoryview(buf)[:size]
                got = os.preadv(fd, [view], off)  # into a reused buffer: no fresh pages per chunk
                if got != size or chunk_id(view, id_key) != cid:
                    bad.append(i)
            off += size
        return bad, length
    except OSError:
        return None
    finally:
        os.close(fd)


def plan(target: str | bytes, manifest: Iterable[EntryMeta], *, owner: bool | None = None,
         extras_under: list[bytes] | None = None, workers: int = HASH_WORKERS, quick: bool = False,
         cancelled: Callable[[], bool] | None = None, delete: bool | None = None,
         id_key: bytes | None = None) -> DeltaPlan:
    """Compare `target` with `manifest` (read only). Extras are looked for below each path of
    `extras_under` (b"" is the whole target); None: extras are not looked for. With `quick` a
    regular file whose size and mtime equal the set's is taken as unchanged without reading
    it (rsync's quick check; a change that keeps both is then missed). `cancelled` is asked
    after each file read: when it says so, reading stops and AbortedError is raised.
    `id_key`: an encrypted repository's chunk id key (its ids are keyed blake3); None: plain.

    With `delete` False (a delta that keeps extras), a directory of the target that holds
    entries where the set has something else (a file, a link) is not replaced: that would
    remove what it holds. It is an error of the plan instead, and its contents are extras."""
    own = os.geteuid() == 0 if owner is None else owner
    t = _Target(os.path.abspath(os.fsencode(target)), own)
    try:
        return _compare(t, list(manifest), extras_under=extras_under, workers=workers, quick=quick,
                        cancelled=cancelled, delete=delete, id_key=id_key)
    finally:
        t.close()  # after the hashing pool ended: its reads are all done


def _compare(t: _Target, entries: list[EntryMeta], *, extras_under: list[bytes] | None, workers: int, quick: bool,
             cancelled: Callable[[], bool] | None, delete: bool | None, id_key: bytes | None,
             ctx: DeltaStream | None = None) -> DeltaPlan:
    """plan() of the target `t` reads. With `ctx`, `entries` is one window of a manifest that
    DeltaStream compares a window at a time: what links files of different windows (hard links,
    paths left as they are) is kept there, and extras are looked for by it, not here."""
    own = t.owner
    out = DeltaPlan()
    known = {m.path for m in entries}
    hashing: list[tuple[EntryMeta, os.stat_result]] = []
    blocked: set[bytes] = set() if ctx is None else ctx.blocked  # paths left as they are (a directory in the way)
    doubt: set[bytes] = set()  # (ctx) files with more links than the set gave them so far
    links = {}
    linking: dict[bytes, list[EntryMeta]] = {}  # the hardlinks to each path
    for m in entries:
        if m.kind == "hardlink":
            links[m.link_to] = links.get(m.link_to, 1) + 1
            linking.setdefault(m.link_to, []).append(m)
    for m in entries:
        if m.path == b"" and m.kind == "dir":  # the set's root: the target itself (metadata only)
            out.dirs.append(m)
            st = t.lstat_root()
            if st is not None and not _meta_same(st, m, own, t, b""):
                out.dir_meta.append(b"")
            continue
        try:
            check_rel(m.path)
        except Exception as e:  # noqa: BLE001 - InvalidArgumentError, reported per entry
            out.errors.append(str(e))
            continue
        st = t.lstat(m.path)
        if ctx is not None and m.kind != "dir" and st is not None and stat.S_ISDIR(st.st_mode) \
                and ctx.seeks_extras(m.path):
            out.extras += ctx.children(t, m.path)  # what a directory in a non-directory's place holds
        if delete is False and m.kind != "dir" and _holds_entries(t, m.path, st):
            out.errors.append(f"'{shown(m.path)}' is a directory holding entries the set does not: not "
                              f"replaced by the set's {m.kind} (restore with --delete to replace it)")
            blocked.add(m.path)
            continue
        if m.kind == "hardlink" and m.link_to in blocked:
            out.errors.append(f"'{shown(m.path)}' links to '{shown(m.link_to)}', which was not restored")
            continue
        if m.kind == "dir":
            out.dirs.append(m)
            if st is None or not stat.S_ISDIR(st.st_mode):
                out.remake.append(m)
            elif not _meta_same(st, m, own, t, m.path):
                out.dir_meta.append(m.path)
            continue
        if m.kind == "file":
            out.checked_files += 1
            out.checked_bytes += m.size
            shared = st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > links.get(m.path, 1)
            if shared and ctx is not None:
                # the links the set gives it may come in later windows: one that differs is
                # replaced (written anew), one that does not is decided once they are all known
                doubt.add(m.path)
                shared = False
            if st is None or not stat.S_ISREG(st.st_mode) or shared:
                out.files.append(FilePlan(m, fresh=True, writes=_all_chunks(m), resize=True, fix_meta=True))
            elif quick and st.st_size == m.size and st.st_mtime_ns == m.mtime_ns:
                if not _meta_same(st, m, own, t, m.path):  # (metadata is the inode's: other links share it)
                    out.files.append(FilePlan(m, fresh=True, writes=_all_chunks(m), resize=True, fix_meta=True)
                                     if m.path in doubt else FilePlan(m, fresh=False, fix_meta=True))
                elif m.path in doubt:
                    ctx.defer(m, st.st_nlink, linking.get(m.path, []))  # type: ignore[union-attr]
            else:
                hashing.append((m, st))
            continue
        if m.kind == "hardlink":
            if ctx is not None:
                ctx.linked(m)
            if not _links_to(t, m, st) or (ctx is not None and m.link_to in ctx.replaced):
                out.remake.append(m)
            continue
        if m.kind == "socket":
            continue
        if st is None or _kind(st) != m.kind or (m.kind == "symlink" and t.readlink(m.path) != m.target) \
                or (m.kind in ("chardev", "blockdev") and st.st_rdev != m.rdev):
            out.remake.append(m)
        elif not _meta_same(st, m, own, t, m.path):
            out.fix_meta.append(m)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="delta-hash") as pool:
        results = pool.map(lambda ms: _hash_file(t, ms[0], id_key), hashing)
        for (m, st), res in zip(hashing, results, strict=True):
            if cancelled is not None and cancelled():
                pool.shutdown(wait=False, cancel_futures=True)  # files being read finish, no others start
                raise AbortedError("restore --delta cancelled while reading the target")
            if res is None:
                out.files.append(FilePlan(m, fresh=True, writes=_all_chunks(m), resize=True, fix_meta=True))
                continue
            bad, length = res
            offsets = _offsets(m)
            fp = FilePlan(m, fresh=False, writes=[(i, offsets[i]) for i in bad], resize=length != m.size,
                          old_size=length)
            fp.fix_meta = bool(fp.writes) or fp.resize or not _meta_same(st, m, own, t, m.path)
            if (fp.writes or fp.resize or fp.fix_meta) and m.path in doubt:
                out.files.append(FilePlan(m, fresh=True, writes=_all_chunks(m), resize=True, fix_meta=True))
            elif fp.writes or fp.resize or fp.fix_meta:
                out.files.append(fp)
            elif m.path in doubt:
                ctx.defer(m, st.st_nlink, linking.get(m.path, []))  # type: ignore[union-attr]
    # hardlinks whose first path is being remade are remade too (the inode changes)
    fresh = {f.meta.path for f in out.files if f.fresh}
    if ctx is not None:  # those of later windows too, when other paths may link to the inode it had
        ctx.replaced.update(p for p in fresh if p in doubt)
    for m in entries:
        if m.kind == "hardlink" and m.link_to in fresh and m not in out.remake:
            out.remake.append(m)
    if extras_under is not None:
        for rel in _extras(t, known, extras_under):
            (out.leftovers if _leftover(t, rel) else out.extras).append(rel)
    return out


def _leftover(t: _Target, rel: bytes) -> bool:
    """True for a temporary file of a delta (temp_name) that was killed before it could remove it."""
    name = rel.rpartition(b"/")[2]
    tail = name[len(TEMP_PREFIX):]
    if not name.startswith(TEMP_PREFIX) or len(tail) != 24 or tail.strip(b"0123456789abcdef"):
        return False
    st = t.lstat(rel)
    return st is not None and stat.S_ISREG(st.st_mode)


def _holds_entries(t: _Target, rel: bytes, st: os.stat_result | None) -> bool:
    """A real directory of the target with something in it."""
    if st is None or not stat.S_ISDIR(st.st_mode):
        return False
    try:
        return bool(t.listdir(rel))
    except OSError:
        return True  # unreadable: what it holds cannot be known, so it is not removed


def _links_to(t: _Target, m: EntryMeta, st: os.stat_result | None) -> bool:
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    src = t.lstat(m.link_to)
    return src is not None and (src.st_dev, src.st_ino) == (st.st_dev, st.st_ino)


def _all_chunks(m: EntryMeta) -> list[tuple[int, int]]:
    return list(enumerate(_offsets(m)))


def _offsets(m: EntryMeta) -> list[int]:
    out, off = [], 0
    for size in m.chunk_sizes:
        out.append(off)
        off += size
    return out


def _extras(t: _Target, known: set[bytes], under: list[bytes]) -> list[bytes]:
    """Entries below `under` (real directories of the target) that the manifest does not hold;
    a directory that is extra is listed once, not its contents."""
    out: list[bytes] = []
    for top in under:
        if top:
            st = t.lstat(top)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
        todo = [top]
        while todo:
            rel = todo.pop()
            try:
                dfd = t.open_dir(rel)
            except OSError:
                continue
            try:
                try:
                    names = sorted(n.encode(_FS_ENCODING, _FS_ERRORS) for n in os.listdir(dfd))  # os.fsencode's
                except OSError:
                    continue
                for name in names:
                    child = rel + b"/" + name if rel else name
                    if child not in known:
                        out.append(child)
                        continue
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone since the listing
                    if stat.S_ISDIR(st.st_mode):
                        todo.append(child)
            finally:
                os.close(dfd)
    return out


def _open_rw(pfd: int, name: bytes) -> int:
    """Open an existing regular file `name` of directory `pfd` for writing, never through a
    link; a read-only file is made writable for its owner (its mode is set again when it is
    finished)."""
    try:
        return os.open(name, _OPEN_RW, dir_fd=pfd)
    except PermissionError:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise
        os.chmod(name, stat.S_IMODE(st.st_mode) | stat.S_IWUSR, dir_fd=pfd, follow_symlinks=False)
        return os.open(name, _OPEN_RW, dir_fd=pfd)


@dataclass
class DeltaStats:
    """What a delta restore changed."""

    files_written: int = 0
    bytes_written: int = 0
    entries_made: int = 0
    meta_fixed: int = 0
    deleted: int = 0
    errors: list[str] = field(default_factory=list)


class DeltaWriter:
    """Applies a DeltaPlan: `prepare()`, then `write_chunk()` for each needed chunk, then `finish()`."""

    def __init__(self, target: str | bytes, p: DeltaPlan, *, delete: bool = False,
                 owner: bool | None = None) -> None:
        self.root = os.path.abspath(os.fsencode(target))
        os.makedirs(self.root, exist_ok=True)
        self.plan = p
        self.delete = delete
        self.owner = os.geteuid() == 0 if owner is None else owner
        self.beneath = Beneath(self.root)
        self.stats = DeltaStats()
        self._bad: set[bytes] = set()
        # files the set holds sparse: zeros are not written but left (or made) holes, see _pwrite
        self._sparse = {f.meta.path: 0 if f.fresh else f.old_size for f in p.files if f.meta.sparse}
        self._temp: dict[bytes, bytes] = {}  # a fresh file's final path -> where it is written
        self._pending: dict[bytes, tuple[FilePlan, int]] = {}  # fresh files: chunk writes still to come
        self._done: set[bytes] = set()  # files completed (and moved into place)
        self._made: set[bytes] = set()  # fresh files whose temporary file exists
        # chunk id -> [(path, offset)] still to write
        self.needed: dict[bytes, list[tuple[bytes, int]]] = {}
        self._lifted: dict[bytes, int] = {}  # directories given their owner's write permission -> their mode

    def _guard(self, path: bytes, fn: Callable[..., object], *args: object) -> bool:
        try:
            fn(*args)
            return True
        except PermissionError as e:
            if self._lift(path):
                return self._guard(path, fn, *args)
            err: OSError | InvalidArgumentError = e
        except (OSError, InvalidArgumentError) as e:
            err = e
        msg = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        self.stats.errors.append(f"unable to restore '{shown(path) or '.'}': {msg}")
        self._bad.add(path)
        return False

    def _lift(self, rel: bytes) -> bool:
        """Give the directory holding `rel` its owner's write (and search) permission when this
        process owns it and it lacks them (a read-only directory of an earlier restore, 0555),
        so an entry can be made, replaced or removed in it, as root could; True when it did.
        `_unlift()` puts its mode back, unless its metadata was set meanwhile (`_meta_dir`)."""
        head = _parent(rel)
        if head in self._lifted:
            return False
        try:
            fd = self.beneath.open_dir(head)
        except (OSError, InvalidArgumentError):
            return False
        try:
            st = os.fstat(fd)
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid != os.geteuid() or mode & (stat.S_IWUSR | stat.S_IXUSR) == stat.S_IWUSR | stat.S_IXUSR:
                return False
            os.chmod(b"/proc/self/fd/%d" % fd, mode | stat.S_IWUSR | stat.S_IXUSR)  # an O_PATH descriptor
            self._lifted[head] = mode
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _unlift(self) -> None:
        """The directories `_lift` changed get their mode back."""
        for head, mode in self._lifted.items():
            with contextlib.suppress(OSError, InvalidArgumentError):
                fd = self.beneath.open_dir(head)
                try:
                    os.chmod(b"/proc/self/fd/%d" % fd, mode)
                finally:
                    os.close(fd)
        self._lifted = {}

    def prepare(self) -> list[bytes]:
        """Fix structure (directories, links, special files, new or replaced files); return the
        ids of the chunks to fetch, each once, in the order they are first needed."""
        p = self.plan
        remake = {m.path for m in p.remake}
        fresh = {f.meta.path: f for f in p.files if f.fresh}
        order = {m.path: m for m in [*p.remake, *(f.meta for f in p.files)]}
        # manifest order (pre-order) so parents exist first: dirs, files and others interleaved
        for m in sorted(order.values(), key=lambda x: (x.path.count(b"/"), x.path)):
            if m.kind == "dir" and m.path in remake:
                self._guard(m.path, self._make_dir, m)
            elif m.path in fresh:
                self._guard(m.path, self._new_file, m)
        for m in p.remake:
            if m.kind not in ("dir", "hardlink"):
                self._guard(m.path, self._make_other, m)
        for f in p.files:
            if f.meta.path in self._bad:
                continue
            for i, off in f.writes:
                self.needed.setdefault(f.meta.chunks[i], []).append((f.meta.path, off))
            if f.fresh and f.writes:
                self._pending[f.meta.path] = (f, len(f.writes))
        return list(self.needed)

    def fail_chunk(self, cid: bytes, why: str) -> None:
        """A chunk that could not be fetched: every file that needs it is left as it is (not
        finished, so a later delta reads it again) and reported; the others are mended."""
        for path, _off in self.needed.pop(cid, ()):
            if path not in self._bad:
                self._bad.add(path)
                self.stats.errors.append(f"unable to restore '{shown(path)}': {why}")
                self._give_up(path)

    def write_chunk(self, cid: bytes, data: bytes) -> None:
        """Write one fetched chunk everywhere it is needed."""
        for path, off in self.needed.pop(cid, ()):
            if path in self._bad:
                continue
            if not self._guard(path, self._pwrite, path, off, data):
                self._give_up(path)
                continue
            if path in self._pending:
                f, left = self._pending[path]
                if left > 1:
                    self._pending[path] = (f, left - 1)
                    continue
                del self._pending[path]  # complete: in place now, so a delta cut short keeps it
                self._complete(f)

    def finish(self) -> DeltaStats:
        p = self.plan
        for cid in list(self.needed):  # chunks the caller never delivered
            for path, _ in self.needed.pop(cid):
                if path not in self._bad:
                    self._bad.add(path)
                    self.stats.errors.append(f"unable to restore '{shown(path)}': its content did not arrive")
        for f in p.files:
            if f.meta.path in self._bad:
                self._drop_temp(f.meta.path)
            elif f.meta.path not in self._done:
                self._complete(f)
        for m in p.remake:
            if m.kind == "hardlink":
                if m.link_to in self._bad:
                    self.stats.errors.append(f"unable to restore '{shown(m.path)}': it links to "
                                             f"'{shown(m.link_to)}', which was not restored")
                    continue
                self._guard(m.path, self._make_link, m)
        for m in p.fix_meta:
            if self._guard(m.path, self._meta_path, m):
                self.stats.meta_fixed += 1
        for rel in p.leftovers:  # a killed delta's temporaries (module docstring), whatever `delete` says
            if self._guard(rel, self._remove, rel):
                self.stats.deleted += 1
        if self.delete:
            for rel in sorted(p.extras, key=lambda r: r.count(b"/"), reverse=True):
                if self._guard(rel, self._remove, rel):
                    self.stats.deleted += 1
        self._unlift()
        # directory times change when entries are made or removed in them: set them all again
        # whenever anything changed (deepest first), counting those that differed before
        made = {r.path for r in p.remake}
        changed = made | set(p.dir_meta)
        anything = bool(changed or p.files or p.fix_meta or self.stats.deleted)
        for m in sorted(p.dirs, key=lambda x: x.path.count(b"/"), reverse=True):
            if (anything or m.path in changed) and self._guard(m.path, self._meta_dir, m):
                self.stats.meta_fixed += m.path in changed and m.path not in made
        self.beneath.close()
        return self.stats

    # -- operations ------------------------------------------------------------------
    # Every change goes through a descriptor of the entry's parent, reached at that moment
    # without following a link (fsio/beneath.py): a directory swapped for a link meanwhile is
    # refused, never written through.

    def _remove(self, rel: bytes) -> None:
        try:
            with self.beneath.parent(rel) as (pfd, name):
                try:
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    return
                if stat.S_ISDIR(st.st_mode):
                    remove_tree(pfd, name)
                else:
                    os.unlink(name, dir_fd=pfd)
        except (InvalidArgumentError, FileNotFoundError, NotADirectoryError):
            return  # below a non-directory (replaced meanwhile) or a link: nothing of ours is there

    def _make_dir(self, m: EntryMeta) -> None:
        self._remove(m.path)
        with self.beneath.parent(m.path) as (pfd, name):
            os.mkdir(name, 0o700, dir_fd=pfd)
        self.stats.entries_made += 1

    def _new_file(self, m: EntryMeta) -> None:
        """A fresh file is written under a temporary name beside its place and moved there only
        when it is complete (`_finish_file`): a file whose content cannot be fetched leaves
        what was at its place as it was, never an empty or partial file."""
        with self.beneath.parent(m.path):
            pass  # its parent is a real directory of the target now (checked again at each use)
        self._temp[m.path] = temp_name(m.path)  # made at its first write (_open_file)

    def _open_file(self, rel: bytes) -> int:
        """The file of the plan at `rel`, open for writing: the existing one, or a fresh one's
        temporary file (made at the first call, under a name no entry has)."""
        tmp = self._temp.get(rel)
        if tmp is not None and rel not in self._made:
            with self.beneath.parent(tmp) as (pfd, name):
                while True:  # a new name, never one that exists: nothing there is removed or reused
                    # noted as made before it is: an interruption right after the open still removes it
                    self._made.add(rel)
                    try:
                        fd = os.open(name, _OPEN_NEW, 0o600, dir_fd=pfd)
                        break
                    except OSError as exc:
                        self._made.discard(rel)  # not made (and an entry already there is not ours)
                        if not isinstance(exc, FileExistsError):
                            raise
                        tmp = temp_name(rel)
                        self._temp[rel] = tmp
                        name = tmp.rpartition(b"/")[2]
            return fd
        with self.beneath.parent(tmp or rel) as (pfd, name):
            return _open_rw(pfd, name)

    def abandon(self) -> None:
        """A delta stopped before its end (an error, a cancellation, an interruption; also during
        `finish()`): remove the temporary files of fresh files that are not in place (what is
        complete stays in place)."""
        for rel in list(self._temp):
            self._drop_temp(rel)
        self._unlift()
        self.beneath.close()

    def _complete(self, f: FilePlan) -> None:
        """Length, owner, xattrs, mode and times of a file whose chunks are written; a fresh one
        is then moved to its place (a failure leaves the place as it was)."""
        self._done.add(f.meta.path)
        if self._guard(f.meta.path, self._finish_file, f.meta, f.resize):
            self.stats.files_written += bool(f.writes or f.fresh)
            self.stats.meta_fixed += not f.writes and not f.fresh
        else:
            self._drop_temp(f.meta.path)

    def _give_up(self, rel: bytes) -> None:
        """A new file that failed is never finished: its temporary file goes at once, not at
        finish(), so the space it holds (a disk that filled) is there for the files after it."""
        if self._pending.pop(rel, None) is not None:
            self._drop_temp(rel)

    def _drop_temp(self, rel: bytes) -> None:
        tmp = self._temp.pop(rel, None)
        if tmp is not None and rel in self._made:
            with contextlib.suppress(OSError):
                self._remove(tmp)

    def _make_other(self, m: EntryMeta) -> None:
        self._remove(m.path)
        with self.beneath.parent(m.path) as (pfd, name):
            if m.kind == "symlink":
                os.symlink(m.target, name, dir_fd=pfd)
            elif m.kind == "fifo":
                os.mkfifo(name, stat.S_IMODE(m.mode), dir_fd=pfd)
            elif m.kind in ("chardev", "blockdev"):
                os.mknod(name, m.mode, m.rdev, dir_fd=pfd)
            else:
                return
        self._meta_path(m)
        self.stats.entries_made += 1

    def _make_link(self, m: EntryMeta) -> None:
        self._remove(m.path)
        with self.beneath.parent(check_rel(m.link_to)) as (sfd, src), self.beneath.parent(m.path) as (pfd, name):
            if not stat.S_ISREG(os.stat(src, dir_fd=sfd, follow_symlinks=False).st_mode):
                raise OSError(22, f"refusing to link to '{shown(m.link_to)}': not a regular file")
            os.link(src, name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
        self.stats.entries_made += 1

    def _pwrite(self, rel: bytes, off: int, data: bytes) -> None:
        old = self._sparse.get(rel)
        if old is not None and off >= old and data.count(0) == len(data):
            return  # beyond the old end: a hole already once the length is set
        fd = self._open_file(rel)
        try:
            if old is None:
                _write_all(fd, memoryview(data), off)
                self.stats.bytes_written += len(data)
            else:
                self.stats.bytes_written += _write_holes(fd, data, off, old)
        finally:
            os.close(fd)

    def _finish_file(self, m: EntryMeta, resize: bool) -> None:
        fd = self._open_file(m.path)
        try:
            if resize or os.fstat(fd).st_size != m.size:
                os.ftruncate(fd, m.size)
            if self.owner:
                os.fchown(fd, m.uid, m.gid)
            have = _xattrs(fd)
            for k in have:
                if k not in m.xattrs and settable_xattr(k, self.owner):
                    os.removexattr(fd, k)
            for k, v in xattr_order(m.xattrs):
                if have.get(k) != v:
                    _setxattr(fd, k, v)
            os.fchmod(fd, stat.S_IMODE(m.mode))
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)
        tmp = self._temp.get(m.path)
        if tmp is not None:
            with self.beneath.parent(m.path) as (pfd, name):
                try:
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and stat.S_ISDIR(st.st_mode):  # the plan replaces a directory only
                    remove_tree(pfd, name)  # when it may (--delete, or empty)
                os.rename(tmp.rpartition(b"/")[2], name, src_dir_fd=pfd, dst_dir_fd=pfd)
            # forgotten only once it is in place: until then a failure or an interruption removes it
            del self._temp[m.path]

    def _meta_path(self, m: EntryMeta) -> None:
        with self.beneath.parent(m.path) as (pfd, name):
            if m.kind != "symlink":
                set_meta_at(pfd, name, m, self.owner, prune_xattrs=True)
                return
            set_link_meta_at(pfd, name, m, self.owner, prune_xattrs=True)

    def _meta_dir(self, m: EntryMeta) -> None:
        self._lifted.pop(m.path, None)  # its mode is the set's now
        apply_dir_meta(self.beneath, m.path, m, self.owner, prune_xattrs=True)


def remove_tree(pfd: int, name: bytes) -> None:
    """Remove directory `name` of directory `pfd` and all below it, never following a link. A
    process that is not root may be refused inside it (a subdirectory without its owner's write
    permission, as a restore of read-only directories leaves them): every directory below that
    this process owns is then given its owner's read, write and search permission, and the
    removal tried again. What it does not own stays refused (PermissionError)."""
    try:
        shutil.rmtree(name, dir_fd=pfd)
    except PermissionError:
        if os.geteuid() == 0:
            raise
        _open_owned(pfd, name)
        shutil.rmtree(name, dir_fd=pfd)


def _open_owned(pfd: int, name: bytes) -> None:
    """Give each directory at and below `name` (of `pfd`) that this process owns its owner's
    rwx, depth first (one descriptor open per level), never following a link."""
    uid = os.geteuid()
    top = _opened_dir(pfd, name, uid)
    if top is None:
        return
    stack = [(top, _subdirs(top))]
    try:
        while stack:
            fd, rest = stack[-1]
            if not rest:
                os.close(fd)
                stack.pop()
                continue
            child = _opened_dir(fd, rest.pop(), uid)
            if child is not None:
                stack.append((child, _subdirs(child)))
    finally:
        for fd, _ in stack:
            os.close(fd)


def _opened_dir(parent: int, entry: bytes | str, uid: int) -> int | None:
    """A readable descriptor of directory `entry` of `parent`, given its owner's rwx first when
    `uid` owns it and it lacks them; None for a link, a non-directory, or one it may not read."""
    try:
        path_fd = os.open(entry, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        return None
    try:
        st = os.fstat(path_fd)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == uid and mode & stat.S_IRWXU != stat.S_IRWXU:
            os.chmod(b"/proc/self/fd/%d" % path_fd, mode | stat.S_IRWXU)  # an O_PATH descriptor
        return os.open(b"/proc/self/fd/%d" % path_fd, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(path_fd)


def _subdirs(fd: int) -> list[str]:
    with os.scandir(fd) as it:
        return [e.name for e in it if e.is_dir(follow_symlinks=False)]


ChunkSource = Callable[[list[bytes]], Iterable[tuple[bytes, bytes | CairnError]]]


_HOLE_BLOCK = 64 * 1024
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_libc: ctypes.CDLL | None = None


def _punch(fd: int, off: int, length: int) -> bool:
    """Make [off, off+length) of `fd` a hole (reads as zeros); False where the file system cannot."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.fallocate(ctypes.c_int(fd), ctypes.c_int(_PUNCH_HOLE), ctypes.c_int64(off),
                           ctypes.c_int64(length)) == 0


def _blocks(data: bytes) -> Iterator[tuple[int, memoryview, bool]]:
    """(offset, block, all zeros) of each _HOLE_BLOCK of chunk content `data`, from its start."""
    view = memoryview(data)
    for i in range(0, len(data), _HOLE_BLOCK):
        block = view[i:i + _HOLE_BLOCK]
        yield i, block, block.tobytes().count(0) == len(block)


def _write_holes(fd: int, data: bytes, off: int, old_size: int) -> int:
    """Write `data` at `off` into a file the set holds sparse, keeping zeros as holes: an
    all-zero block beyond the file's old end is skipped (a hole once the length is set), one
    before it is punched (written as zeros where the file system cannot). Returns the bytes
    written: those of its blocks that are not all zeros (`sparse_write_bytes`), and of the
    blocks of zeros that could not be punched."""
    written = 0
    for i, block, zero in _blocks(data):
        at = off + i
        if not zero or (at < old_size and not _punch(fd, at, len(block))):
            _write_all(fd, block, at)
            written += len(block)
    return written


def sparse_write_bytes(data: bytes) -> int:
    """The bytes a delta writes of chunk content `data` of a file the set holds sparse, where
    holes can be punched (_write_holes): its blocks that are not all zeros."""
    return sum(len(block) for _, block, zero in _blocks(data) if not zero)


def count_sparse_writes(p: DeltaPlan, chunks: ChunkSource, id_key: bytes | None = None) -> None:
    """Count what a delta would write of each file of plan `p` that the set holds sparse (its
    zeros are left holes, not written: _write_holes), so that `p.write_bytes` is what the delta
    writes, for a dry run. A chunk of zeros is known by its id (`id_key`: an encrypted
    repository's), costing nothing; the others are fetched with `chunks` (as mend() takes
    them) and their blocks of zeros left out. A chunk that cannot be fetched counts whole.
    Where the file system cannot punch holes, a delta writes the zeros that replace data
    inside a file's old length, which this does not count."""
    files = [f for f in p.files if f.meta.sparse and f.writes]
    zero_ids: dict[int, bytes] = {}
    sizes: dict[bytes, int] = {}  # chunks to fetch -> their size
    for f in files:
        for i, _ in f.writes:
            cid, size = f.meta.chunks[i], f.meta.chunk_sizes[i]
            zero = zero_ids.get(size)
            if zero is None:
                zero = zero_ids[size] = chunk_id(bytes(size), id_key)
            if cid != zero:
                sizes[cid] = size
    written: dict[bytes, int] = {}
    if sizes:
        source = chunks(list(sizes))
        try:
            for cid, data in source:
                written[cid] = sizes[cid] if isinstance(data, CairnError) else sparse_write_bytes(data)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    for f in files:
        f.counted = sum(written.get(f.meta.chunks[i], sizes.get(f.meta.chunks[i], 0)) for i, _ in f.writes)


def temp_name(rel: bytes) -> bytes:
    """A new temporary name beside `rel` under which a fresh file of a delta is written
    (`TEMP_PREFIX` and random hex: it fits NAME_MAX; created with O_EXCL, so an entry already
    there, a user's or the set's, is never taken over)."""
    head = rel.rpartition(b"/")[0]
    tmp = TEMP_PREFIX + os.urandom(12).hex().encode()
    return head + b"/" + tmp if head else tmp


@contextlib.contextmanager
def target_lock(target: str | bytes) -> Iterator[None]:
    """Hold the one-delta-per-target lock of directory `target` (module docstring) for the
    block; BusyError at once when another delta holds it. A target that cannot be opened as a
    directory, or whose file system cannot lock, is not locked (the delta then reports what it
    cannot write)."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _flock_holder(fd)
                raise BusyError(f"a delta restore of '{shown(target)}' is running already"
                                + (f" (pid {holder})" if holder else "") + ": wait for it to end") from None
            except OSError:
                pass  # a file system without flock: unlocked
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # the only descriptor: closing it drops the lock


def _flock_holder(fd: int) -> int | None:
    """The pid /proc/locks names for the flock on `fd`'s inode (None: not told, e.g. no /proc)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:  # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:123 0 EOF"; a waiter has "->" after "1:"
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == inode and parts[4].isdigit():
                    return int(parts[4]) or None
    except OSError:
        pass
    return None


def extras_roots(paths: list[bytes]) -> list[bytes]:
    """Where --delete looks for entries the set does not hold: the whole target (b""), or the
    paths a restore of chosen paths asked for (relative, without '.' parts)."""
    roots = [b"/".join(x for x in p.split(b"/") if x and x != b".") for p in paths]
    return [b""] if not roots or b"" in roots else roots


def mend(target: str | bytes, entries: list[EntryMeta], chunks: ChunkSource, *, quick: bool = False,
         delete: bool = False, extras_under: list[bytes] | None = None,
         cancelled: Callable[[], bool] | None = None, id_key: bytes | None = None) -> tuple[DeltaPlan, DeltaStats]:
    """A whole delta restore: plan `target` against `entries`, then apply the plan, writing the
    chunks that differ as `chunks(ids)` yields them ((id, content) pairs, any order; a content
    that is a CairnError is a chunk that cannot be read: the files needing it are reported and
    left for a later delta, every other file is mended). The client (content over gRPC) and the
    daemon (content from the repository) both run this.

    `cancelled` (the daemon's: its client went away) is asked after each file read and each
    chunk written; when it says so the delta stops with AbortedError. The target is then partly
    mended: every chunk written is the set's, and running the delta again finishes the work."""
    p = plan(target, entries, extras_under=extras_under, quick=quick, cancelled=cancelled, delete=delete,
             id_key=id_key)
    return p, _write(target, p, chunks, delete=delete, cancelled=cancelled)


def _write(target: str | bytes, p: DeltaPlan, chunks: ChunkSource, *, delete: bool,
           cancelled: Callable[[], bool] | None, owner: bool | None = None,
           bad: set[bytes] | None = None) -> DeltaStats:
    """Apply plan `p` to `target` (DeltaWriter), the chunks that differ fetched with `chunks`.
    `bad`: paths earlier windows could not restore (a hardlink to one is not made), added to."""
    writer = DeltaWriter(target, p, delete=delete, owner=owner)
    if bad is not None:
        writer._bad = bad
    try:
        ids = writer.prepare()
        if ids:
            source = chunks(ids)
            try:
                for cid, data in source:
                    if isinstance(data, CairnError):
                        writer.fail_chunk(cid, data.message)
                    else:
                        writer.write_chunk(cid, data)
                    if cancelled is not None and cancelled():
                        raise AbortedError("restore --delta cancelled while writing the target")
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
        return writer.finish()
    except BaseException:  # an error or an interruption (KeyboardInterrupt) at any point: no temporary stays
        writer.abandon()
        raise


WINDOW_ENTRIES = 2048  # entries of a manifest a DeltaStream compares and mends at once


def _parent(rel: bytes) -> bytes:
    return rel.rpartition(b"/")[0]


def _within(rel: bytes, top: bytes) -> bool:
    """`rel` is `top` or below it (b"": the whole target)."""
    return not top or rel == top or rel.startswith(top + b"/")


@dataclass
class _OpenDir:
    """A directory of the manifest whose entries are still coming (DeltaStream)."""

    meta: EntryMeta
    names: set[bytes] = field(default_factory=set)  # the names the manifest gives it so far
    made: bool = False  # made anew by the delta
    fix: bool = False  # its metadata differed
    since: int = 0  # changes made when it was opened
    given: bool = True  # False: the target itself, when the manifest gives it no entry (no metadata)


@dataclass
class _Shared:
    """A file of the target with more links than the set gave it so far, that needed nothing:
    if the set gives it fewer than it has, it is replaced once the manifest has ended."""

    meta: EntryMeta
    nlink: int
    links: list[EntryMeta]  # the set's hardlinks to it, so far
    dirs: dict[bytes, EntryMeta]  # the directories holding it and its links (their metadata is set again)


class DeltaStream:
    """A delta restore (or with `write` False its dry run, or a verification) of a manifest that
    comes in batches, holding a window of it at a time, never the whole manifest.

    Feed it the manifest's entries as they come (`feed`), then call `finish`. Every
    WINDOW_ENTRIES entries the window is compared with the target (plan) and, when writing,
    mended at once: the chunks it needs are fetched with `chunks` (each window's once) and
    written, its files finished and renamed into place, its links and special files made. A
    directory is closed once the manifest has left it (a directory's entries come together,
    pre-order): then, below `extras_under`, the entries the set does not give it are extras
    (removed with `delete`; a killed delta's temporaries always), and its metadata is set,
    after everything inside it. So the guarantees of `mend` hold, with what links windows
    kept here: the directories open (the path down to the entry at hand, with their names),
    the paths that could not be restored, and the files with more hard links in the target
    than the set gave them so far. Such a file that differs from the set is replaced (written
    anew, as a file of the wrong kind is: no other path may change) rather than mended in
    place; one that does not differ is kept until the manifest ends, and replaced then if the
    set gives it fewer links than it has (its links are then made again, and its directories'
    metadata set again).

    With `hold_dirs` (a restore with --include patterns, whose stream fails at its end when no
    pattern matched, after the directories of the paths asked) nothing is compared or written
    while only directories have come.

    The counts (`checked_files`, `checked_bytes`, `write_bytes` of a dry run), `errors` of the
    plan and `stats` of what was written add up as it goes; `show(lines, extras)` (a dry run)
    is called with each window's changes, as `DeltaPlan.changes()` words them, and the extras
    found. What a dry run counts is what the delta writes (count_sparse_writes per window;
    with `count` False, a verification, a sparse file's chunks are not fetched to count it)."""

    def __init__(self, target: str | bytes, chunks: ChunkSource, *, write: bool = True, count: bool = True,
                 quick: bool = False,
                 delete: bool = False, extras_under: list[bytes] | None = None,
                 cancelled: Callable[[], bool] | None = None, id_key: bytes | None = None,
                 owner: bool | None = None, workers: int = HASH_WORKERS, hold_dirs: bool = False,
                 show: Callable[[list[str], list[bytes]], None] | None = None) -> None:
        self.root = os.path.abspath(os.fsencode(target))
        self.chunks, self.write, self.count, self.quick, self.delete = chunks, write, count, quick, delete
        self.extras_under, self.cancelled, self.id_key, self.workers = extras_under, cancelled, id_key, workers
        self.owner = os.geteuid() == 0 if owner is None else owner
        self.show = show
        self.checked_files = self.checked_bytes = self.write_bytes = 0
        self.changes = 0  # lines of a dry run's changes
        self.extras = 0  # extras found (kept unless `delete`)
        self.errors: list[str] = []
        self.stats = DeltaStats()
        self.blocked: set[bytes] = set()  # paths left as they are: a hardlink to one is an error
        self.replaced: set[bytes] = set()  # files with other links replaced: a hardlink to one is made again
        self._bad: set[bytes] = set()  # paths the writing could not restore
        self._shared: dict[bytes, _Shared] = {}
        # the target itself is open from the start: its extras are looked for even when the
        # manifest gives it no entry (a restore of chosen paths)
        self._open: list[_OpenDir] = [_OpenDir(EntryMeta(path=b"", kind="dir"), given=False)]
        self._window: list[EntryMeta] = []
        self._parents: dict[bytes, EntryMeta] = {}  # the window's entries -> their directory, when open
        self._done = 0  # changes made so far (a directory opened before one is set again)
        self._holding = hold_dirs

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, entries: Iterable[EntryMeta]) -> None:
        entries = list(entries)
        self._window.extend(entries)
        if self._holding:  # only directories so far: a manifest that fails at its end has written nothing
            if all(m.kind == "dir" for m in entries):
                return
            self._holding = False
        if len(self._window) >= WINDOW_ENTRIES:
            self._run(self._window)
            self._window = []

    def finish(self) -> None:
        """The manifest has ended: the last window, the files kept for their links, and the
        directories still open (the target's own last)."""
        if self._window:
            self._run(self._window)
            self._window = []
        self._shared_links()
        closing, self._open = self._open[::-1], []
        self._close(closing)

    # -- the callbacks of _compare -----------------------------------------------------------

    def seeks_extras(self, rel: bytes) -> bool:
        return self.extras_under is not None and any(_within(rel, top) for top in self.extras_under)

    def children(self, t: _Target, rel: bytes) -> list[bytes]:
        try:
            return [rel + b"/" + name if rel else name for name in sorted(t.listdir(rel))]
        except OSError:
            return []

    def defer(self, m: EntryMeta, nlink: int, links: list[EntryMeta]) -> None:
        dirs = {d.path: d for d in (self._parents.get(x.path) for x in (m, *links)) if d is not None}
        if len(links) + 1 < nlink:
            self._shared[m.path] = _Shared(m, nlink, list(links), dirs)

    def linked(self, m: EntryMeta) -> None:
        """A hardlink of the set (a later window's than its file's)."""
        held = self._shared.get(m.link_to)
        if held is None:
            return
        held.links.append(m)
        d = self._parents.get(m.path)
        if d is not None:
            held.dirs[d.path] = d
        if len(held.links) + 1 >= held.nlink:
            del self._shared[m.link_to]  # the set gives it as many links as it has

    # -- a window ----------------------------------------------------------------------------

    def _run(self, entries: list[EntryMeta]) -> None:
        if self.cancelled is not None and self.cancelled():
            raise AbortedError("restore --delta cancelled while reading the target")
        closing = self._walk(entries)
        t = _Target(self.root, self.owner)
        try:
            p = _compare(t, entries, extras_under=None, workers=self.workers, quick=self.quick,
                         cancelled=self.cancelled, delete=self.delete, id_key=self.id_key, ctx=self)
            found, p.extras = p.extras, []
            for rel in found:
                (p.leftovers if _leftover(t, rel) else p.extras).append(rel)
        finally:
            t.close()
        self._parents = {}
        made = {m.path for m in p.remake if m.kind == "dir"}
        fix = set(p.dir_meta)
        for d in self._open + closing:
            if d.meta.path in made or d.meta.path in fix:
                d.made, d.fix = d.made or d.meta.path in made, d.fix or d.meta.path in fix
        self.checked_files += p.checked_files
        self.checked_bytes += p.checked_bytes
        self.errors += p.errors
        self._apply(p)
        self._close(closing)

    def _walk(self, entries: list[EntryMeta]) -> list[_OpenDir]:
        """Follow the window's entries down and up the tree: the directories it leaves (deepest
        first, to close once it is written), and those it opens."""
        closing: list[_OpenDir] = []
        for m in entries:
            while self._open and not _within(m.path, self._open[-1].meta.path):
                closing.append(self._open.pop())
            top = self._open[-1] if self._open else None
            if top is not None and m.path and _parent(m.path) == top.meta.path:
                if self.seeks_extras(top.meta.path):  # (its extras are the names it is not given)
                    top.names.add(m.path.rpartition(b"/")[2])
                if top.given:
                    self._parents[m.path] = top.meta
            if m.kind == "dir" and not m.path and top is not None and not top.given:
                top.meta, top.given = m, True  # the set's root: the target's metadata
            elif m.kind == "dir" and m.path:
                self._open.append(_OpenDir(m, since=self._done))
        return closing

    def _apply(self, p: DeltaPlan) -> None:
        """Write a window's plan (or count what it would write), directories' metadata aside."""
        p.dirs, dir_meta, p.dir_meta = [], p.dir_meta, []
        if not self.write:
            if self.count:
                count_sparse_writes(p, self.chunks, self.id_key)
            self.write_bytes += p.write_bytes
            p.dir_meta = dir_meta
            self._tell(p.changes(), p.extras)
            self.extras += len(p.extras)
            return
        st = _write(self.root, p, self.chunks, delete=self.delete, cancelled=self.cancelled, owner=self.owner,
                    bad=self._bad)
        self._add(st)
        self._done += len(p.files) + len(p.remake) + len(p.fix_meta) + len(dir_meta) + st.deleted
        if not self.delete:
            self.extras += len(p.extras)

    def _add(self, st: DeltaStats) -> None:
        for name in ("files_written", "bytes_written", "entries_made", "meta_fixed", "deleted"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(st, name))
        self.stats.errors += st.errors

    def _tell(self, lines: list[str], extras: list[bytes]) -> None:
        self.changes += len(lines)
        if self.show is not None and (lines or extras):
            self.show(lines, extras)

    # -- closing directories -------------------------------------------------------------------

    def _close(self, closing: list[_OpenDir]) -> None:
        """Directories the manifest has left (deepest first): their extras, then their metadata."""
        if not closing:
            return
        t = _Target(self.root, self.owner)
        writer = DeltaWriter(self.root, DeltaPlan(), delete=self.delete, owner=self.owner) if self.write else None
        try:
            for d in closing:
                rel = d.meta.path
                extras: list[bytes] = []
                leftovers: list[bytes] = []
                if self.seeks_extras(rel) and t.dir_fd(rel) is not None:
                    with contextlib.suppress(OSError):
                        for name in sorted(n for n in t.names(rel) if n not in d.names):
                            x = rel + b"/" + name if rel else name
                            (leftovers if _leftover(t, x) else extras).append(x)
                    d.names = set()
                if writer is None:
                    lines = [f"remove {shown(x)} (left by an interrupted delta)" for x in leftovers]
                    self._tell(lines + [f"delete {shown(x)}" for x in extras], extras)
                    self.extras += len(extras)
                    continue
                deleted = 0
                for x in leftovers + (extras if self.delete else []):
                    deleted += writer._guard(x, writer._remove, x)
                if not self.delete:
                    self.extras += len(extras)
                self.stats.deleted += deleted
                self._done += deleted
                if d.given and (d.made or d.fix or self._done != d.since) and \
                        writer._guard(rel, writer._meta_dir, d.meta):
                    self.stats.meta_fixed += d.fix and not d.made
        finally:
            t.close()
            if writer is not None:
                writer._unlift()
                self.stats.errors += writer.stats.errors
                writer.beneath.close()

    def _shared_links(self) -> None:
        """Files kept for their links whose links the set gives fewer than the target has:
        replaced, their links made again, their directories' metadata set again."""
        if not self._shared:
            return
        p = DeltaPlan()
        dirs: dict[bytes, EntryMeta] = {}
        for held in self._shared.values():
            p.files.append(FilePlan(held.meta, fresh=True, writes=_all_chunks(held.meta), resize=True,
                                    fix_meta=True))
            p.remake += held.links
            dirs.update(held.dirs)
        self._shared = {}
        if not self.write:
            if self.count:
                count_sparse_writes(p, self.chunks, self.id_key)
            self.write_bytes += p.write_bytes
            self._tell(p.changes(), [])
            return
        p.dirs = sorted(dirs.values(), key=lambda d: d.path.count(b"/"), reverse=True)
        self._add(_write(self.root, p, self.chunks, delete=self.delete, cancelled=self.cancelled,
                         owner=self.owner, bad=self._bad))
