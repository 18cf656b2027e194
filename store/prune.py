"""Forgetting sets by retention policy and freeing what no remaining set references.

Order, so that a crash before any write or delete leaves a consistent repository and the
same (or any other) prune can simply run again:
1. delete the set objects being forgotten (nothing else refers to a set object);
2. copy the live blobs of mostly-dead packs into new packs, with their own index file;
3. write one index file naming every blob of every pack that stays, then delete the older
   index files (only those read whole: an unreadable one is damage and stays for check);
4. read back the index files now present and delete only the stored packs none of them
   names (a pack any index file names is never deleted; while an index file is unreadable,
   only packs this run dropped from the index are deleted).
What to delete is decided from the durable index, never from a list made before writing:
packs are named by content, so a rerun may write a pack identical to a leftover of the
interrupted run, and that pack is then named and kept. A crash after 1 leaves unreferenced
data; after 2 or 3, blobs indexed twice; after 3, packs no index names: all harmless, and
the next prune finishes the job. WAL chunks stay live while their catalog entry exists; an
unreadable catalog entry stops prune (its chunks cannot be known).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import wal as walmod
from .errors import CorruptionError, NotFoundError
from .index import decode_index, encode_index
from .model import BackupSet, PrunePolicy, PruneReport
from .packs import CODEC_ZSTD_REF, PackEntry
from .retention import split as retention_split
from .sets import set_trees

if TYPE_CHECKING:
    from .repository import Repository

REWRITE_DEAD_FRACTION = 0.3


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
    """One prune run (the caller holds the exclusive lock and has just reloaded the index)."""

    def __init__(self, repo: Repository, check_lock: Callable[[], None] | None = None) -> None:
        self.repo = repo
        self.check_lock = check_lock or (lambda: None)

    def run(self, policy: PrunePolicy, *, dry_run: bool, source: str | None) -> PruneReport:
        scope = self.repo.list_sets(source)
        keep, forget = retention_split(scope, policy)  # store/retention.py: per (host, source), union of rules
        forgotten = {s.id for s in forget}
        remaining = [s for s in self.repo.list_sets() if s.id not in forgotten]
        live = self._live(remaining)
        by_pack = self._by_pack()
        stored = set(self.repo.backend.list("packs"))
        dead_packs = sorted(p for p, es in by_pack.items() if not any(e.id in live for e in es))
        orphans = sorted(stored - set(by_pack))
        rewrite = sorted(p for p, es in by_pack.items() if p not in dead_packs and self._mostly_dead(es, live))
        freed = sum(self._size(p) for p in dead_packs + orphans)
        deleted = len(dead_packs) + len(orphans)
        if not dry_run:
            for s in forget:
                self.check_lock()
                try:
                    self.repo.backend.delete("sets", s.id)
                except NotFoundError:
                    pass
            self._rewrite(rewrite, by_pack, live)
            dropped = set(dead_packs) | set(rewrite)
            self._reindex(dropped)
            deleted = self._delete_unnamed(dropped)
        freed += sum(e.stored_len for p in rewrite for e in by_pack[p] if e.id not in live)
        return PruneReport(forgotten=tuple(s.id for s in forget), kept=tuple(s.id for s in keep),
                           packs_deleted=deleted, packs_rewritten=len(rewrite), bytes_freed=freed,
                           dry_run=dry_run)

    def _size(self, pack: str) -> int:
        try:
            return self.repo.backend.stat("packs", pack)
        except NotFoundError:
            return 0

    def _live(self, sets: list[BackupSet]) -> set[bytes]:
        live: set[bytes] = walmod.referenced_chunks(self.repo)
        stack = [bytes.fromhex(t) for s in sets for t in set_trees(s)]
        while stack:
            tree = stack.pop()
            if tree in live:
                continue
            live.add(tree)
            for e in self.repo.load_tree(tree):
                if e.subtree:
                    stack.append(e.subtree)
                live.update(e.chunks)
        return live | self._references(live)

    def _references(self, live: set[bytes]) -> set[bytes]:
        """Reference blobs of live delta blobs: they stay live too."""
        refs = set()
        for bid in live:
            loc = self.repo.index.get(bid)
            if loc is not None and loc.codec == CODEC_ZSTD_REF:
                ref = self.repo.reader.reference_of(bid)
                if ref is not None:
                    refs.add(ref)
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

    def _rewrite(self, packs: list[str], by_pack: dict[str, list[PackEntry]], live: set[bytes]) -> None:
        if not packs:
            return
        doomed = set(packs)
        writer = self.repo._writer()
        try:
            for p in packs:
                for e in by_pack[p]:
                    if e.id in live and not self._elsewhere(e.id, doomed):
                        writer.put_forced(e.id, e.type, self.repo.reader.read(e.id))
            writer.finish()
        except BaseException:
            writer.abort()
            raise

    def _elsewhere(self, bid: bytes, doomed: set[str]) -> bool:
        loc = self.repo.index.get(bid)
        return loc is not None and loc.pack not in doomed

    def _reindex(self, gone: set[str]) -> None:
        """Write one index file naming every blob of every pack not in `gone`, then delete the
        older index files that were read whole (an unreadable one stays: check reports it)."""
        old = list(self.repo.backend.list("index"))
        keep: dict[str, list[PackEntry]] = defaultdict(list)
        seen: set[bytes] = set()
        readable = []
        for n in old:
            try:
                packs = decode_index(n, self.repo.backend.get("index", n))
            except (CorruptionError, NotFoundError):
                continue
            readable.append(n)
            for pack, entries in packs.items():
                if pack in gone:
                    continue
                for e in entries:
                    if e.id not in seen:
                        seen.add(e.id)
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

    def _delete_unnamed(self, dropped: set[str]) -> int:
        """Delete the stored packs that no index file present now names; returns how many.

        Decided from the index files as they are after `_reindex` wrote its own, so a pack
        that a rerun wrote again (same content, same name) is named and stays."""
        named: set[str] = set()
        complete = True
        for n in list(self.repo.backend.list("index")):
            try:
                named.update(decode_index(n, self.repo.backend.get("index", n)))
            except NotFoundError:
                continue
            except CorruptionError:
                complete = False
        count = 0
        for p in sorted(self.repo.backend.list("packs")):
            if p in named or not (complete or p in dropped):
                continue
            self.check_lock()
            try:
                self.repo.backend.delete("packs", p)
                count += 1
            except NotFoundError:
                pass
        return count
