"""Reading sets: listing them, their trees and differences, and restore streams of their files.

Reads run in the caller's thread, alongside a running backup.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

from cairn.daemon.operations.part import ServicePart, _rel
from cairn.fsio import claims
from cairn.fsio.delta import DeltaStream, extras_roots, target_lock
from cairn.fsio.records import EntryMeta, Failed, LaneGauge, Record
from cairn.store.content.crypto import ASK_FULL_KEY
from cairn.store.errors import AbortedError, CairnError, FailedPreconditionError
from cairn.store.model import BackupSet, SetDiff, TreeEntry
from cairn.store.snapshots.restore import RestoreFilter

log = logging.getLogger(__name__)
DELTA_BATCH = 512  # manifest entries handed to a delta at once


def _parts(path: str) -> list[str]:
    """A restore path's components: sorted by them, paths below one directory come together."""
    return [x for x in path.split("/") if x and x != "."]


class RestorePart(ServicePart):
    """Listing sets and trees, and streaming a set's files back."""

    def list_sets(self, source: str = "", host: str = "") -> list[BackupSet]:
        self.repo.refuse_other_host(host, self._hostname)  # "no sets" of another host would be false
        self._require_known_host(host)  # nor would "no sets" of a misspelt one be true
        sets = self.repo.list_sets(source or None)
        if source and not sets:
            self._require_known_source(source)
        return [s for s in sets if s.hostname == host] if host else sets

    def unreadable_sets(self) -> dict[str, str]:
        """Set objects the last listing could not read: id -> why."""
        return dict(self.repo.unreadable_sets)

    def unreadable_advice(self) -> str:
        """What to do about `unreadable_sets` when it is not 'cairn verify' and 'cairn repair sets'
        (empty): on a write-only host they are its own damaged records, dropped, of sets that are
        intact in the repository, and it can run neither."""
        if not self.repo.write_only:
            return ""
        return (f"the sets are intact in the repository: {ASK_FULL_KEY} to run 'cairn sets --host "
                f"{self._hostname}'; this host's next set of their source is taken as full")

    def list_tree(self, ref: str, source: str, path: str, recursive: bool, host: str = "",
                  problems: list[str] | None = None) -> tuple[BackupSet, Iterator[TreeEntry]]:
        """A set's entries at `path`, as they are read (the path is checked here); with
        `problems` a recursive listing goes on past damaged directories and notes them there
        (complete once the entries are all taken)."""
        s = self.resolve(ref, source, host)
        return s, self.repo.iter_tree(s, _rel(path), recursive=recursive, problems=problems)

    def diff(self, a: str, b: str, source: str = "", host: str = "") -> tuple[BackupSet, BackupSet, SetDiff]:
        sa, sb = self.resolve(a, source, host), self.resolve(b, source, host)
        return sa, sb, self.repo.diff(sa, sb)

    def diff_stream(self, a: str, b: str, source: str = "", host: str = "",
                    grouped: bool = False) -> tuple[BackupSet, BackupSet, Iterator[tuple[str, str]]]:
        """The sets (resolved here, so a bad name fails before anything is sent) and their changes
        as they are found (Repository.iter_diff): in tree order, or with `grouped` every added
        path, then every modified, then every deleted (one walk of the differing trees each)."""
        sa, sb = self.resolve(a, source, host), self.resolve(b, source, host)
        if not grouped:
            return sa, sb, self.repo.iter_diff(sa, sb)

        def in_groups() -> Iterator[tuple[str, str]]:
            for change in ("added", "modified", "deleted"):
                yield from self.repo.iter_diff(sa, sb, only=change)

        return sa, sb, in_groups()

    def restore_stream(self, ref: str, source: str, paths: list[str], include: tuple[str, ...] = (),
                       exclude: tuple[str, ...] = (), manifest: bool = False,
                       lanes: LaneGauge | None = None, host: str = "") -> tuple[BackupSet, Iterator[Record]]:
        s = self.resolve(ref, source, host)
        rels = [_rel(p) for p in paths]
        if any(not p for p in rels):
            rels = []
        select = RestoreFilter(include, exclude)
        return s, self._counted(self.repo.restore_stream(s, rels or None, select=select, manifest=manifest,
                                                         lanes=lanes))

    def restore_totals(self, s: BackupSet, paths: list[str], include: tuple[str, ...] = (),
                       exclude: tuple[str, ...] = ()) -> tuple[int, int]:
        """(files, bytes) a restore of `s` (or of chosen paths or patterns of it) writes.

        The whole set: its recorded totals, unless it is a journal-driven set from before those
        counted the whole tree. Otherwise the selection is listed from the stored trees (a
        manifest: chunk sizes from the index, no content read)."""
        rels = [_rel(p) for p in paths]
        if any(not p for p in rels):
            rels = []
        whole = not rels and not include and not exclude
        trusted = s.stats.files_walked is not None or s.extra.get("changes") != "journal"
        if whole and trusted:
            return s.stats.files, s.stats.bytes_total
        files = size = 0
        select = RestoreFilter(include, exclude)
        stream = self.repo.restore_stream(s, rels or None, select=select, manifest=True)
        try:
            for rec in stream:
                if isinstance(rec, EntryMeta) and rec.kind == "file":
                    files += 1
                    size += rec.size
        finally:
            stream.close()
        return files, size

    def delta_local(self, ref: str, source: str, paths: list[str], include: tuple[str, ...], exclude: tuple[str, ...],
                    target: str, nonce: str, quick: bool = False, delete: bool = False,
                    cancelled: Callable[[], bool] | None = None,
                    host: str = "") -> tuple[BackupSet, DeltaStream, list[str]]:
        """A delta restore into the client's claimed target on this host (cairn.fsio.claims.check_delta_claim):
        the set's manifest is compared with the target as it is read, a window at a time, and
        what differs is written from the repository directly (cairn.fsio.delta.DeltaStream),
        until `cancelled` says the client went away. The daemon holds the target's delta lock
        meanwhile (cairn.fsio.delta.target_lock): a second delta into it, this daemon's or a
        client's, is refused (BusyError). Returns (set, the delta with its counts, problems of
        the manifest)."""
        # any owner when client and daemon are both root: a whole-set restore gives the target the
        # source directory's owner (an application's), and the next delta must still be the daemon's
        claim = claims.check_delta_claim(target, nonce, any_owner=True)
        with target_lock(target):  # the daemon writes, so it holds the target: one delta at a time
            # the paths in tree order: each directory's entries then come together (DeltaStream)
            s, records = self.restore_stream(ref, source, sorted(paths, key=_parts), include, exclude, manifest=True,
                                             host=host)
            try:
                try:
                    claims.drop_claim(claim)  # not an extra of the target; a daemon that may not write there stops here
                except OSError as exc:
                    raise FailedPreconditionError(
                        f"local write to '{target}' refused: the daemon cannot write there: {exc.strerror}") from None

                def chunks(ids: list[bytes]) -> Iterator[tuple[bytes, bytes | CairnError]]:
                    data = self.repo.read_chunks(s, ids, errors=True)  # a damaged chunk fails its files only
                    try:
                        yield from zip(ids, data, strict=True)
                    finally:
                        data.close()  # type: ignore[attr-defined] - read-ahead stops when the delta does

                extras = None if include or exclude else extras_roots([os.fsencode(x) for x in paths])
                ds = DeltaStream(target, chunks, quick=quick, delete=delete, cancelled=cancelled, extras_under=extras,
                                 id_key=self.repo.chunk_id_key, hold_dirs=bool(include))
                problems: list[str] = []
                batch: list[EntryMeta] = []
                try:
                    for rec in records:
                        if isinstance(rec, EntryMeta):
                            batch.append(rec)
                            if len(batch) >= DELTA_BATCH:
                                ds.feed(batch)
                                batch = []
                        elif isinstance(rec, Failed):
                            problems.append(rec.message)
                    ds.feed(batch)
                    ds.finish()
                except AbortedError:
                    log.warning("restore --delta of set %s into '%s' stopped: its client went away", s.id, target)
                    raise
            finally:
                records.close()  # type: ignore[attr-defined]
            return s, ds, problems

    def restore_chunks(self, ref: str, source: str, ids: list[bytes], host: str = "") -> Iterator[bytes | CairnError]:
        """The content of chunks of a set's files, in the order asked (delta restores); a chunk
        that cannot be read comes as its CairnError, and the others still come."""
        s = self.resolve(ref, source, host)
        return self.repo.read_chunks(s, ids, errors=True)

