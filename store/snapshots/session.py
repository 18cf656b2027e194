"""A backup session: one write session that becomes exactly one set, or nothing.

`Repository.backup` runs a whole session for plain file sources. The daemon drives sessions
step by step when a set must be captured in a particular order inside a quiesce window:
walk some roots, capture a database directory as a named attachment between
pg_backup_start and pg_backup_stop, walk the remaining roots, then commit.

What always holds: nothing is visible until `commit`, which finishes the write session
(packs, then index) before it writes the set object; `abort` (or leaving the `with` block by
an exception) leaves only unreferenced data behind. A session refreshes the repository's
index after taking its lock and before choosing its base (and lists the packs: one the index
names that storage lacks is never deduplicated against nor carried over from, so what the set
needs of it is read from the source and stored again, and the set notes it), and again before
it writes the set object, which it refuses to write if a blob it deduplicated against (or its base set) was
removed meanwhile, or that a garbage collector not waiting for this session's lock may delete
(its lock is what makes a collector keep the packs it uses): a set never references a blob it
has not seen in a durable index or written itself. A session whose shared lock is lost (cannot
be refreshed) stops like a cancelled one and commits nothing. While an index file cannot be
read, a change hint is not used: every directory is walked, so that no unchanged file is carried
over with content only that index file named (store/snapshots/backup.py reads such files again).
A base whose listing the refreshed index no longer names (an index file deleted) is no base:
the session chooses again and drops the hint made against it. A subtree carried over unread is
wholly indexed when the walk carries it (store/snapshots/indexed.py), and looked at again
before the set is written if the index lost knowledge meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from cairn.fsio.records import EntryMeta

from ..content.blobs import BlobWriter
from ..content.packs import TYPE_TREE
from ..errors import AbortedError, CairnError, FailedPreconditionError, InvalidArgumentError, short
from ..model import BackupRequest, BackupSet, ChangeHint, Progress, SetStats
from .backup import Tally, Walker, entry_from_stat, read_xattrs
from .sets import decode_set, encode_set
from .trees import Entry, encode_tree

if TYPE_CHECKING:
    from .handle import RepositoryHandle

ProgressFn = Callable[[Progress], None]
DELTA_CHUNK = 1024 * 1024  # fixed chunk size of delta-compressed attachments (page aligned)
MAX_NOTED_PACKS = 20  # missing packs a set's notes name


class BackupSession:
    """Builds one set. Use as a context manager; call walk()/attach() then commit()."""

    def __init__(self, repo: RepositoryHandle, req: BackupRequest, progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None, workers: int = 3,
                 decision: tuple[str, BackupSet | None, str] | None = None) -> None:
        repo.check_writable()
        check_paths(req.paths)
        self.repo = repo
        self._closed = True  # until the lock is held
        self._lock_lost = threading.Event()
        self._lock_cm = repo.locks.hold(f"backup of source '{req.source}'", on_lost=lambda _: self._lock_lost.set())
        self._lock = self._lock_cm.__enter__()
        self._closed = False
        try:
            self._start(req, progress, cancel, workers, decision)
        except BaseException:
            if getattr(self, "writer", None) is not None:
                self.writer.abort()
            if getattr(self, "pool", None) is not None:
                self.pool.shutdown(wait=False)
            self._release()
            raise

    def _start(self, req: BackupRequest, progress: ProgressFn | None, cancel: threading.Event | None,
               workers: int, decision: tuple[str, BackupSet | None, str] | None = None) -> None:
        self.repo.refresh_index()  # dedup only against what is durable now (a prune may have run)
        # ... and is still stored: what a pack the index names but storage lacks held is read again
        unstored = self.repo.find_unstored()
        # The caller may have decided the base already (the daemon does, once, inside the
        # window, so that its change hint and the base belong together): use it as given.
        host = req.hostname or socket.gethostname()
        machine = str(req.extra.get("machine") or "")  # where machines share the host name: its own sets
        self.level, self.base, self.note = decision if decision is not None else \
            self.repo.choose_base(req.source, req.level, host, machine)
        if self.base is not None and bytes.fromhex(self.base.tree) not in self.repo.index:
            # its listing left the index since it was chosen (an index file deleted or lost): it is
            # no base (choose_base says why), and a hint made against it goes with it
            self.level, self.base, self.note = self.repo.choose_base(req.source, req.level, host, machine)
            req = replace(req, changes=None)
        if self._declare_base(req.source):  # a prune forgot the base first: build on what is there now
            self.level, self.base, self.note = self.repo.choose_base(req.source, req.level, host, machine)
            self._declare_base(req.source, recheck=False)
            req = replace(req, changes=None)  # a change hint is relative to the base it was made for
        if self.base is not None and tuple(self.base.paths) != tuple(req.paths):
            req = replace(req, changes=None)
        unhinted = bool(self.repo.index_problems) and req.changes is not None
        if unhinted:
            # an index file cannot be read: a directory the hint leaves out would be carried over
            # unread, with files whose content it may name; walked, each such file is read again
            req = replace(req, changes=None)
        self.req = replace(req, level=self.level)
        self.requested_level = req.level
        self.progress = progress
        self.cancel = _Either(cancel, self._lock_lost)  # a lost lock stops the walk like a cancel
        self.started = time.time()
        self.tally = Tally()
        if unhinted:
            self.tally.notes.append("an index file cannot be read: every directory was walked, not only those "
                                    "the change journal named")
        for pack in sorted(unstored)[:MAX_NOTED_PACKS]:
            self.tally.notes.append(f"pack '{short(pack)}' the index names is missing from the repository: nothing "
                                    "was deduplicated against it, and what this set needs of it was read from the "
                                    "source and stored again")
        self._roots: dict[str, Entry] = {}
        self._single: bytes | None = None
        self._root_meta: dict[str, Any] | None = None  # a one-path source: its directory's metadata
        self._attachments: dict[str, dict[str, Any]] = {}
        self.writer: BlobWriter = self.repo.writer()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="backup-read")
        self._epoch = self.repo.indexed_trees.epoch  # what the walk finds whole holds until it changes
        self._walker = self._make_walker(self.req, self.tally)

    def _declare_base(self, source: str, recheck: bool = True) -> bool:
        """Name the base set in this backup's lock, so that a prune keeps it (and the data this
        backup deduplicates against through it) until the backup ends; True when the set was
        already gone once the lock said so (a prune forgot it before it could see the lock)."""
        if self.base is None:
            return False
        self.repo.locks.annotate(self._lock, base=self.base.id)
        return recheck and not self.repo.write_only and \
            all(s.id != self.base.id for s in self.repo.list_sets(source))

    def __enter__(self) -> BackupSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self.abort()

    # -- capture ---------------------------------------------------------------------
    def _make_walker(self, req: BackupRequest, tally: Tally, strict_since_ns: int | None = None,
                     delta: bool = False) -> Walker:
        tick = _ticker(self.progress, tally)
        racy = (int(self.base.time_start) - 1) * 1_000_000_000 if self.base is not None else None
        return Walker(req, self.writer, self.repo.config.chunker, self.repo.load_tree, self.pool, tally, tick,
                      self.cancel, strict_since_ns=strict_since_ns, racy_since_ns=racy,
                      fixed_size=DELTA_CHUNK if delta else None,
                      delta_base=self.repo.reader.delta_base if delta else None,
                      indexed=self.repo.indexed_trees)

    def _base_root(self, path: str) -> bytes | None:
        if self.base is None:
            return None
        tree = bytes.fromhex(self.base.tree)
        if len(self.req.paths) == 1:
            return tree
        name = os.fsencode(os.path.basename(os.path.normpath(path)))
        old = next((e for e in self.repo.load_tree(tree) if e.name == name), None)
        return old.subtree if old is not None and old.kind == "dir" else None

    def walk(self, path: str) -> None:
        """Capture one of the request's source paths."""
        if path not in self.req.paths:
            raise InvalidArgumentError(f"'{path}' is not a path of source '{self.req.source}'")
        try:
            tree, st = self._walker.walk_root(path, self._base_root(path))
        except AbortedError:
            self._lock.check()
            raise
        xattrs = read_xattrs(os.fsencode(os.path.realpath(path)))
        if len(self.req.paths) == 1:  # the set's root is the source directory: its own metadata
            self._single = tree
            self._root_meta = root_meta(st, xattrs)
            return
        name = os.fsencode(os.path.basename(os.path.normpath(path)))
        e = entry_from_stat(name, st, "dir")
        e.subtree = tree
        e.xattrs = xattrs
        self._roots[path] = e

    def set_changes(self, hint: ChangeHint | None) -> None:
        """Use `hint` for the walks from now on (a newer hint against the same base)."""
        if self.base is not None and tuple(self.base.paths) != tuple(self.req.paths) or self.repo.index_problems:
            hint = None
        self.req = replace(self.req, changes=hint)
        self._walker.req = self.req

    def walk_sub(self, path: str) -> None:
        """Capture directory `path`, inside one of the request's source paths, ahead of the rest
        of that path; it keeps its place in the set's tree."""
        root = next((p for p in self.req.paths
                     if os.path.abspath(path).startswith(os.path.abspath(p).rstrip("/") + "/")), None)
        if root is None:
            raise InvalidArgumentError(f"'{path}' is not below a path of source '{self.req.source}'")
        self._walker.walk_sub(root, path, self._base_root(root))

    def walk_all(self) -> None:
        """Capture every source path not captured yet, in configured order."""
        for p in self.req.paths:
            if p not in self._roots and not (len(self.req.paths) == 1 and self._single is not None):
                self.walk(p)

    def attach(self, name: str, path: str, excludes: tuple[str, ...] = (), *, strict_times: bool = True,
               delta: bool = True) -> None:
        """Capture directory `path` as attachment `name` (e.g. 'db:appdb'), compared against the
        base set's attachment of the same name. With strict_times, files modified in the second
        the set started (or later) are read even when their stat data matches the base. With
        delta (for database files, which are rewritten in place), files are cut into fixed
        1 MiB chunks and a changed chunk is stored compressed against the base's chunk at the
        same position, so only the changed pages cost space."""
        old = self.base.attachments.get(name) if self.base is not None else None
        base_tree = bytes.fromhex(old["tree"]) if old else None
        tally = Tally()
        req = replace(self.req, paths=(path,), excludes=tuple(excludes), changes=None, root_excludes=())
        strict = (int(self.started) - 1) * 1_000_000_000 if strict_times else None
        try:
            tree, _ = self._make_walker(req, tally, strict, delta).walk_root(path, base_tree)
        except AbortedError:
            self._lock.check()
            raise
        self._attachments[name] = {
            "tree": tree.hex(), "path": path, "files": tally.files, "bytes_total": tally.bytes_total,
            "bytes_read": tally.bytes_read, "added": tally.n_added, "modified": tally.n_modified,
            "deleted": tally.n_deleted, "fuzzy_paths": tally.fuzzy[:100],
        }

    def attach_stream(self, name: str, fd: int, filename: str) -> int:
        """Capture everything readable from `fd` (a pipe) as attachment `name` holding one file
        `filename`, chunked like files (store/snapshots/stream.py); returns the bytes read."""
        from .stream import read_stream, stream_tree

        chunks, size = read_stream(self.writer, self.repo.config.chunker, self.cancel, fd)
        tree = self.writer.put_data(TYPE_TREE, stream_tree(filename, chunks, size))
        self._attachments[name] = {
            "tree": tree.hex(), "path": "", "files": 1, "bytes_total": size, "bytes_read": size,
            "added": 1, "modified": 0, "deleted": 0, "fuzzy_paths": [],
        }
        return size

    def describe_attachment(self, name: str, key: str, value: Any) -> None:
        """Record `value` under `key` in the metadata of attachment `name` (e.g. what a database
        capture recorded); the attachment must have been captured in this session."""
        if name not in self._attachments:
            raise InvalidArgumentError(f"no attachment '{name}' was captured in this set")
        self._attachments[name][key] = value

    def _explain_by_lock(self) -> None:
        """Raise the lock's error instead when the lock was removed (`cairn unlock` while this
        ran; a collector then frees what the session wrote, which fails it in other words)."""
        with contextlib.suppress(CairnError):
            self.repo.locks.confirm(self._lock)
        self._lock.check()

    # -- end -------------------------------------------------------------------------
    def commit(self, extra: dict[str, Any] | None = None) -> BackupSet:
        """Finish the write session and write the set object; returns the committed set."""
        self.walk_all()
        if self._single is not None:
            tree = self._single
        else:
            tree = self.writer.put_data(TYPE_TREE, encode_tree([self._roots[p] for p in self.req.paths]))
        try:
            self.writer.finish()
        except CairnError:
            self._explain_by_lock()
            raise
        finally:
            self._shutdown()
        fields = self._fields(tree, extra or {})
        set_id, data = encode_set(fields)
        try:
            self._lock.check()
            self.repo.confirm_deduped(self.writer, self.base, self._lock.name)
            self._confirm_carried()
            self._lock.check()
            self.repo.backend.put("sets", set_id, data)
        finally:
            self._release()
        self.repo.remember("sets", set_id, data)
        t = self.tally
        if self.progress is not None:
            self.progress(Progress("done", t.files, t.files, t.bytes_total, t.bytes_total))
        return decode_set(set_id, data)  # not re-listed: a concurrent prune may forget it at once

    def _confirm_carried(self) -> None:
        """When the index lost knowledge while this session ran (IndexedTrees' epoch moved on),
        look again at the subtrees it carried over from its base: one with a blob that no index
        file names now fails the commit (the next backup walks it and reads what is lost)."""
        indexed = self.repo.indexed_trees
        if indexed.epoch == self._epoch:
            return
        for tree in sorted(getattr(self.writer, "carried", ())):  # (every walker of the session adds to it)
            gone = indexed.missing(tree, self.repo.load_tree)
            if gone is not None:
                raise FailedPreconditionError(
                    f"unable to commit: blob '{short(gone.hex())}' of what this backup carries over from its base "
                    "set left the index while it ran (an index file deleted or replaced)",
                    hint="run the backup again: it reads from the source what no index file names; 'cairn verify' "
                         "names the packs no index file names, and 'cairn repair index' indexes them again")

    def abort(self) -> None:
        """Drop the session: nothing becomes visible."""
        if self._closed:
            return
        self.writer.abort()
        self._shutdown()
        self._release()

    def _shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            self._lock_cm.__exit__(None, None, None)

    def _fields(self, tree: bytes, extra: dict[str, Any]) -> dict:
        t, w = self.tally, self.writer
        stats = SetStats(
            files=t.files, dirs=t.dirs, bytes_total=t.bytes_total, added=t.n_added, modified=t.n_modified,
            deleted=t.n_deleted, bytes_read=t.bytes_read, bytes_added=w.bytes_added, chunks_added=w.blobs_added,
            added_paths=tuple(t.added), modified_paths=tuple(t.modified), deleted_paths=tuple(t.deleted),
            fuzzy_paths=tuple(t.fuzzy), files_walked=t.files_walked,
            paths_truncated=(t.n_added > len(t.added) or t.n_modified > len(t.modified)
                             or t.n_deleted > len(t.deleted)))
        extra = {**self.req.extra, **extra}
        if self._root_meta is not None:
            extra["root"] = self._root_meta
        if t.errors:
            extra["errors"] = t.errors[:100]
        if t.notes:
            extra["notes"] = t.notes[:100]
        return {
            "source": self.req.source, "level": self.level, "requested_level": self.requested_level,
            "base": self.base.id if self.base else None, "time_start": self.started, "time_end": time.time(),
            "hostname": self.req.hostname or socket.gethostname(), "paths": list(self.req.paths),
            "tree": tree.hex(), "stats": asdict(stats), "tags": list(self.req.tags), "note": self.note,
            "extra": extra, "attachments": self._attachments,
        }


