"""Copying sets (with the WAL they need) from one repository into another (3-2-1 copies).

The destination keys its blobs differently (keyed blake3 and a secret chunker seed in format 2,
plain blake3 in format 1), so every blob is re-identified: a chunk's plaintext is read from the
source and stored under the id the destination gives it; trees are rewritten with the new ids.
Content is not re-chunked: a copied file has the same chunk boundaries as in the source (it
still deduplicates against other copies; new backups into the destination cut their own way).
A delta blob (codec 2) stays a delta against the copy of its reference.

What always holds:
- one copied set is one write session of the destination, with the commit path of a backup:
  shared lock, packs, index files, `confirm_deduped`, then the WAL catalog entries the set
  needs, then the set object last. A copy stopped at any point leaves only unreferenced data
  and whole WAL entries behind: no set is visible without all its data;
- a copied set records where it came from in `extra.copied_from` (the original set's id,
  source, host and times, and the source repository's id); a set whose original is already in
  the destination (as a copy, or as the set itself) is skipped, so a rerun copies nothing that
  is there and a killed copy resumes with the sets it had not committed;
- a subtree is carried without reading it only when the source tree was matched against a
  destination set that is still listed when the copy commits, so no copied set relies on a
  tree whose blobs a collector may have freed;
- a set whose data cannot be read (damaged or lost in the source) is not copied and is named
  in the report's `failed`, with why; the copy goes on with the next set. Damage only to what
  a set would be matched against (its base's set object, a listing only that base has) stops
  nothing: the set is read whole;
- nothing in the source is written but a shared lock while it is read (so its garbage
  collector keeps the packs the copy reads), and nothing existing in the destination is
  rewritten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .content.blobs import BlobWriter
from .content.packs import CODEC_ZSTD_REF, TYPE_DATA, TYPE_TREE
from .errors import (
    AbortedError,
    AlreadyExistsError,
    BackendError,
    CorruptionError,
    FailedPreconditionError,
    NotFoundError,
    WrongKeyError,
    short,
)
from .model import BackupSet, Progress
from .snapshots import wal as walmod
from .snapshots.sets import decode_set, encode_set, set_fields
from .snapshots.trees import Entry, encode_tree

if TYPE_CHECKING:
    from .content.crypto import Secret
    from .locations import S3Options
    from .repository import Repository

ORIGIN_KEY = "copied_from"  # in a copied set's `extra`
WORKERS = 4  # chunks read, re-identified and stored at once
ProgressFn = Callable[[Progress], None]
WalNeed = Callable[[BackupSet], list[tuple[str, str]]]


@dataclass(frozen=True)
class CopyReport:
    """What a copy did: (source id, destination id) of each set copied or found there already."""

    copied: tuple[tuple[str, str], ...] = ()
    present: tuple[tuple[str, str], ...] = ()
    wal_copied: int = 0
    wal_present: int = 0
    bytes_read: int = 0  # plaintext read from the source
    bytes_added: int = 0  # stored bytes new in the destination
    warnings: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()  # (source id, why) of sets that could not be read whole


def origin(s: BackupSet, repo_id: str) -> dict[str, Any]:
    """Where set `s` of repository `repo_id` came from: its own original when it is itself a
    copy (so copies of copies are recognised), else itself."""
    got = s.extra.get(ORIGIN_KEY) if isinstance(s.extra, dict) else None
    if isinstance(got, dict) and isinstance(got.get("set"), str):
        return dict(got)
    return {"set": s.id, "repository": repo_id, "source": s.source, "hostname": s.hostname,
            "time_start": s.time_start, "time_end": s.time_end}


def known_originals(dst: Repository) -> dict[str, BackupSet]:
    """Destination sets by every original set id they stand for (their own and their origin's)."""
    out: dict[str, BackupSet] = {}
    for d in dst.list_sets():
        out[d.id] = d
        got = d.extra.get(ORIGIN_KEY) if isinstance(d.extra, dict) else None
        if isinstance(got, dict) and isinstance(got.get("set"), str):
            out.setdefault(got["set"], d)
    return out


@dataclass
class _Session:
    """The state of copying one set: the destination writer and what it relies on."""

    writer: BlobWriter
    trees: dict[bytes, bytes] = field(default_factory=dict)  # written in this session
    anchors: set[str] = field(default_factory=set)  # destination sets whose subtrees it carries
    bytes_read: int = 0
    bytes_seen: int = 0


class Copier:
    """Copies sets from `src` into `dst` (both open; `dst` writable). `wal_for(set)` names the
    (name space, file name) WAL entries a set needs (the store knows no engine: the daemon
    says); `progress` gets Progress("copy", sets done, sets, bytes done, bytes) events."""

    def __init__(self, src: Repository, dst: Repository, *, wal_for: WalNeed | None = None,
                 progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                 workers: int = WORKERS) -> None:
        dst.check_writable()
        if src.config.id == dst.config.id:
            raise FailedPreconditionError("unable to copy: the destination is the source repository")
        self.src, self.dst = src, dst
        self.wal_for = wal_for
        self.progress = progress
        self.cancel = cancel
        self.workers = max(1, workers)
        self.chunks: dict[bytes, bytes] = {}  # source blob id -> destination blob id (same plaintext)
        self.carried: dict[bytes, tuple[bytes, str]] = {}  # source tree -> (destination tree, its set)
        self._matched: set[str] = set()  # destination sets already matched against the source

    # -- the whole run -------------------------------------------------------------------
    def run(self, sets: list[BackupSet]) -> CopyReport:
        """Copy `sets` (oldest first, so a base is there before the sets built on it). A writable
        source is read under a shared lock, so its garbage collector keeps what the copy reads."""
        if self.src.read_only:
            return self._run(sets)
        with self.src.locks.hold("copy to another repository"):
            self.src.refresh_index()
            return self._run(sets)

    def _run(self, sets: list[BackupSet]) -> CopyReport:
        sets = sorted({s.id: s for s in sets}.values(), key=lambda s: (s.time_end, s.id))
        have = known_originals(self.dst)
        todo = [s for s in sets if origin(s, self.src.config.id)["set"] not in have]
        present = [(s.id, have[origin(s, self.src.config.id)["set"]].id) for s in sets
                   if origin(s, self.src.config.id)["set"] in have]
        total = sum(_set_bytes(s) for s in todo)
        copied: list[tuple[str, str]] = []
        failed: list[tuple[str, str]] = []
        wal_copied = wal_present = read = added = 0
        warnings: list[str] = []
        done_bytes = 0
        self._emit(0, len(todo), 0, total)
        for i, s in enumerate(todo):
            self._stop_if_cancelled()
            try:
                d, sess, w_new, w_old, warn = self._copy_one(s, have, i, len(todo), done_bytes, total)
            except (CorruptionError, NotFoundError) as e:
                # this set's data is damaged or lost: nothing of it was committed, and the sets
                # after it (each one whole by itself) are still copied
                failed.append((s.id, e.message))
                done_bytes += _set_bytes(s)
                continue
            have[origin(s, self.src.config.id)["set"]] = d
            copied.append((s.id, d.id))
            wal_copied += w_new
            wal_present += w_old
            read += sess.bytes_read
            added += sess.writer.bytes_added
            warnings += warn
            done_bytes += _set_bytes(s)
            self._emit(i + 1, len(todo), done_bytes, total, "done" if i + 1 == len(todo) else f"set {short(s.id)}")
        return CopyReport(copied=tuple(copied), present=tuple(present), wal_copied=wal_copied,
                          wal_present=wal_present, bytes_read=read, bytes_added=added, warnings=tuple(warnings),
                          failed=tuple(failed))

    def _emit(self, done: int, total: int, bytes_done: int, bytes_total: int, phase: str = "copy") -> None:
        """Progress: sets done of sets, bytes of them done; the phase names the set being copied."""
        if self.progress is not None:
            self.progress(Progress(phase, done, total, min(bytes_done, bytes_total), bytes_total))

    def _stop_if_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise AbortedError("copy cancelled")

    # -- one set ---------------------------------------------------------------------------
    def _copy_one(self, s: BackupSet, have: dict[str, BackupSet], n: int, count: int, done: int,
                  total: int) -> tuple[BackupSet, _Session, int, int, list[str]]:
        self._match_anchor(s, have)
        dst = self.dst
        lost = threading.Event()
        with dst.locks.hold(f"copy of set '{short(s.id)}'", on_lost=lambda _why: lost.set()) as lock:
            dst.refresh_index()
            sess = _Session(dst.writer())
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="copy-read")
            gate = threading.BoundedSemaphore(self.workers * 2)
            last = [0.0]

            def tick() -> None:
                if lost.is_set():
                    lock.check()
                self._stop_if_cancelled()
                now = time.monotonic()
                if now - last[0] >= 0.2:
                    last[0] = now
                    self._emit(n, count, done + sess.bytes_seen, total, f"set {short(s.id)}")

            try:
                root = self._tree(sess, pool, gate, bytes.fromhex(s.tree), tick)
                attachments = {}
                for name, att in s.attachments.items():
                    attachments[name] = {**att, "tree": self._tree(sess, pool, gate, bytes.fromhex(att["tree"]),
                                                                   tick).hex()}
                wal, warnings = self._wal(sess, s)
                sess.writer.finish()
            except BaseException:
                sess.writer.abort()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            fields = set_fields(s)
            fields.update(tree=root.hex(), attachments=attachments,
                          base=self._dst_id(s.base, have), extra={**s.extra,
                                                                 ORIGIN_KEY: origin(s, self.src.config.id)})
            set_id, data = encode_set(fields)
            lock.check()
            dst.confirm_deduped(sess.writer, None, lock.name)
            listed = {x.id for x in dst.list_sets()}
            gone = sorted(sess.anchors - listed)
            if gone:
                raise FailedPreconditionError(f"unable to commit the copy of set '{short(s.id)}': set "
                                              f"'{short(gone[0])}' it shares trees with was removed meanwhile "
                                              "(a prune?)", hint="run the copy again")
            wal_new = wal_old = 0
            for obj, doc in wal:
                lock.check()
                if self._put_wal(obj, doc):
                    wal_new += 1
                else:
                    wal_old += 1
            lock.check()
            dst.backend.put("sets", set_id, data)
        d = decode_set(set_id, data)
        for st, dt in sess.trees.items():
            self.carried[st] = (dt, d.id)
        return d, sess, wal_new, wal_old, warnings

    def _dst_id(self, src_id: str | None, have: dict[str, BackupSet]) -> str | None:
        """The destination id of the copy of source set `src_id` (its base), if there is one
        (none when that set is gone or its object cannot be read: the copy is whole without it)."""
        if not src_id:
            return None
        try:
            base = self.src.get_set(src_id)
        except (NotFoundError, CorruptionError):
            return None
        d = have.get(origin(base, self.src.config.id)["set"])
        return d.id if d is not None else None

    # -- matching what is there --------------------------------------------------------------
    def _match_anchor(self, s: BackupSet, have: dict[str, BackupSet]) -> None:
        """Learn the destination ids of what `s` shares with a set already copied: its base's
        copy, else the newest copy of a set of the same source and host (trees only are read). A
        base or a tree that cannot be read (damaged) only teaches nothing: `s` is read whole."""
        candidates = []
        if s.base:
            try:
                candidates.append(self.src.get_set(s.base))
            except (NotFoundError, CorruptionError):
                pass
        same = [x for x in self.src.list_sets(s.source) if x.hostname == s.hostname and x.time_end <= s.time_end]
        candidates += sorted(same, key=lambda x: (x.time_end, x.id), reverse=True)
        for cand in candidates:
            d = have.get(origin(cand, self.src.config.id)["set"])
            if d is None:
                continue
            if d.id in self._matched:
                return
            self._matched.add(d.id)
            self._match(bytes.fromhex(cand.tree), bytes.fromhex(d.tree), d.id)
            for name, att in cand.attachments.items():
                other = d.attachments.get(name)
                if other:
                    self._match(bytes.fromhex(att["tree"]), bytes.fromhex(other["tree"]), d.id)
            return

    def _match(self, st: bytes, dt: bytes, anchor: str) -> bool:
        """Walk source tree `st` and its copy `dt` side by side, learning chunk and tree ids.
        False (and nothing learnt for this tree) if they do not have the same shape."""
        if st in self.carried:
            return True
        try:
            se, de = self.src.load_tree(st), self.dst.load_tree(dt)
        except (CorruptionError, NotFoundError):
            return False
        if [(e.name, e.kind, len(e.chunks)) for e in se] != [(e.name, e.kind, len(e.chunks)) for e in de]:
            return False
        ok = True
        for a, b in zip(se, de, strict=True):
            if a.kind == "dir" and a.subtree and b.subtree:
                ok = self._match(a.subtree, b.subtree, anchor) and ok
            for x, y in zip(a.chunks, b.chunks, strict=True):
                self.chunks[x] = y
        if ok:
            self.carried[st] = (dt, anchor)
        return ok

    # -- writing ------------------------------------------------------------------------------
    def _tree(self, sess: _Session, pool: ThreadPoolExecutor, gate: threading.BoundedSemaphore, st: bytes,
              tick: Callable[..., None]) -> bytes:
        """The destination id of source tree `st`, storing it (and what it holds) as needed."""
        hit = sess.trees.get(st)
        if hit is not None:
            return hit
        carried = self.carried.get(st)
        if carried is not None and carried[0] in self.dst.index:
            sess.writer.deduped.add(carried[0])
            sess.anchors.add(carried[1])
            return carried[0]
        entries = self.src.load_tree(st)
        pending: list[tuple[Entry, list[Future[bytes]]]] = []
        out: list[Entry] = []
        for e in entries:
            tick()
            if e.kind == "dir" and e.subtree:
                sub = self._tree(sess, pool, gate, e.subtree, tick)
                out.append(_with(e, subtree=sub))
            elif e.kind == "file" and e.chunks:
                futs = []
                for c in e.chunks:
                    gate.acquire()
                    fut = pool.submit(self._chunk, sess, c)
                    fut.add_done_callback(lambda _f: gate.release())
                    futs.append(fut)
                pending.append((e, futs))
                sess.bytes_seen += e.size
                out.append(e)
            else:
                out.append(e)
        mapped = {id(e): [f.result() for f in futs] for e, futs in pending}
        out = [_with(e, chunks=mapped[id(e)]) if id(e) in mapped else e for e in out]
        dt = sess.writer.put_data(TYPE_TREE, encode_tree(out))
        sess.trees[st] = dt
        return dt

    def _chunk(self, sess: _Session, c: bytes) -> bytes:
        """The destination id of source data blob `c`, stored in the destination if missing."""
        w = sess.writer
        d = self.chunks.get(c)
        if d is not None and w.has(d):
            if d in w.index:
                w.deduped.add(d)
            return d
        data = self.src.reader.read(c)
        sess.bytes_read += len(data)
        d = w.blob_id(data)
        self.chunks[c] = d
        ref = self.src.reader.reference_of(c) if self._is_delta(c) else None
        if ref is not None:
            ref_d = self._chunk(sess, ref)
            ref_data = self.src.reader.read(ref)
            w.put_many(TYPE_DATA, [(d, memoryview(data))], delta_base=lambda _i: (ref_d, ref_data))
        else:
            w.put(d, TYPE_DATA, data)
        return d

    def _is_delta(self, c: bytes) -> bool:
        loc = self.src.index.get(c)
        return loc is not None and loc.codec == CODEC_ZSTD_REF

    # -- WAL ----------------------------------------------------------------------------------
    def _wal(self, sess: _Session, s: BackupSet) -> tuple[list[tuple[str, dict]], list[str]]:
        """The WAL catalog entries set `s` needs, their chunks stored in the destination: a list
        of (object name, catalog document with destination chunk ids), and warnings for entries
        the source lacks."""
        if self.wal_for is None:
            return [], []
        out, warnings, seen = [], [], set()
        for ns, name in self.wal_for(s):
            found = None
            for obj in ([walmod.object_name(ns, name)] if ns else []) + [name]:
                try:
                    found = obj, walmod.decode_catalog(obj, self.src.backend.get("wal", obj))
                    break
                except NotFoundError:
                    continue
            if found is None:
                warnings.append(f"set '{short(s.id)}' needs WAL file '{walmod.display_name(ns, name)}', which the "
                                "source repository does not hold")
                continue
            obj, doc = found
            if obj in seen:
                continue
            seen.add(obj)
            self._stop_if_cancelled()
            if self._have_wal(obj, doc):  # written after its chunks: whole, and it keeps them alive
                out.append((obj, doc))
                continue
            chunks = [self._chunk(sess, bytes.fromhex(c)).hex() for c in doc["chunks"]]
            out.append((obj, {**doc, "chunks": chunks}))
        return out, warnings

    def _have_wal(self, obj: str, doc: dict) -> bool:
        """Whether the destination holds WAL entry `obj` with this content (an error if it holds
        other content under that name)."""
        try:
            have = walmod.decode_catalog(obj, self.dst.backend.get("wal", obj))
        except NotFoundError:
            return False
        if have.get("hash") == doc["hash"] and have.get("size") == doc["size"]:
            return True
        ns, name = walmod.split_object(obj)
        raise AlreadyExistsError(f"unable to copy WAL file '{walmod.display_name(ns, name)}': the destination "
                                 "holds different content under that name")

    def _put_wal(self, obj: str, doc: dict) -> bool:
        """Write one WAL catalog entry unless the destination has it; True if written."""
        if self._have_wal(obj, doc):
            return False
        self.dst.backend.put("wal", obj, walmod.encode_catalog(doc["size"], doc["hash"], doc["chunks"],
                                                               doc.get("time")))
        return True


