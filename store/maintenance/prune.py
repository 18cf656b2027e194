"""Forgetting sets by retention policy, and garbage collection in two phases beside backups.

Garbage collection never deletes a pack in the run that finds it unreferenced:
- phase 1 (mark): forget the sets the policy drops; find the packs no remaining set, WAL
  catalog entry or index names a live blob of (dead packs), packs no index file names
  (orphans: leftovers of failed sessions, or packs of a session still running), and mostly
  dead packs (counting copies of blobs the index attributes to another pack as dead: hosts
  backing up the same new content at once each store it), whose live blobs are first copied
  into new packs; then write a marker object
  "gc/<random>" = {"time", "host", "packs"}, and once that is durable, list the locks held
  by others and write the marker again with "blockers" (those lock names);
- phase 2 (collect), in a later run (with no grace period, also in the marking run; when that
  collection deleted a delta-coded copy of a live blob, the run marks and collects once more,
  since the reference only that copy used may be free now): a marker is ripe when it has
  blockers listed, is older than the grace period (with none, at once: the marking run
  collects, whatever the wall clock did meanwhile), and none of its blockers is still held.
  A marker's age is the storage's: its object's last-modified time against the storage's now
  (store/content/locks.py), never the "time" its writer's clock put in it, so a marking host
  whose clock is behind does not shorten the grace period another host's collection keeps.
  Then, reading sets, WAL and index files only now, a marked pack is deleted when every live
  blob in it has a copy in a pack that is not marked; the others are unmarked. One index file
  naming every blob of every pack that stays is written, the index files read are deleted, the
  packs deleted, and the ripe markers removed.
Live blobs include the reference of every delta-coded copy of a live blob that an index file
names (not only of the copy the loaded index chose: collection may keep any copy), and the index
collection writes names a plain copy over a delta-coded one.
Writers (store/repository.py) treat blobs of marked packs as absent (they write them anew
instead of deduplicating), and before committing refuse a set that relies on a pack marked
by a marker whose blockers do not include their own lock. docs/format.md gives the argument
that no committed set ever references a deleted pack.

A set that a running backup builds on, or that a restore is reading (its lock names the set,
store/content/locks.py), is not forgotten, whatever the policy says: its data is what that
backup deduplicates against or what that restore still has to read. A later run forgets it once
the operation has ended.

A full disk (ENOSPC, EDQUOT) stops only the rewrites: the dead packs and orphans are still marked
and, without a grace period, collected; then the run marks once more, since the room they left
may take the rewrites, and fails naming the full disk only if it still does not.

Crash safety: every step only adds objects or deletes what the rest no longer needs, in an
order where a crash before any write or delete leaves a consistent repository and the next
run finishes the job: a marker without blockers is dropped by the next run (its packs are
marked again); a crash after the new index file leaves duplicates; after deleting packs, a
marker naming packs that are gone (deleting them again is a no-op). What to delete is
decided from the durable index, sets and WAL read after the blockers were seen gone, never
from a list made before. A run told to stop (its owner shuts down: `check_lock` raises
AbortedError, see Repository.prune) stops at the start of a phase or before its next write or
delete: the same as a crash there, with its lock released. An unreadable set object or WAL
catalog entry stops the run (what it needs cannot be known); an unreadable index file stays for
check, and its packs are never deleted.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..content.crypto import OVERHEAD
from ..content.index import encode_index
from ..content.locks import where
from ..content.packs import CODEC_ZSTD_REF, ENTRY, FOOTER, HEADER, PackEntry
from ..errors import BackendError, CorruptionError, NotFoundError
from ..model import BackupSet, PrunePolicy, PruneReport
from ..snapshots import wal as walmod
from ..snapshots.sets import resolve, set_trees
from .retention import split as retention_split

if TYPE_CHECKING:
    from ..storage.backend import Backend
    from .handle import MaintainedRepository

REWRITE_DEAD_FRACTION = 0.3
STAT_WORKERS = 8  # pack sizes asked at once (an object store answers each in a round trip)
# Seconds a marked pack waits before deletion, on top of the lock handshake (docs/format.md):
# 0 by default, so one prune frees what no running backup blocks; a repository shared by hosts
# whose restores or checks run beside prunes sets a margin ([repository] gc_grace).
GRACE = float(os.environ.get("CAIRN_GC_GRACE", "0"))
# blob -> {pack an index file names for it: (stored length, codec, offset) there}
Copies = dict[bytes, dict[str, tuple[int, int, int]]]


@dataclass
class Marker:
    """One "gc" object: packs marked for deletion at `time`; `blockers` is None until the
    locks held after the marker became durable were listed."""

    name: str
    time: float
    packs: frozenset[str]
    blockers: frozenset[str] | None = None


def encode_marker(m: Marker) -> bytes:
    doc = {"time": m.time, "host": socket.gethostname(), "packs": sorted(m.packs)}
    if m.blockers is not None:
        doc["blockers"] = sorted(m.blockers)
    return json.dumps(doc, sort_keys=True).encode()


def decode_marker(name: str, data: bytes) -> Marker:
    try:
        doc = json.loads(data)
        blockers = doc.get("blockers")
        return Marker(name, float(doc["time"]), frozenset(str(p) for p in doc["packs"]),
                      None if blockers is None else frozenset(str(b) for b in blockers))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CorruptionError(f"unable to read gc marker '{name[:8]}..': malformed") from None


def read_markers(backend: Backend, unreadable: dict[str, str] | None = None) -> list[Marker]:
    """Every readable marker. An unreadable one is skipped (it never becomes ripe; its packs
    count as unmarked, so they are only kept longer) and, with `unreadable`, noted there:
    name -> why."""
    out = []
    for name in list(backend.list("gc")):
        try:
            out.append(decode_marker(name, backend.get("gc", name)))
        except NotFoundError:
            continue
        except CorruptionError as e:
            if unreadable is not None:
                unreadable[name] = e.message
    return out


def _no_space(exc: BaseException) -> bool:
    """An ENOSPC or EDQUOT among the causes of `exc`: the repository's disk is full."""
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def choose(sets: list[BackupSet], policy: PrunePolicy) -> tuple[list[BackupSet], list[BackupSet]]:
    """Split sets into (keep, forget): per source and level, keep the newest N (None keeps all)."""
    limits = {"full": policy.keep_full, "differential": policy.keep_differential,
              "incremental": policy.keep_incremental}
    groups: dict[tuple[str, str], list[BackupSet]] = defaultdict(list)
    for s in sets:
        groups[(s.source, s.level)].append(s)
    keep, forget = [], []
    for (_, level), members in groups.items():
        members.sort(key=lambda s: (s.time_end, s.id), reverse=True)
        n = limits[level]
        keep += members if n is None else members[:n]
        forget += [] if n is None else members[n:]
    return keep, forget