def root_meta(st: os.stat_result, xattrs: dict[bytes, bytes]) -> dict[str, Any]:
    """The metadata of a one-path source's own directory, as a set's extra['root'] holds it
    (restored onto the target directory of a whole-set restore)."""
    return {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
            "xattrs": {k.hex(): v.hex() for k, v in sorted(xattrs.items())}}


def root_entry(s: BackupSet) -> EntryMeta | None:
    """The restore record of set `s`'s root directory (path b''): None when the set has no
    root metadata (several source paths, or taken before sets recorded it)."""
    meta = s.extra.get("root") if isinstance(s.extra, dict) else None
    if not isinstance(meta, dict):
        return None
    try:
        return EntryMeta(path=b"", kind="dir", mode=int(meta["mode"]), uid=int(meta["uid"]), gid=int(meta["gid"]),
                         mtime_ns=int(meta["mtime_ns"]),
                         xattrs={bytes.fromhex(k): bytes.fromhex(v) for k, v in meta.get("xattrs", {}).items()})
    except (KeyError, TypeError, ValueError):
        return None  # not ours to trust: the target keeps its own metadata


def check_paths(paths: tuple[str, ...]) -> None:
    """A request needs at least one path; with several, each names its own subtree of the root
    by basename, so the basenames must be distinct (and not empty, as for '/')."""
    if not paths:
        raise InvalidArgumentError("a backup needs at least one source path")
    if len(paths) > 1:
        names = [os.path.basename(os.path.normpath(p)) for p in paths]
        clash = next((n for n in names if not n or names.count(n) > 1), None)
        if clash is not None:
            raise InvalidArgumentError(f"source paths must have distinct names: '{clash or '/'}' is ambiguous")


class _Either:
    """Set when any of its events is set (the caller's cancel, or the session's lost lock)."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def _ticker(progress: ProgressFn | None, tally: Tally) -> Callable[[], None]:
    last = [0.0]

    def tick() -> None:
        if progress is None:
            return
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            progress(Progress("backup", tally.files, 0, tally.bytes_read, 0))
    return tick