def _with(e: Entry, **changes: Any) -> Entry:
    """A copy of entry `e` with `changes` (entries are mutable dataclasses shared by the cache)."""
    from dataclasses import replace

    return replace(e, **changes)


def _set_bytes(s: BackupSet) -> int:
    return s.stats.bytes_total + sum(int(a.get("bytes_total") or 0) for a in s.attachments.values())


def copy_sets(src: Repository, dst: Repository, sets: list[BackupSet] | None = None, *,
              wal_for: WalNeed | None = None, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None) -> CopyReport:
    """Copy `sets` (default: every set of `src`) into `dst`; see the module docstring."""
    chosen = src.list_sets() if sets is None else sets
    return Copier(src, dst, wal_for=wal_for, progress=progress, cancel=cancel).run(chosen)


def open_destination(location: str, secret: Secret, options: S3Options | None = None) -> Repository:
    """The destination repository at `location` (a directory or s3://bucket/prefix): opened with
    `secret`, or created there as an encrypted (format 2) repository under it when nothing is
    there yet. A wrong key, an unreachable place and a plaintext destination are one-line errors."""
    from .locations import open_repository

    try:
        dst = open_repository(location, options, create=True, secret=secret)
    except WrongKeyError as e:
        raise WrongKeyError(f"unable to open destination repository '{location}': wrong passphrase or key file",
                            hint=e.hint) from None
    except OSError as e:
        raise BackendError(f"unable to reach destination repository '{location}': {e.strerror or e}") from None
    except BackendError as e:
        raise BackendError(f"unable to reach destination repository '{location}': {e.message}", hint=e.hint) from None
    if not dst.encrypted:
        dst.close()
        raise FailedPreconditionError(f"destination repository '{location}' is not encrypted (format 1): a copy "
                                      "writes only into an encrypted repository")
    return dst
