"""Forgetting sets by retention policy and freeing what no remaining set references.

Order, so that a crash at any step leaves a consistent repository:
1. delete the set objects being forgotten (nothing else refers to a set object);
2. copy the live blobs of mostly-dead packs into new packs, with their own index file;
3. write one index file for every pack that stays, then delete the older index files;
4. delete packs that no index names any more.
A crash after 1 leaves unreferenced data; after 2 or 3, blobs indexed twice; after 3 but
before 4, packs no index names: all harmless, and the next prune finishes the job.
WAL chunks stay live while their catalog entry exists.
"""

from __future__ import annotations

from collections import defaultdict
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
    """One prune run (the caller holds the exclusive lock)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def run(self, policy: PrunePolicy, *, dry_run: bool, source: str | None) -> PruneReport:
        scope = self.repo.list_sets(source)
        keep, forget = retention_split(scope, policy)  # store/retention.py: per (host, source), union of rules
        forgotten = {s.id for s in forget}
        remaining = [s for s in self.repo.list_sets() if s.id not in forgotten]
        live = self._live(remaining)
        by_pack = self._by_pack()
        stored = set(self.repo.backend.list("packs"))
        dead_packs = sorted(p for p, es in by_pack.items() if not any(e.id in live for e in es))
        dead_packs += sorted(stored - set(by_pack))
        rewrite = sorted(p for p, es in by_pack.items() if p not in dead_packs and self._mostly_dead(es, live))
        freed = sum(self._size(p) for p in dead_packs)
        if not dry_run:
            for s in forget:
                self.repo.backend.delete("sets", s.id)
            self._rewrite(rewrite, by_pack, live)
            self._reindex(set(dead_packs) | set(rewrite))
            for p in dead_packs + rewrite:
                try:
                    self.repo.backend.delete("packs", p)
                except NotFoundError:
                    pass
        freed += sum(e.stored_len for p in rewrite for e in by_pack[p] if e.id not in live)
        return PruneReport(forgotten=tuple(s.id for s in forget), kept=tuple(s.id for s in keep),
                           packs_deleted=len(dead_packs), packs_rewritten=len(rewrite), bytes_freed=freed,
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
        old = list(self.repo.backend.list("index"))
        keep: dict[str, list[PackEntry]] = defaultdict(list)
        seen: set[bytes] = set()
        for n in old:
            try:
                packs = decode_index(n, self.repo.backend.get("index", n))
            except (CorruptionError, NotFoundError):
                continue
            for pack, entries in packs.items():
                if pack in gone:
                    continue
                for e in entries:
                    if e.id not in seen:
                        seen.add(e.id)
                        keep[pack].append(e)
        name, data = encode_index(dict(keep))
        self.repo.backend.put("index", name, data)
        for n in old:
            if n != name:
                try:
                    self.repo.backend.delete("index", n)
                except NotFoundError:
                    pass
