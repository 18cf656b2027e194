"""Taking one backup set: walk, detect changes against the base, read what changed.

Levels (ARCHITECTURE.md): a full reads every file and trusts no metadata; an incremental or
differential compares each file's stat data (kind, size, mtime_ns, ctime_ns, inode) with the
base tree and carries unchanged files over by reference. With a ChangeHint from the daemon's
change journal only directories on the way to a hinted path (and rescan subtrees) are listed;
every other directory is carried over from the base tree unread and unlisted. A set's counts
(files, dirs, bytes_total) are still the whole tree's, as a full walk would count them: carried
subtrees are counted from their stored trees; `files_walked` and `bytes_read` say what was
listed and read.

What always holds: every file's chunks are durable before the tree naming them is stored,
trees before their parents, and the caller writes the set only after `finish` of the writer;
a cancel or error leaves nothing referenced that is not stored. A base listing the index no
longer names (dropped by `cairn repair index`) is never carried into the new set: that
directory is read from the source as in a full, and the set notes it; so is a file walked
unchanged whose content the index does not name (an index file lost): it is read again. One still indexed but
unreadable (damaged) fails the backup with the way out (repair, then again), because reading
the directory again would reference the damaged copy of the same listing; one whose pack the
session found missing when it started is not indexed as far as the walk is concerned (the
listing is read from the source and stored again).
A subtree is carried over unread only when it and every blob below it are named by an index
file (snapshots/indexed.py: found once by walking the stored trees, then remembered until the
index loses knowledge); otherwise it is walked, and so an index file deleted from the
repository never passes into a new set through a directory the change journal left out.
"""

from __future__ import annotations

import copy
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from cairn.fsio.names import shown

from ..content.blobs import BlobWriter
from ..content.packs import TYPE_TREE
from ..content.repoconfig import ChunkerParams
from ..errors import (
    AbortedError,
    CairnError,
    CorruptionError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnindexedError,
    short,
)
from ..model import BackupRequest, ChangeHint
from .excludes import Excluder
from .filereader import FileReader, ReadResult, read_xattrs
from .indexed import IndexedTrees
from .trees import Entry, encode_tree

MAX_LISTED = 1000
_TOTALS_MAX = 200_000  # memo of (files, dirs, bytes) per stored tree id, for carried subtrees
_TOTALS: OrderedDict[bytes, tuple[int, int, int]] = OrderedDict()
_TOTALS_LOCK = threading.Lock()
TreeLoader = Callable[[bytes], list[Entry]]
GROUP_FILES = 32  # small files of one directory read by one pool task ...
GROUP_BYTES = 2 << 20  # ... up to this many bytes in all ...
GROUP_FILE_MAX = 256 << 10  # ... each at most this large (a larger file is a task of its own)
# Files of one directory whose reads are taken in while the walk lists it still, once this many
# wait: a directory of 200,000 files otherwise held every read's result (and its future) until
# its listing ended, and a backup of it peaked the daemon at 853 MB.
PENDING_FILES = 4096
FileRead = tuple[ReadResult | None, dict[bytes, bytes], str]


class _InGroup:
    """A small file's place in a group of files one pool task reads in turn: `result()` gives
    what the file's own task would have (or raises what the group's task raised)."""

    __slots__ = ("future", "index")

    def __init__(self, index: int) -> None:
        self.future: Future | None = None
        self.index = index

    def result(self) -> FileRead:
        assert self.future is not None, "a group is handed to the pool before its results are taken"
        return self.future.result()[self.index]


PendingFile = tuple[Entry, Future | _InGroup | None, Entry | None]


@dataclass
class Tally:
    """Running counts of one backup (guarded by the GIL: only the walk thread writes)."""

    files: int = 0
    dirs: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    files_walked: int = 0  # files whose directory was listed; `files` adds those carried over
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    n_added: int = 0
    n_modified: int = 0
    n_deleted: int = 0
    fuzzy: list[str] = field(default_factory=list)
    fuzzy_at: list[str] = field(default_factory=list)  # each fuzzy file's path on disk, in the same order
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, kind: str, path: str) -> None:
        lst = {"added": self.added, "modified": self.modified, "deleted": self.deleted}[kind]
        setattr(self, "n_" + kind, getattr(self, "n_" + kind) + 1)
        if len(lst) < MAX_LISTED:
            lst.append(path)