class Pruner:
    """One prune run. The caller holds the gc lock (`lock_name`) and has just reloaded the index."""

    def __init__(self, repo: MaintainedRepository, check_lock: Callable[[], None] | None = None,
                 lock_name: str = "") -> None:
        self.repo = repo
        self.check_lock = check_lock or (lambda: None)
        self.lock_name = lock_name
        self.skip_wal: frozenset[str] = frozenset()  # WAL catalog objects taken as gone (a dry run's WAL retention)
        self.written = 0  # bytes of the packs this run's rewrites wrote
        self.dropped_deltas = False  # a collection deleted a delta-coded copy of a live blob
        self.no_room: BackendError | None = None  # a rewrite found the repository's disk full

    def run(self, policy: PrunePolicy, *, dry_run: bool, source: str | None,
            grace: float = GRACE) -> PruneReport:
        scope = self.repo.list_sets(source, complete=True)
        keep, forget = retention_split(scope, policy)  # retention.py: per (host, source), union of rules
        named = {resolve(scope, ref).id for ref in policy.forget}  # unknown or ambiguous: an error, nothing done
        forget += [s for s in keep if s.id in named]
        keep = [s for s in keep if s.id not in named]
        in_use = self.bases_in_use()  # a running backup builds on these: forgotten by a later run
        keep += [s for s in forget if s.id in in_use]
        forget = [s for s in forget if s.id not in in_use]
        if dry_run:
            return replace(self.plan(keep, forget), in_use=tuple(sorted(in_use.items())))
        # a damaged WAL catalog entry or listing of a kept set, or a needed blob no index file
        # names, stops the run before any change (the sets first, then their index files)
        kept = [s for s in self.repo.list_sets(complete=True) if s not in forget]
        self.repo.load_index()
        self._live(kept)
        deleted, freed = self.collect(grace)
        removed: dict[str, bytes] = {}
        for s in forget:
            self.check_lock()
            try:
                removed[s.id] = self.repo.backend.get("sets", s.id)
                self.repo.backend.delete("sets", s.id)
            except NotFoundError:
                pass
        # A backup names its base in its lock, then checks the base is still listed: one that
        # named it after the look above and checked before the delete builds on a set just
        # removed. Its object is put back (content-addressed: the same set), before anything
        # is marked.
        late = {k: v for k, v in self.bases_in_use().items() if k in removed}
        for set_id, holder in late.items():
            self.repo.backend.put("sets", set_id, removed[set_id])
            in_use[set_id] = holder
        keep += [s for s in forget if s.id in late]
        forget = [s for s in forget if s.id not in late]
        rewritten = self.mark()
        if grace <= 0:  # no grace: the run that marks may collect, once the blockers are gone
            self.dropped_deltas = False
            d, f = self.collect(0)
            deleted, freed = deleted + d, freed + f
            if self.dropped_deltas or (self.no_room and d):
                # a reference only those copies used is free now, or the dead packs deleted left
                # room for the rewrites the full disk refused: mark and collect once more
                self.no_room = None
                rewritten += self.mark()
                d, f = self.collect(0)
                deleted, freed = deleted + d, freed + f
        if self.no_room is not None:
            raise BackendError(f"unable to rewrite the mostly dead packs, {self.no_room.message}; the dead "
                               f"packs were freed ({deleted} deleted)",
                               hint="make room on the repository's disk, then run prune again") from self.no_room
        waiting, size, holders = self.waiting(grace)
        return PruneReport(forgotten=tuple(s.id for s in forget), kept=tuple(s.id for s in keep),
                           packs_deleted=deleted, packs_rewritten=rewritten,
                           bytes_freed=max(0, freed - self.written),  # net: the rewrites' copies count against
                           dry_run=False, in_use=tuple(sorted(in_use.items())),
                           waiting_packs=waiting, waiting_bytes=size, waiting_on=holders)

    def waiting(self, grace: float) -> tuple[int, int, tuple[str, ...]]:
        """What stays marked after this run: (packs, their bytes, the locks still held that were
        held when they were marked, described), so an operator sees why nothing more was freed
        (a dead host's lock stands until it is stale, or `cairn unlock` removes it)."""
        markers = [m for m in self._markers() if m.blockers is not None]
        if not markers:
            return 0, 0, ()
        alive = self.repo.locks.others_named(self.lock_name)
        now = time.time()
        packs: set[str] = set()
        holders: set[str] = set()
        for m in markers:
            blocking = m.blockers & set(alive)
            if blocking or (grace > 0 and m.time > now - grace):
                packs |= m.packs
                holders |= {self.repo.locks.describe(alive[n]) for n in blocking}
        if not packs:
            return 0, 0, ()
        sizes = {o.name: o.size for o in self.repo.backend.list_info("packs")}
        packs &= set(sizes)
        return len(packs), sum(sizes[p] for p in packs), tuple(sorted(holders))

    def bases_in_use(self) -> dict[str, str]:
        """The sets running backups build on, as their locks name them: set id -> the holder."""
        out: dict[str, str] = {}
        for doc in self.repo.locks.others(self.lock_name):
            base = doc.get("base")
            if isinstance(base, str) and base:
                out[base] = f"{doc.get('purpose', 'a backup')} on {where(doc)}"
        return out

    def plan(self, keep: list[BackupSet], forget: list[BackupSet]) -> PruneReport:
        """What a run would forget, mark and (after the grace period) delete; writes nothing.
        Counted as a run counts: a rewritten pack is also a deleted one, and the bytes are net
        (the live blobs a rewrite copies are not freed). While other operations hold locks,
        everything a run would mark waits for them (a running backup's new packs are among
        it): it is reported as waiting, not as freed."""
        forgotten = {s.id for s in forget}
        kept = [s for s in self.repo.list_sets(complete=True) if s.id not in forgotten]
        self.repo.load_index()  # after the sets: a listed set's index files are durable before it
        live = self._live(kept, self._named(with_blobs=True)[2])
        by_pack = self._by_pack()
        sizes = {o.name: o.size for o in self.repo.backend.list_info("packs")}  # one listing, no stat per pack
        stored = set(sizes)
        dead = sorted(p for p, es in by_pack.items() if not any(e.id in live for e in es))
        orphans = sorted(stored - set(by_pack))
        rewrite = sorted(p for p, es in by_pack.items() if p not in dead and self._mostly_dead(es, live))
        copies = self._holding_copies(by_pack, live, stored - set(dead) - set(rewrite), sizes)
        freed = sum(sizes.get(p, 0) for p in dead + orphans)
        freed += sum(e.stored_len for p in rewrite for e in by_pack[p] if e.id not in live)
        freed += sum(sizes.get(p, 0) - sum(e.stored_len for e in by_pack[p] if e.id in live) for p in copies)
        rewrite += copies
        deleted = len(dead) + len(orphans) + len(rewrite)
        others = self.repo.locks.others_named(self.lock_name)
        if others and deleted:
            holders = tuple(sorted({self.repo.locks.describe(doc) for doc in others.values()}))
            return PruneReport(forgotten=tuple(s.id for s in forget), kept=tuple(s.id for s in keep),
                               packs_rewritten=len(rewrite), dry_run=True, waiting_packs=deleted,
                               waiting_bytes=freed, waiting_on=holders)
        return PruneReport(forgotten=tuple(s.id for s in forget), kept=tuple(s.id for s in keep),
                           packs_deleted=deleted, packs_rewritten=len(rewrite), bytes_freed=freed, dry_run=True)

    # -- phase 1 ---------------------------------------------------------------------
    def mark(self) -> int:
        """Mark what no set, WAL entry or index needs (after copying the live blobs out of
        mostly dead packs); returns how many packs were rewritten."""
        self.check_lock()  # each phase begins with a check: a run told to stop stops between phases
        repo = self.repo
        sets = repo.list_sets(complete=True)  # before the index: a listed set's index files are durable before it
        repo.load_index()
        markers = read_markers(repo.backend)
        marked = set().union(*(m.packs for m in markers if m.blockers is not None))
        named, _complete, copies = self._named(with_blobs=True)
        live = self._live(sets, copies)
        by_pack = self._by_pack()
        sizes = {o.name: o.size for o in repo.backend.list_info("packs")}  # one listing gives the sizes too
        stored = set(sizes)
        dead = {p for p, es in by_pack.items() if not any(e.id in live for e in es)}
        # Named by an index file but gone (a rescue's writer died, a pack lost, an older index file
        # put back): unnamed on collect. Also one whose every blob the loaded index places in a
        # pack that is there: the index collection writes keeps the first copy it reads of a
        # blob, and must not keep one in a pack that is gone over the one a backup stored again.
        dead |= (set(by_pack) | named) - stored
        orphans = stored - set(by_pack)  # unindexed, or every blob in it indexed elsewhere
        rewrite = sorted(p for p, es in by_pack.items()
                         if p not in dead and p not in marked and self._mostly_dead(es, live))
        rewrite += self._holding_copies(by_pack, live, stored - dead - marked - set(rewrite), sizes)
        try:
            self._rewrite(rewrite, by_pack, live, copies, (dead | marked | set(rewrite), stored))
        except BackendError as e:
            if not _no_space(e):
                raise
            # The disk is full: the dead packs are still marked (and freed), the packs whose live
            # blobs could not be copied out stay as they are, unmarked (a new pack the rewrite
            # finished before is unindexed: an orphan, marked by the next run).
            self.no_room = e
            rewrite = []
        packs = (dead | orphans | set(rewrite)) - marked
        if packs:
            m = Marker(os.urandom(16).hex(), time.time(), frozenset(packs))
            self.check_lock()
            repo.backend.put("gc", m.name, encode_marker(m))
            blockers = set(repo.locks.others_named(self.lock_name))  # listed after the marker is durable
            m.blockers = frozenset(blockers)
            self.check_lock()
            repo.backend.put("gc", m.name, encode_marker(m))
        return len(rewrite)

    # -- phase 2 ---------------------------------------------------------------------
    def collect(self, grace: float) -> tuple[int, int]:
        """Delete the marked packs of ripe markers that are still unneeded; returns (packs
        deleted, bytes freed)."""
        self.check_lock()
        repo = self.repo
        unreadable: dict[str, str] = {}
        markers = self._markers(unreadable)
        for m in markers:  # left by a run that died before listing blockers: its packs get marked again
            if m.blockers is None:
                self.check_lock()
                self._delete("gc", m.name)
        for name in unreadable:  # damaged (markers are written whole): only unmarks; the next mark marks again
            self.check_lock()
            self._delete("gc", name)
        alive = set(repo.locks.others_named(self.lock_name))  # before reading anything the decision uses
        now = time.time()
        # No grace period: a marker's time sets no condition, so that the run that marked collects
        # even if the wall clock went back meanwhile (it would otherwise leave the packs for later).
        ripe = [m for m in markers if m.blockers is not None and (grace <= 0 or m.time <= now - grace)
                and not (m.blockers & alive)]
        if not ripe:
            return 0, 0
        candidates = set().union(*(m.packs for m in ripe))
        sets = repo.list_sets(complete=True)  # after the locks, before the index (see mark)
        repo.load_index()
        named, complete, where = self._named(with_blobs=True)
        live = self._live(sets, where)
        holds: dict[str, list[bytes]] = defaultdict(list)
        for b, packs in where.items():
            if b in live:
                for p in packs.keys() & candidates:
                    holds[p].append(b)
        kept = self._spare(candidates, holds, where)  # marked packs that stay
        doomed = {p for p in candidates - kept
                  if all(any(q not in candidates or q in kept for q in where[b]) for b in holds.get(p, ()))}
        if not complete:  # an unreadable index file may name an unindexed pack: keep those
            doomed &= named
        # its reference was live through it (_live): with the copy gone it may be free
        self.dropped_deltas |= any(where[b][p][1] == CODEC_ZSTD_REF for p in doomed for b in holds.get(p, ()))
        self._reindex(doomed)
        named_now = self._named()[0]  # a writer may have indexed a pack of the same name meanwhile
        count = freed = 0
        for p in sorted(doomed - named_now):
            size = self._size(p)
            self.check_lock()
            if self._delete("packs", p):
                count, freed = count + 1, freed + size
        for m in ripe:
            self.check_lock()
            self._delete("gc", m.name)
        return count, freed

    def _markers(self, unreadable: dict[str, str] | None = None) -> list[Marker]:
        """`read_markers`, each marker's time being when the storage last wrote its object, on
        this host's wall clock (its age by the storage's clock, subtracted from this host's now):
        what the grace period is measured against. A marker the listing no longer shows
        counts as written now."""
        backend = self.repo.backend
        written = {o.name: o.time for o in backend.list_info("gc")}
        markers = read_markers(backend, unreadable)
        storage_now, now = self.repo.locks.now(), time.time()
        return [replace(m, time=now - max(0.0, storage_now - written.get(m.name, storage_now))) for m in markers]

    def _spare(self, candidates: set[str], holds: dict[str, list[bytes]], where: Copies) -> set[str]:
        """Of the marked packs, one for each live blob that only marked packs hold: the one
        storing the fewest bytes besides its live blobs (then the first name), never one that
        storage lacks or that is shorter than its live blobs. A rerun of a prune that died
        after copying a mostly dead pack's live blobs finds the copy marked too (it was left
        unindexed, and the rerun indexed it again): sparing both would leave the old pack's
        dead bytes, and the single index entry the reindex gives a blob would leave one of the
        two unindexed."""
        # A kept delta-coded copy may be the one the reindex names: its reference is live too,
        # as `_live` counts the references of every indexed copy of a live blob.
        alone = [b for p in sorted(holds) for b in holds[p] if where[b].keys() <= candidates]
        if not alone:
            return set()
        contenders = sorted(set().union(*(where[b].keys() for b in alone)))
        sizes = {p: self._size(p) for p in contenders}
        lives = {p: sum(where[b][p][0] for b in holds[p]) for p in contenders}
        # a pack gone from storage (size 0), or shorter than its live blobs (damaged), is never spared
        dead = {p: sizes[p] - lives[p] if sizes[p] > lives[p] else math.inf for p in contenders}
        spared: set[str] = set()
        for b in alone:
            if not where[b].keys() & spared:
                spared.add(min(where[b], key=lambda p: (dead[p], p)))
        return spared

    def _delete(self, kind: str, name: str) -> bool:
        try:
            self.repo.backend.delete(kind, name)
            return True
        except NotFoundError:
            return False

    def _named(self, with_blobs: bool = False) -> tuple[set[str], bool, Copies]:
        """(packs some readable index file names, whether every index file was readable,
        blob -> {pack holding it: (its stored length, its codec, its offset) there} when
        `with_blobs`)."""
        named: set[str] = set()
        where: Copies = defaultdict(dict)
        complete = True
        for _n, got in self.repo.stored_index_files(list(self.repo.backend.list("index"))):
            try:
                if isinstance(got, Exception):
                    raise got
                packs = got
            except NotFoundError:
                continue
            except CorruptionError:
                complete = False
                continue
            named.update(packs)
            if with_blobs:
                for pack, entries in packs.items():
                    for e in entries:
                        where[e.id][pack] = (e.stored_len, e.codec, e.offset)
        return named, complete, where

    def _size(self, pack: str) -> int:
        try:
            return self.repo.backend.stat("packs", pack)
        except NotFoundError:
            return 0

    def _live(self, sets: list[BackupSet], copies: Copies | None = None) -> set[bytes]:
        """Every blob the sets and the WAL catalog need, with the references of their delta-coded
        copies (of every copy in `copies`, else of the one the index names). A listing of a set
        that cannot be read stops the run naming the set: what that listing references cannot be
        known. So does a
        needed blob that no index file names (an index file was lost): a pack no index names may
        hold it, and prune would delete that pack as a leftover (`_check_indexed`)."""
        index = self.repo.index
        live: set[bytes] = walmod.referenced_chunks(self.repo, skip=self.skip_wal)
        lost = {b for b in live if index.get(b) is None}
        needing: list[str] = ["the WAL archive"] if lost else []
        unwalked: list[tuple[BackupSet, CorruptionError | NotFoundError]] = []
        for s in sets:
            stack = [bytes.fromhex(t) for t in set_trees(s)]
            before = len(lost)
            while stack:
                tree = stack.pop()
                if tree in live:
                    if tree in lost:
                        before = -1
                    continue
                if index.get(tree) is None:
                    lost.add(tree)
                try:
                    entries = self.repo.load_tree(tree)
                except (CorruptionError, NotFoundError) as e:
                    unwalked.append((s, e))  # the other sets are still walked: the error names them all
                    before = len(lost)
                    break
                live.add(tree)
                for e in entries:
                    if e.subtree:
                        stack.append(e.subtree)
                    for c in e.chunks:
                        if c in lost or (c not in live and index.get(c) is None):
                            lost.add(c)
                            before = -1
                    live.update(e.chunks)
            if len(lost) != before:
                needing.append(f"set '{s.id[:12]}'")
        if unwalked:
            self._unwalkable(unwalked, needing)
        self._check_indexed(lost, needing)
        return live | self._references(live, copies or {})

    @staticmethod
    def _unwalkable(unwalked: list[tuple[BackupSet, CorruptionError | NotFoundError]], needing: list[str]) -> None:
        """Refuse: what the sets whose listings cannot be read need cannot be known. The hint
        names every set that stops prune (those sets, and the sets that need blobs no index file
        names), so that forgetting the sets it names lets prune run: one at a time, each run
        would stop on another."""
        s, e = unwalked[0]
        more = len(unwalked) - 1
        stopping = [x.id[:12] for x, _ in unwalked] + [n[5:-1] for n in needing if n.startswith("set '")]
        stopping = list(dict.fromkeys(stopping))
        command = " ".join(f"--forget {i}" for i in stopping[:3]) + (" ..." if len(stopping) > 3 else "")
        raise CorruptionError(
            f"unable to read set '{s.id[:12]}..': {e.message}"
            + (f" (and the listings of {more} more {'set' if more == 1 else 'sets'})" if more else "")
            + "; nothing may be deleted while what it needs cannot be known",
            hint=f"run 'cairn verify' to see the damage ('cairn repair index' may bring the listing back); if it is "
                 f"lost for good, 'cairn prune {command}' forgets {'that set' if len(stopping) == 1 else 'them'} "
                 "and lets prune run again") from e

    @staticmethod
    def _check_indexed(lost: set[bytes], needing: list[str]) -> None:
        """Refuse: blobs that `needing` (the WAL archive, sets) need are in no index file. The
        hint names the sets in the command that forgets them, as `_unwalkable` does (a client
        sees at most 256 characters of a hint: the command comes before the end)."""
        if not lost:
            return
        named = ", ".join(needing[:5]) + (f" and {len(needing) - 5} more" if len(needing) > 5 else "")
        sets = [n[5:-1] for n in needing if n.startswith("set '")]
        command = " ".join(f"--forget {i}" for i in sets[:3]) + (" ..." if len(sets) > 3 else "")
        forget = f"'cairn prune {command}' forgets {'that set' if len(sets) == 1 else 'them'}" if sets else ""
        hint = ("'cairn repair index' indexes the packs holding them; what no pack holds whole is lost: a full "
                "backup stores again what the sources hold, then "
                + (forget or "'cairn prune --forget SET' forgets a set that needs the rest"))
        if needing[:1] == ["the WAL archive"]:
            hint = ("'cairn repair index' indexes the packs holding them; what no pack holds is lost: 'cairn repair "
                    "wal' removes the WAL entries that need it" + (f", and {forget}" if forget else ""))
        raise CorruptionError(
            f"unable to prune: {len(lost)} blobs that {named} need are in no index file; nothing may be deleted "
            "while a pack that no index names may hold them", hint=hint)

    def _references(self, live: set[bytes], copies: Copies) -> set[bytes]:
        """Reference blobs of live delta blobs: they stay live too. Of every delta-coded copy an
        index file names, not only the copy the loaded index chose: a blob stored twice (a plain
        copy a prune made, a delta copy a backup made) may keep either pack, and the reindex then
        names the copy that stays, whose reference must still be there."""
        refs = set()
        reader = self.repo.reader
        for bid in live:
            loc = self.repo.index.get(bid)
            if loc is not None and loc.codec == CODEC_ZSTD_REF:
                ref = reader.reference_of(bid)
                if ref is not None:
                    refs.add(ref)
            for pack, (stored_len, codec, offset) in copies.get(bid, {}).items():
                if codec == CODEC_ZSTD_REF and (loc is None or (pack, offset) != (loc.pack, loc.offset)):
                    try:
                        refs.add(reader.reference_in(pack, bid, offset, stored_len))
                    except (CorruptionError, NotFoundError):
                        continue  # a copy that cannot be read is never the one kept (see _spare)
        return refs

    def _by_pack(self) -> dict[str, list[PackEntry]]:
        out: dict[str, list[PackEntry]] = defaultdict(list)
        for bid, loc in self.repo.index.items():
            out[loc.pack].append(PackEntry(bid, loc.type, loc.codec, loc.raw_len, loc.stored_len, loc.offset))
        return out

    @staticmethod
    def _mostly_dead(entries: list[PackEntry], live: set[bytes]) -> bool:
        total = sum(e.stored_len for e in entries) or 1
        dead = sum(e.stored_len for e in entries if e.id not in live)
        return dead / total > REWRITE_DEAD_FRACTION

    def _holding_copies(self, by_pack: dict[str, list[PackEntry]], live: set[bytes], packs: set[str],
                        sizes: dict[str, int] | None = None) -> list[str]:
        """Indexed packs among `packs` whose stored size shows that over REWRITE_DEAD_FRACTION of
        it is dead: unreferenced blobs, or copies of blobs the index attributes to another pack.
        Concurrent sessions (other hosts) that wrote the same new content each stored it; the
        index names one copy, so the others are found only by what the pack weighs."""
        seal = OVERHEAD if getattr(self.repo, "key", None) is not None else 0
        known: dict[str, int] = getattr(self.repo, "pack_sizes", {})  # a pack's name fixes its size
        known.update({p: n for p, n in (sizes or {}).items() if n})  # sizes a listing gave
        todo = sorted(packs & set(by_pack))
        missing = [p for p in todo if p not in known]
        if missing:
            with ThreadPoolExecutor(STAT_WORKERS, thread_name_prefix="gc-stat") as pool:  # a round trip each
                for p, size in zip(missing, pool.map(self._size, missing), strict=True):
                    if size:
                        known[p] = size
        out = []
        for p in todo:
            entries = by_pack[p]
            size = known.get(p, 0)
            kept = sum(e.stored_len for e in entries if e.id in live)
            frame = len(HEADER) + FOOTER.size + seal + ENTRY.size * len(entries)
            if size and (size - frame - kept) / size > REWRITE_DEAD_FRACTION:
                out.append(p)
        return out

    def _rewrite(self, packs: list[str], by_pack: dict[str, list[PackEntry]], live: set[bytes],
                 copies: Copies, going: tuple[set[str], set[str]]) -> None:
        """Copy the live blobs of `packs` into new packs, but a blob that an index file names in
        a pack that stays (not doomed, marked or rewritten now, and stored) already has its copy:
        a rerun after a prune died between its copies and its marker finds the first copies
        there, and copying again would leave two."""
        if not packs:
            return
        gone, stored = going
        writer = self.repo.writer()
        try:
            for p in packs:
                for e in by_pack[p]:
                    if e.id in live and not any(q not in gone and q in stored for q in copies.get(e.id, ())):
                        writer.put_forced(e.id, e.type, self.repo.reader.read(e.id))
            writer.finish()
            self.written += writer.pack_bytes_written
        except BaseException:
            writer.abort()
            raise

    def _reindex(self, gone: set[str]) -> None:
        """Write one index file naming every blob of every pack not in `gone` once (a plain copy
        over a delta-coded one: it needs no reference), then delete the older index files that
        were read whole (an unreadable one stays: check reports it)."""
        old = list(self.repo.backend.list("index"))
        chosen: dict[bytes, tuple[str, PackEntry]] = {}
        readable = []
        for n, got in self.repo.stored_index_files(old):
            try:
                if isinstance(got, Exception):
                    raise got
                packs = got
            except (CorruptionError, NotFoundError):
                continue
            readable.append(n)
            for pack, entries in packs.items():
                if pack in gone:
                    continue
                for e in entries:
                    had = chosen.get(e.id)
                    if had is None or (had[1].codec == CODEC_ZSTD_REF and e.codec != CODEC_ZSTD_REF):
                        chosen[e.id] = (pack, e)
        keep: dict[str, list[PackEntry]] = defaultdict(list)
        for pack, e in chosen.values():
            keep[pack].append(e)
        self.check_lock()
        name, data = encode_index(dict(keep))
        self.repo.backend.put("index", name, data)
        for n in readable:
            if n != name:
                self.check_lock()
                try:
                    self.repo.backend.delete("index", n)
                except NotFoundError:
                    pass