def entry_from_stat(name: bytes, st: os.stat_result, kind: str) -> Entry:
    e = Entry(name=name, kind=kind, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
              ctime_ns=st.st_ctime_ns, ino=st.st_ino, size=st.st_size if kind == "file" else 0)
    if kind == "file" and st.st_nlink > 1:
        e.hardlink = f"{st.st_dev}:{st.st_ino}"
    if kind == "file" and st.st_blocks * 512 < st.st_size:
        e.sparse = True
    if kind in ("chardev", "blockdev"):
        e.rdev = st.st_rdev
    return e


def kind_of(mode: int) -> str | None:
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev")):
        if test(mode):
            return kind
    return None


_PROC_FD = os.path.isdir("/proc/self/fd")


def read_xattrs_at(dir_fd: int, name: bytes, path: bytes) -> dict[bytes, bytes]:
    """The extended attributes of entry `name` of directory `dir_fd` (the entry at `path`), not
    following a link: through /proc/self/fd, so at any depth; by `path` where /proc is not
    mounted."""
    return read_xattrs(b"/proc/self/fd/%d/%s" % (dir_fd, name) if _PROC_FD else path)


_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _open_dir(path: bytes, parent_fd: int | None) -> int:
    """A descriptor of directory `path` to list it: a source root by its path, any other
    directory as its name in its parent's descriptor, never through a link (O_NOFOLLOW)."""
    if parent_fd is None:
        return os.open(path, _DIR_OPEN)
    return os.open(path.rpartition(b"/")[2], _DIR_OPEN | os.O_NOFOLLOW, dir_fd=parent_fd)


def _settle(pending: list[PendingFile]) -> None:
    """Wait for the reads of a directory's files still running (a walk that stopped on an
    error): none may outlive the directory's descriptor, nor use its number once reused.
    Reads not started yet never start."""
    futures = []
    for _, fut, _ in pending:
        f = fut.future if isinstance(fut, _InGroup) else fut
        if f is not None and not f.done() and not f.cancel():
            futures.append(f)
    if futures:
        wait(futures)


class Plan:
    """Which directories a hinted walk must list: ancestors of hinted paths and rescan subtrees."""

    def __init__(self, root: bytes, hint: ChangeHint | None) -> None:
        self.hinted = hint is not None
        self.dirty: set[bytes] = set()
        self.rescan: set[bytes] = set()
        self.written: set[bytes] = set()  # files to read even when their stat data equals the base's
        if hint is None:
            return
        for p in hint.written:
            rel = self._rel(root, os.fsencode(p))
            if rel:
                self.written.add(rel)
        for p in hint.paths:
            rel = self._rel(root, os.fsencode(p))
            if rel is not None:
                self._mark(rel)
        for p in hint.rescan:
            rel = self._rel(root, os.fsencode(p))
            if rel is not None:
                self.rescan.add(rel)
                self._mark(rel)

    @staticmethod
    def _rel(root: bytes, p: bytes) -> bytes | None:
        p = os.path.normpath(p)
        if p == root:
            return b""
        if p.startswith(root.rstrip(b"/") + b"/"):
            return p[len(root.rstrip(b"/")) + 1:]
        return None

    def _mark(self, rel: bytes) -> None:
        self.dirty.add(rel)
        while rel:
            rel = rel.rpartition(b"/")[0]
            if rel in self.dirty:
                break
            self.dirty.add(rel)

    def must_list(self, rel: bytes, under_rescan: bool) -> bool:
        return not self.hinted or under_rescan or rel in self.dirty


class Walker:
    """Walks one source path and produces its tree, reading files through a thread pool."""

    def __init__(self, req: BackupRequest, writer: BlobWriter, params: ChunkerParams, load_tree: TreeLoader,
                 pool: ThreadPoolExecutor, tally: Tally, progress: Callable[[], None],
                 cancel: threading.Event | None, strict_since_ns: int | None = None,
                 racy_since_ns: int | None = None, fixed_size: int | None = None,
                 delta_base: Callable[[bytes], tuple[bytes, bytes] | None] | None = None,
                 indexed: IndexedTrees | None = None) -> None:
        self.req = req
        self.strict_since_ns = strict_since_ns
        self.racy_since_ns = racy_since_ns
        self.full = req.level == "full"
        self.writer = writer
        self.load_tree = load_tree
        self.pool = pool
        self.tally = tally
        self.progress = progress
        self.cancel = cancel
        self.excluder = Excluder(req.excludes)
        self.reader = FileReader(writer, params, cancel, req.fuzzy_retries, fixed_size=fixed_size,
                                 delta_base=delta_base)
        self.delta = delta_base is not None
        self._group: list[tuple[int, bytes, _InGroup]] = []  # small files (directory fd, path) waiting to go
        # to the pool together: files of one directory only (flushed before the walk goes down)
        self._group_bytes = 0
        self.presets: dict[bytes, bytes] = {}  # absolute dir -> subtree captured earlier (walk_sub)
        self._links: dict[str, Future] = {}
        self.linked_change = False  # a file with several names was read during a hinted walk
        self.indexed = indexed  # trees known to be wholly indexed; None: carried over unasked
        self.written: set[bytes] = set()  # the hint's files written themselves (Plan.written): always read

    def walk_root(self, root: str, base_tree: bytes | None) -> tuple[bytes, os.stat_result]:
        """Return (tree id, stat of the root directory)."""
        broot = os.path.normpath(os.fsencode(os.path.abspath(root)))
        try:
            st = os.stat(broot)
        except OSError as e:
            raise FailedPreconditionError(f"unable to read source path '{root}': {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):  # a failure of the set (exit 1), not a usage error of the caller
            raise FailedPreconditionError(f"source path '{root}' is not a directory")
        self.use_root_excludes(root)
        plan = Plan(broot, None if self.full or base_tree is None else self.req.changes)
        self.written = plan.written
        for sub in self.presets:  # subtrees captured ahead must be put at their place
            rel = Plan._rel(broot, sub)
            if rel and plan.hinted:
                plan._mark(rel)
        self.root_dev = st.st_dev
        if base_tree is not None and not self.full and not plan.must_list(b"", False) \
                and self._carried(base_tree, b""):
            return base_tree, st
        before = copy.deepcopy(self.tally)
        self.linked_change = False
        self._group, self._group_bytes = [], 0  # none left by a walk that failed
        tree = self._dir(broot, b"", base_tree if not self.full else None, plan, False)
        if plan.hinted and self.linked_change:
            # A file with several names changed: its other names, which no hint mentions,
            # changed too. Walk the whole root and compare with the base instead.
            self.tally.__dict__.update(copy.deepcopy(before).__dict__)
            self.tally.notes.append(f"'{root}': a file with several hard links changed; walked instead of the hint")
            tree = self._dir(broot, b"", base_tree, Plan(broot, None), False)
        return tree, st

    def use_root_excludes(self, root: str) -> None:
        """Match the request's excludes plus those anchored to `root` (BackupRequest.root_excludes)."""
        own = next((pats for path, pats in self.req.root_excludes
                    if os.path.normpath(path) == os.path.normpath(root)), ())
        self.excluder = Excluder(tuple(self.req.excludes) + tuple(own))

    def walk_sub(self, root: str, sub: str, base_root: bytes | None) -> bytes:
        """Capture directory `sub` (below `root`) now, ahead of the rest of `root`; the later
        walk_root(root) puts this subtree at its place instead of walking it again."""
        broot = os.path.normpath(os.fsencode(os.path.abspath(root)))
        bsub = os.path.normpath(os.fsencode(os.path.abspath(sub)))
        rel = Plan._rel(broot, bsub)
        if not rel:
            raise InvalidArgumentError(f"'{sub}' is not a directory below source path '{root}'")
        try:
            st = os.stat(bsub, follow_symlinks=False)
        except OSError as e:
            raise InvalidArgumentError(f"unable to read path '{sub}': {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgumentError(f"path '{sub}' is not a directory")
        self.use_root_excludes(root)
        self._group, self._group_bytes = [], 0  # none left by a walk that failed
        base = None if self.full else base_root
        for part in rel.split(b"/"):
            old = self._base_entries(base, rel).get(part) if base else None
            base = old.subtree if old is not None and old.kind == "dir" else None
        plan = Plan(broot, None if self.full or base is None else self.req.changes)
        self.written = plan.written
        self.root_dev = os.stat(broot).st_dev
        if base is not None and not plan.must_list(rel, False) and self._carried(base, rel):
            tree = base
        else:
            tree = self._dir(bsub, rel, base, plan, False)
        self.presets[bsub] = tree
        return tree

    def _carried(self, tree_id: bytes, rel: bytes) -> bool:
        """Carry a subtree over from the base (counted as a full walk would count it); False
        when a listing in it is no longer indexed (dropped by `cairn repair index`), or a blob
        below it is in no index file (an index file deleted or lost): the caller then walks the
        directory instead, so the loss does not pass into the new set."""
        try:
            shapes: dict[bytes, tuple[int, int, list[bytes]]] = {}
            gone = self.indexed.missing(tree_id, self.load_tree, _shape_into(shapes)) \
                if self.indexed is not None else None
            _fold_totals(shapes)  # the walk loaded them: their totals need no second walk
            if gone is not None:
                if len(self.tally.notes) < MAX_LISTED:
                    lost = getattr(self.writer.index, "unstored_pack", None)
                    pack = lost(gone) if lost is not None else None
                    why = (f"that lies in pack '{short(pack)}', missing from the repository" if pack is not None
                           else "that no index file names")
                    self.tally.notes.append(f"the base set's '{shown(rel) or '.'}' names blob '{short(gone.hex())}' "
                                            f"{why}: walked, and read from the source what is not stored")
                return False
            self._carry(tree_id)
            carried = getattr(self.writer, "carried", None)
            if carried is not None:  # checked again before the set commits (its pack, the index)
                carried.add(tree_id)
            return True
        except UnindexedError as e:
            self._base_lost(rel, e)
            return False
        except CorruptionError as e:
            raise self._base_damaged(rel, e) from e

    def _base_lost(self, rel: bytes, e: CairnError) -> None:
        self.tally.notes.append(f"the base set's listing of '{shown(rel) or '.'}' is lost "
                                f"({e.message}): read from the source instead")

    @staticmethod
    def _base_damaged(rel: bytes, e: CairnError) -> CorruptionError:
        """A listing that is indexed but unreadable: walking instead would store the same
        listing again by reference to the damaged copy, so the set fails with the way out."""
        return CorruptionError(
            f"unable to read the base set's listing of '{shown(rel) or '.'}': {e.message}",
            hint="run 'cairn repair index --read-data' (it drops damaged data from the index), then take "
                 "the backup again: what was lost is then read from the source and stored anew")

    def _carry(self, tree_id: bytes) -> None:
        """Count a subtree carried over from the base as a full walk would have counted it."""
        files, dirs, size = self._tree_totals(tree_id)
        self.tally.files += files
        self.tally.dirs += dirs
        self.tally.bytes_total += size
        self.progress()

    def _tree_totals(self, tree_id: bytes) -> tuple[int, int, int]:
        # (files, dirs, bytes) of a stored tree, itself counted as one directory. Tree ids name
        # their content, so a total once computed holds forever: kept in a bounded memo.
        hit = _TOTALS.get(tree_id)
        if hit is not None:
            return hit
        files, dirs, size = 0, 1, 0
        for e in self.load_tree(tree_id):
            if e.kind == "file":
                files += 1
                size += e.size
            elif e.kind == "dir" and e.subtree:
                f, d, b = self._tree_totals(e.subtree)
                files, dirs, size = files + f, dirs + d, size + b
        with _TOTALS_LOCK:
            _TOTALS[tree_id] = (files, dirs, size)
            if len(_TOTALS) > _TOTALS_MAX:
                _TOTALS.popitem(last=False)
        return files, dirs, size

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise AbortedError("backup cancelled")

    def _base_entries(self, tree_id: bytes | None, rel: bytes = b"") -> dict[bytes, Entry]:
        """The base's entries of one directory; none (everything is read) when its listing is
        no longer indexed (see _carried), noted in the set."""
        if not tree_id:
            return {}
        try:
            return {e.name: e for e in self.load_tree(tree_id)}
        except UnindexedError as e:
            self._base_lost(rel, e)
            return {}
        except CorruptionError as e:
            raise self._base_damaged(rel, e) from e

    def _dir(self, path: bytes, rel: bytes, base_tree: bytes | None, plan: Plan, under_rescan: bool,
             parent_fd: int | None = None) -> bytes:
        """Walk one directory (a source root when `parent_fd` is None, else the entry of that
        directory named by `path`'s last component); return its tree id. Its entries are
        reached through its descriptor, never by `path` (which names them in messages): a tree
        nested deeper than PATH_MAX is walked as any other, and a directory swapped for a link
        meanwhile is not followed."""
        self._check_cancel()
        under_rescan = under_rescan or rel in plan.rescan
        base = self._base_entries(base_tree, rel)
        pending: list[PendingFile] = []
        entries: list[Entry] = []
        seen: set[bytes] = set()
        dfd = -1
        try:
            try:
                dfd = _open_dir(path, parent_fd)
                scan = sorted(((os.fsencode(d.name), d) for d in os.scandir(dfd)), key=lambda nd: nd[0])
            except OSError as e:
                self.tally.errors.append(f"unable to list '{shown(path)}': {e.strerror}")
                scan = []
            for name, d in scan:
                self._check_cancel()
                child = path + b"/" + name if path != b"/" else b"/" + name
                crel = rel + b"/" + name if rel else name
                try:
                    st = d.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since the listing
                except OSError as e:  # never left out without a word
                    self.tally.errors.append(f"unable to read '{shown(child)}': {e.strerror}")
                    if name in base:
                        seen.add(name)  # not deleted: unreadable now, not gone (its base entry stays)
                        entries.append(base[name])
                    continue
                kind = kind_of(st.st_mode)
                if kind is None or self.excluder.excluded(crel, kind == "dir"):
                    continue
                seen.add(name)
                old = base.get(name)
                e = entry_from_stat(name, st, kind)
                if kind == "dir":
                    self._flush_group()  # this directory's files are read while the walk goes down
                    self._child_dir(e, dfd, child, crel, old, plan, under_rescan, st)
                    entries.append(e)
                elif kind == "file":
                    pending.append(self._file(e, dfd, child, crel, old))
                    if len(pending) >= PENDING_FILES:
                        self._take_pending(pending, entries, dfd, path, rel)
                else:
                    self._special(e, dfd, child, crel, old)
                    entries.append(e)
            self._flush_group()
            for e, fut, old in pending:
                done = self._finish_file(e, fut, old, dfd, path + b"/" + e.name, rel)
                if done is not None:
                    entries.append(done)
        finally:
            if dfd >= 0:
                self._group, self._group_bytes = [], 0  # empty unless the walk stopped here
                _settle(pending)
                os.close(dfd)
        for name, old in base.items():
            if name not in seen:
                self._count_deleted(rel + b"/" + name if rel else name, old)
        self.tally.dirs += 1
        self.progress()
        return self.writer.put_data(TYPE_TREE, encode_tree(entries))

    def _child_dir(self, e: Entry, dfd: int, child: bytes, crel: bytes, old: Entry | None, plan: Plan,
                   under_rescan: bool, st: os.stat_result) -> None:
        e.xattrs = old.xattrs if old is not None and old.kind == "dir" and old.ctime_ns == e.ctime_ns \
            else read_xattrs_at(dfd, e.name, child)
        if old is None or old.kind != "dir":
            self.tally.note("added", os.fsdecode(crel) + "/")
            if old is not None:
                self._count_deleted(crel, old)
        elif (old.mode, old.uid, old.gid, old.xattrs) != (e.mode, e.uid, e.gid, e.xattrs):
            self.tally.note("modified", os.fsdecode(crel) + "/")
        old_tree = old.subtree if old is not None and old.kind == "dir" else None
        if child in self.presets:
            e.subtree = self.presets[child]  # captured ahead of the rest (walk_sub)
        elif self.req.one_file_system and st.st_dev != self.root_dev:
            e.subtree = self.writer.put_data(TYPE_TREE, encode_tree([]))
        elif old_tree and not plan.must_list(crel, under_rescan or crel in plan.rescan) \
                and self._carried(old_tree, crel):
            e.subtree = old_tree
        else:
            e.subtree = self._dir(child, crel, old_tree, plan, under_rescan, dfd)

    def _file(self, e: Entry, dfd: int, child: bytes, crel: bytes, old: Entry | None) -> PendingFile:
        self.tally.files += 1
        self.tally.files_walked += 1
        self.tally.bytes_total += e.size
        if (not self.full and old is not None and old.kind == "file" and old.same_meta(e)
                and not self._recent(e) and not self._racy(old) and crel not in self.written):
            if self.writer.rely(old.chunks):  # (notes their packs: the commit checks they are whole)
                e.chunks, e.xattrs = old.chunks, old.xattrs
                return e, None, old
            # its content is in no index file (lost, or dropped by a repair): read it again, or
            # the new set would name blobs nobody can find
            if len(self.tally.notes) < MAX_LISTED:
                self.tally.notes.append(f"the base set's content of '{shown(crel)}' is not in the index: read "
                                        "from the source instead")
        if e.hardlink and e.hardlink in self._links:
            return e, self._links[e.hardlink], old
        if e.hardlink or (old is not None and old.hardlink):
            self.linked_change = True
        base_chunks = old.chunks if self.delta and old is not None and old.kind == "file" else None
        if not e.hardlink and base_chunks is None and e.size <= GROUP_FILE_MAX:
            slot = _InGroup(len(self._group))
            self._group.append((dfd, child, slot))
            self._group_bytes += e.size
            if len(self._group) >= GROUP_FILES or self._group_bytes >= GROUP_BYTES:
                self._flush_group()
            return e, slot, old
        fut = self.pool.submit(self._read_file, dfd, child, base_chunks)
        if e.hardlink:
            self._links[e.hardlink] = fut
        return e, fut, old

    def _flush_group(self) -> None:
        """Hand the waiting small files to the pool as one task: a hand-over between threads per
        file (submit, wake a reader, wake the walker for the result) cost more than reading it."""
        if not self._group:
            return
        group, self._group, self._group_bytes = self._group, [], 0
        fut = self.pool.submit(self._read_group, [(dfd, child) for dfd, child, _ in group])
        for _, _, slot in group:
            slot.future = fut

    def _read_group(self, children: list[tuple[int, bytes]]) -> list[FileRead]:
        return [self._read_file(dfd, child) for dfd, child in children]

    def _racy(self, old: Entry) -> bool:
        """True when the base recorded a file modified within a second of the base set's start:
        a same-size rewrite in the same timestamp tick after the base read it would leave its
        stat data unchanged, so such a file is read again (git's "racy" rule)."""
        return self.racy_since_ns is not None and old.mtime_ns >= self.racy_since_ns

    def _recent(self, e: Entry) -> bool:
        """True when strict timestamps demand a read: modified in the set's start second or later."""
        return self.strict_since_ns is not None and e.mtime_ns >= self.strict_since_ns

    def _read_file(self, dfd: int, child: bytes, base_chunks: list[bytes] | None = None) -> FileRead:
        """Read file `child` (its name in directory `dfd`): its content, and its xattrs from the
        very file read."""
        try:
            res = self.reader.read(child.rpartition(b"/")[2], base_chunks, dir_fd=dfd, xattrs=True)
        except AbortedError:
            raise
        except OSError as e:
            return None, {}, e.strerror or str(e)
        return res, res.xattrs or {}, ""

    def _take_pending(self, pending: list[PendingFile], entries: list[Entry], dfd: int, path: bytes,
                      rel: bytes) -> None:
        """Finish the older half of a directory's pending files (in order; a tree sorts its
        entries anyway), waiting for their reads: they were handed to the pool first. Only
        files whose read was handed over already: the group being filled stays."""
        taken = 0
        for e, fut, old in pending[: len(pending) // 2]:
            if isinstance(fut, _InGroup) and fut.future is None:
                break
            done = self._finish_file(e, fut, old, dfd, path + b"/" + e.name, rel)
            if done is not None:
                entries.append(done)
            taken += 1
        del pending[:taken]

    def _finish_file(self, e: Entry, fut: Future | _InGroup | None, old: Entry | None, dfd: int, child: bytes,
                     rel: bytes) -> Entry | None:
        """The entry of a file whose read (if any) finished. A file that could not be read is
        never stored as something it never was: one that vanished meanwhile is left out (and
        noted); otherwise the base's version is kept whole (metadata with its content) and the
        error recorded, or, with no base version, the file is left out and the error recorded."""
        crel = os.fsdecode(rel + b"/" + e.name if rel else e.name)
        if fut is None:
            return e
        res, xattrs, err = fut.result()
        if res is None:
            self.tally.files -= 1
            self.tally.bytes_total -= e.size
            if not _lexists_at(dfd, e.name):
                self.tally.notes.append(f"'{shown(child)}' vanished while it was read: left out")
                if old is not None:
                    self._count_deleted(rel + b"/" + e.name if rel else e.name, old)
                return None
            self.tally.errors.append(f"unable to read '{shown(child)}': {err}")
            if old is None or old.kind != "file":
                return None
            self.tally.files += 1
            self.tally.bytes_total += old.size
            return old
        fresh = entry_from_stat(e.name, res.st, "file")
        if fresh.size != res.size:  # changed while it was read: the size of what was read, not of the file now
            self.tally.bytes_total += res.size - e.size
            fresh.size, fresh.sparse = res.size, res.st.st_blocks * 512 < res.size
        fresh.chunks, fresh.xattrs = res.chunks, xattrs
        self.tally.bytes_read += res.bytes_read
        if res.fuzzy:
            self.tally.fuzzy.append(crel)
            self.tally.fuzzy_at.append(os.fsdecode(child))
        self._note_change(rel + b"/" + e.name if rel else e.name, old, fresh)
        self.progress()
        return fresh

    def _special(self, e: Entry, dfd: int, child: bytes, crel: bytes, old: Entry | None) -> None:
        if e.kind == "symlink":
            try:
                e.target = os.readlink(e.name, dir_fd=dfd)
            except OSError:
                e.target = b""
        if old is not None and old.kind == e.kind and old.same_meta(e):
            e.xattrs = old.xattrs
        else:
            e.xattrs = read_xattrs_at(dfd, e.name, child)
        self._note_change(crel, old, e)

    def _note_change(self, crel: bytes, old: Entry | None, e: Entry) -> None:
        """Count entry `e` (not a directory) against the base's `old` as `Repository.diff` names
        it: new, or in place of a directory (whose whole subtree is gone), is added; another
        kind or content or metadata than the base's is modified."""
        if old is None or old.kind == "dir":
            self.tally.note("added", os.fsdecode(crel))
            if old is not None:
                self._count_deleted(crel, old)
        elif not old.same_content_and_meta(e):
            self.tally.note("modified", os.fsdecode(crel))

    def _count_deleted(self, rel: bytes, old: Entry) -> None:
        if old.kind == "dir":
            self.tally.note("deleted", os.fsdecode(rel) + "/")
            for sub in self._base_entries(old.subtree, rel).values():
                self._count_deleted(rel + b"/" + sub.name, sub)
        else:
            self.tally.note("deleted", os.fsdecode(rel))


def _shape_into(shapes: dict[bytes, tuple[int, int, list[bytes]]]) -> Callable[[bytes, list[Entry]], None]:
    """A receiver of stored trees (IndexedTrees.missing's `seen`) that keeps, for each tree whose
    totals are not known yet, its own files and bytes and its subtrees."""

    def seen(tree: bytes, entries: list[Entry]) -> None:
        if tree not in _TOTALS:
            files = [e.size for e in entries if e.kind == "file"]
            shapes[tree] = (len(files), sum(files), [e.subtree for e in entries if e.kind == "dir" and e.subtree])
    return seen


def _fold_totals(shapes: dict[bytes, tuple[int, int, list[bytes]]]) -> None:
    """Put the (files, dirs, bytes) of the trees in `shapes` into the memo, each counted as
    Walker._tree_totals counts it, children first; a tree with a subtree neither in `shapes` nor
    in the memo is left to _tree_totals."""
    known: dict[bytes, tuple[int, int, int]] = {}
    failed: set[bytes] = set()  # a subtree below is neither in `shapes` nor in the memo

    def total(t: bytes) -> tuple[int, int, int] | None:
        return known.get(t) or _TOTALS.get(t)

    for top in shapes:
        stack = [top]  # trees are content-addressed: no tree is its own descendant
        while stack:
            t = stack[-1]
            if t in failed or total(t) is not None:
                stack.pop()
                continue
            files, size, subs = shapes[t]
            todo = [c for c in subs if c in shapes and c not in failed and total(c) is None]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            parts = [total(c) for c in subs]
            if any(p is None for p in parts):
                failed.add(t)
                continue
            dirs = 1
            for f, d, b in parts:  # type: ignore[misc]
                files, dirs, size = files + f, dirs + d, size + b
            known[t] = (files, dirs, size)
    if known:
        with _TOTALS_LOCK:
            _TOTALS.update(known)
            while len(_TOTALS) > _TOTALS_MAX:
                _TOTALS.popitem(last=False)


def _lexists_at(dfd: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def now() -> float:
    return time.time()
