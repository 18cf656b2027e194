"""Repairing a damaged repository: the index rebuilt from the packs, unreadable set objects removed.

`IndexRepair` owns `cairn repair index`: the new index names exactly the blobs that lie in
packs that exist. Index entries of existing packs are kept, entries naming missing packs are
dropped, and packs no readable index file names are read (their trailer describes their
blobs) and added. Every pack read is read whole and every blob in it verified (opened,
decompressed, hashed against its id) as check's read-data does; with read_data that is every
pack, else only the unindexed ones (so a damaged leftover never brings a bad blob back into
the index). Packs shorter than their indexed blobs need (the listing's sizes tell) are read so
too. Blobs that fail are left out; a pack whose trailer cannot be read, or that was cut short,
is read by the offsets the index gives for it (an unindexed one contributes nothing); and the
good blobs of a damaged pack are copied into a new pack (as prune copies live
blobs) so that the damaged pack leaves the index whole: it is then a leftover that verify
warns about and garbage collection deletes. A tree the index loses so (its pack missing or
damaged) whose copy the local cache (a daemon's on an object store) holds and verifies is
stored again in a new pack: a tree is named by its content, so the sets that need it can be
walked, checked and pruned again once the data it lists is stored again.
Once the index no longer names a lost or damaged blob, the next backup stores that content
again (it no longer deduplicates against it), and since ids are content addresses the older
sets that reference it restore again too.

`SetRepair` owns `cairn repair sets`: set objects that cannot be read (damaged, empty, not a
set) are listed and deleted, except one whose copy in the local cache (a daemon's on an object
store) verifies against its name: that copy is the set as it was written, and is put back in
its place; a set that reads, or that a newer format wrote, is never touched.

`WalRepair` owns `cairn repair wal`: WAL catalog entries that cannot be read (damaged, not a
catalog entry) are listed and deleted. Such an entry's WAL file cannot be fetched, and while it
is there prune cannot know which chunks it keeps alive, so nothing is ever freed. So are entries
that read but name a chunk that no index file names and no pack holds whole (the packs no index
names are read to tell: after `repair index` dropped it, its pack lost, cut short or damaged):
that WAL file cannot be fetched either, and prune refuses to run while a needed chunk is in no
index file. Any other entry is never touched.

What always holds: the caller holds the garbage collector's lock (one collector or repairer at
a time; backups keep running beside it); the index files are listed before the packs, so every
pack a listed index file names is in the pack listing; the new index file is written durably
before any old one is deleted, and only the index files this run read are deleted (never one a
running backup wrote meanwhile, nor one this run wrote itself: the pack that takes the good
blobs of a damaged pack, and so its index file, can be the very bytes of one read, e.g. a pack
of one blob cut short after it), so a crash at any point leaves every blob of an existing pack
indexed (duplicates are harmless) and the next run finishes the job; a dry run writes and
deletes nothing; a storage error (not damage) stops the run, and is never taken for damage. An
object the store refuses to read (a directory in its place, permissions) is reported and never
deleted: an index file so refused has its packs read as unindexed; a set object is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import blake3

from ..content.blobs import BlobReader
from ..content.index import Index, IndexBuilder, decode_index, encode_index
from ..content.packs import (
    CODEC_ZSTD_REF,
    FOOTER,
    HEADER,
    PK_HEADER,
    TYPE_TREE,
    PackEntry,
    parse_footer,
    parse_trailer,
)
from ..errors import BackendError, CairnError, CorruptionError, NotFoundError, UnavailableError, short
from ..model import Progress
from ..snapshots.sets import MAGIC as SET_MAGIC
from ..snapshots.sets import SET_VERSION, decode_set
from ..snapshots.wal import decode_catalog, split_object

if TYPE_CHECKING:
    from .handle import MaintainedRepository

ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class IndexRepairReport:
    """What `repair index` found and did (or, with dry_run, would do)."""

    packs_listed: int = 0  # packs that exist
    packs_read: int = 0  # packs read whole and verified (with read_data all, else the unindexed ones)
    missing_packs: tuple[str, ...] = ()  # named by an index file, absent from storage
    entries_missing: int = 0  # index entries dropped because their pack is missing
    damaged_packs: tuple[str, ...] = ()  # packs holding a blob that failed verification, or unreadable
    entries_damaged: int = 0  # blobs dropped because they failed verification (or their pack did)
    unindexed_packs: tuple[str, ...] = ()  # packs no readable index file named, whose blobs were added
    blobs_added: int = 0  # blobs added from those packs
    blobs_indexed: int = 0  # blobs the index names afterwards (the new file, and the copies' own)
    blobs_copied: int = 0  # good blobs of damaged packs copied into a new pack
    trees_restored: int = 0  # lost trees stored again from the local cache's verified copies
    index_files_replaced: int = 0  # old index files deleted (would be, with dry_run)
    damaged_index_files: tuple[str, ...] = ()  # old index files that could not be read
    index_file: str = ""  # the new index file ("" when none was needed)
    read_data: bool = False
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        """Whether the index lost or gained knowledge (a backup should follow)."""
        return bool(self.entries_missing or self.entries_damaged or self.blobs_added)


@dataclass(frozen=True)
class SetRepairReport:
    """What `repair sets` removed or put back (or, with dry_run, would): (set name, why) pairs."""

    removed: tuple[tuple[str, str], ...] = ()
    kept: int = 0  # readable sets, untouched
    restored: tuple[tuple[str, str], ...] = ()  # damaged in the store, put back from the local cache's good copy
    newer: tuple[str, ...] = ()  # sets of a newer format: not readable here, never removed
    refused: tuple[tuple[str, str], ...] = ()  # set objects the store refused to read: (name, why), kept
    dry_run: bool = False


class IndexRepair:
    """One run of `repair index`. The caller holds the gc lock (`check_lock` raises once it is lost)."""

    def __init__(self, repo: MaintainedRepository, check_lock: Callable[[], None] | None = None,
                 progress: ProgressFn | None = None) -> None:
        self.repo = repo
        self.check_lock = check_lock or (lambda: None)
        self.progress = progress
        self.bytes_read = 0
        self.refused: list[tuple[str, str]] = []  # index files the store refused to read: kept, their packs read
        self.written: set[str] = set()  # index files this run wrote (rescued blobs, trees): never deleted

    def run(self, *, read_data: bool, dry_run: bool) -> IndexRepairReport:
        old = list(self.repo.backend.list("index"))  # before the packs: what a listed file names is listed below
        readable, damaged_files, indexed = self._read_index(old)
        sizes = {o.name: o.size for o in self.repo.backend.list_info("packs")}
        stored = set(sizes)
        missing = sorted(set(indexed) - stored)
        entries_missing = sum(len(indexed[p]) for p in missing)
        unindexed = sorted(stored - set(indexed))
        # packs shorter than their indexed blobs need (the listing tells, without reading): read
        # and verified like damaged ones, so the blobs still in them are kept and the rest dropped
        short = {p for p, es in indexed.items()
                 if p in sizes and es and max(e.offset + e.stored_len for e in es) > sizes[p]}
        # what is kept without being read: the references of delta blobs, and copies elsewhere
        known = {} if read_data else {p: es for p, es in indexed.items() if p in stored and p not in short}
        found, damaged, bad_blobs, packs_read = self._read_packs(
            sorted(stored) if read_data else sorted(set(unindexed) | short), indexed, known)

        if packs_read >= 2 and len(damaged) == packs_read and not any(found.get(p) for p in damaged) \
                and not known and not dry_run:
            raise CorruptionError(
                f"refusing to rewrite the index: not one blob of the {packs_read} packs read passes its check, which "
                "points to a wrong config or key rather than damage; nothing was changed",
                hint="check that config/config and keys/ are this repository's; 'cairn repair index --dry-run' "
                     "lists them")
        copied = 0
        rescue: dict[str, list[PackEntry]] = {}
        if damaged:  # a damaged pack leaves the index: its good blobs are copied into a new pack first
            out = sorted(p for p in damaged if p in found)
            elsewhere = {e.id for p, es in {**known, **found}.items() if p not in damaged for e in es}
            rescue = {p: [e for e in found[p] if e.id not in elsewhere] for p in out}
            copied = len({e.id for es in rescue.values() for e in es})
            if copied and not dry_run:
                self._copy({**known, **found}, rescue)
            for p in out:
                del found[p]

        new: dict[str, list[PackEntry]] = {}
        seen: set[bytes] = set()

        def take(pack: str, entries: list[PackEntry]) -> int:
            kept = [e for e in entries if e.id not in seen]
            seen.update(e.id for e in kept)
            if kept:
                new.setdefault(pack, []).extend(kept)
            return len(kept)

        for pack in sorted(indexed):  # indexed packs first: their entries, or with read_data what verified
            if pack in stored:
                take(pack, found.get(pack, []) if read_data or pack in short else indexed[pack])
        added = 0
        contributed = []
        for pack in unindexed:
            n = take(pack, found.get(pack, []))
            if n:
                added += n
                contributed.append(pack)
        # trees the index loses (a missing or damaged pack) whose verified copy the local cache holds
        # are stored again, so the sets that need them can still be walked, checked and pruned
        copies = {e.id for es in rescue.values() for e in es} if damaged else set()
        lost = sorted({e.id for es in indexed.values() for e in es if e.type == TYPE_TREE} - seen - copies)
        kept_trees = [(b, data) for b in lost if (data := self.repo.local_tree(b)) is not None]
        if kept_trees and not dry_run:
            self._store_trees(kept_trees)
        copied += len(kept_trees)
        report = IndexRepairReport(
            packs_listed=len(stored), packs_read=packs_read, missing_packs=tuple(missing),
            entries_missing=entries_missing, damaged_packs=tuple(sorted(damaged)), entries_damaged=bad_blobs,
            unindexed_packs=tuple(contributed), blobs_added=added, blobs_indexed=len(seen) + copied,
            blobs_copied=copied - len(kept_trees), trees_restored=len(kept_trees),
            index_files_replaced=len(readable) + len(damaged_files),
            damaged_index_files=tuple(damaged_files) + tuple(n for n, _ in self.refused),
            read_data=read_data, dry_run=dry_run)
        healthy = not (missing or damaged or contributed or damaged_files or self.refused)
        if healthy:  # the index names exactly the blobs of the packs that exist: nothing to rewrite
            return replace(report, index_files_replaced=0)
        if dry_run:  # an old file holding exactly the new index stays as the new file: not replaced
            name = encode_index(new)[0]
            return replace(report, index_files_replaced=sum(n != name for n in readable + damaged_files))
        if not new and not readable and not damaged_files:
            return report
        return self._replace(report, new, readable + damaged_files)

    def _read_index(self, names: list[str]) -> tuple[list[str], list[str], dict[str, list[PackEntry]]]:
        """(index files read, index files that are damaged, pack -> entries they name)."""
        readable: list[str] = []
        damaged: list[str] = []
        indexed: dict[str, list[PackEntry]] = {}
        for name in names:
            try:
                packs = decode_index(name, self.repo.backend.get("index", name))
            except NotFoundError:
                continue  # gone since the listing (a writer's rescue rewrote it): its successor is not ours
            except CorruptionError:
                damaged.append(name)  # its packs are read as unindexed: its knowledge is kept
                continue
            except BackendError as e:  # refused (not a file, permissions): read as damaged, never deleted
                self.refused.append((name, e.message))
                continue
            readable.append(name)
            for pack, entries in packs.items():
                indexed.setdefault(pack, []).extend(entries)
        return readable, damaged, indexed

    def _read_packs(self, todo: list[str], indexed: dict[str, list[PackEntry]], known: dict[str, list[PackEntry]]
                    ) -> tuple[dict[str, list[PackEntry]], set[str], int, int]:
        """Read the packs `todo` whole and verify their blobs: (pack -> verified entries, damaged
        packs, blobs dropped as damaged, packs read). Delta blobs are verified last, against the
        verified blobs and those `known` without reading."""
        found: dict[str, list[PackEntry]] = {}
        damaged: set[str] = set()
        bad_blobs = packs_read = 0
        deltas: list[tuple[str, PackEntry]] = []
        self.bytes_read = 0
        for n, pack in enumerate(todo):
            self._emit(n, len(todo))
            try:
                entries, bad, later, intact = self._read_whole(pack, indexed.get(pack, []))
            except NotFoundError:
                continue  # deleted since the listing: nothing to index
            except CorruptionError:  # a pack that cannot be parsed contributes nothing
                damaged.add(pack)
                bad_blobs += len(indexed.get(pack, ()))
                packs_read += 1
                continue
            packs_read += 1
            found[pack] = entries
            deltas += [(pack, e) for e in later]
            if bad or not intact:
                damaged.add(pack)
                bad_blobs += bad
        if todo:
            self._emit(len(todo), len(todo))
        if deltas:
            bad_deltas = self._verify_deltas({**known, **found}, deltas)
            for pack, e in deltas:
                if (pack, e.id) in bad_deltas:
                    damaged.add(pack)
                    bad_blobs += 1
                else:
                    found[pack].append(e)
        return found, damaged, bad_blobs, packs_read

    def _replace(self, report: IndexRepairReport, new: dict[str, list[PackEntry]],
                 old: list[str]) -> IndexRepairReport:
        """Write the new index file durably, then delete the old files this run read."""
        name, data = encode_index(new)
        self.check_lock()
        self.repo.backend.put("index", name, data)
        replaced = 0
        for n in old:
            if n == name or n in self.written:
                continue  # the same content as a file this run wrote: it is that file
            self.check_lock()
            try:
                self.repo.backend.delete("index", n)
                replaced += 1
            except NotFoundError:
                pass
        return replace(report, index_file=name, index_files_replaced=replaced)

    def _copy(self, usable: dict[str, list[PackEntry]], rescue: dict[str, list[PackEntry]]) -> None:
        """Copy the verified blobs `rescue` names out of their damaged packs into a new pack (with
        its own index file, durable before the new index drops the damaged packs); `usable` says
        where every verified or kept blob lies (delta references are read from there)."""
        builder = IndexBuilder()
        for pack, entries in usable.items():
            builder.add_pack(pack, entries)
        index = builder.finish()
        reader = self._reader(index)
        writer = self.repo.writer()
        try:
            for entries in rescue.values():
                for e in entries:
                    self.check_lock()
                    writer.put_forced(e.id, e.type, reader.read(e.id))
            self.check_lock()
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        self.written.update(getattr(writer, "own_files", ()))

    def _store_trees(self, trees: list[tuple[bytes, bytes]]) -> None:
        """Store the trees `trees` ((id, plaintext), verified) in a new pack with its own index
        file, durable before the new index is written."""
        writer = self.repo.writer()
        try:
            for bid, data in trees:
                self.check_lock()
                writer.put_forced(bid, TYPE_TREE, data)
            self.check_lock()
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        self.written.update(getattr(writer, "own_files", ()))

    def _emit(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(Progress("read packs", done, total, self.bytes_read))

    def _open_trailer(self, head: bytes) -> Callable[[str, bytes], bytes] | None:
        key = getattr(self.repo, "key", None)
        if key is None:
            return None
        if head.startswith(PK_HEADER):
            return lambda n, t: key.open_trailer(n, t, header=head)
        return key.open_trailer

    def _read_whole(self, pack: str, indexed: list[PackEntry] | None = None
                    ) -> tuple[list[PackEntry], int, list[PackEntry], bool]:
        """(verified entries, how many blobs failed, delta entries left to verify, whether the pack
        hashes to its name) of a pack read whole. The blobs are those its trailer describes; when
        the trailer (or footer) cannot be read, or the pack was cut short, those the index says
        it holds (`indexed`), so a damaged end costs only the blobs that are damaged themselves.
        CorruptionError when neither describes the pack."""
        data = self.repo.backend.get("packs", pack)
        self.bytes_read += len(data)
        bad = 0
        try:
            entries = self._trailer_entries(pack, data)
        except CorruptionError:
            if not indexed:
                raise
            entries = [e for e in indexed if len(HEADER) <= e.offset and e.offset + e.stored_len <= len(data)]
            bad = len(indexed) - len(entries)  # beyond the end: lost with what was cut off
        reader = self._reader(Index())
        good, later, failed = [], [], set()
        for e in entries:
            if e.codec == CODEC_ZSTD_REF:
                later.append(e)  # needs its reference's plaintext: verified once every pack was read
                continue
            try:
                reader.decode_stored(e.id, pack, e.codec, e.raw_len, data[e.offset:e.offset + e.stored_len])
                good.append(e)
            except BackendError:
                raise  # the storage failed, not the blob
            except Exception:  # noqa: BLE001 - any failure to open, decompress or hash stored bytes is damage
                failed.add(e.id)
        if indexed:  # what the index says the pack holds and it does not hold whole is dropped: damage too
            named = {e.id for e in indexed}  # (a pack replaced by another one's bytes verifies blob by blob)
            bad = len(named - {e.id for e in good} - {e.id for e in later}) + len(failed - named)
        else:
            bad += len(failed)
        return good, bad, later, blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest() == pack

    def _trailer_entries(self, pack: str, data: bytes) -> list[PackEntry]:
        """The blobs a pack's trailer describes; CorruptionError when it cannot be read."""
        if not (data.startswith(HEADER) or data.startswith(PK_HEADER)):
            raise CorruptionError(f"unable to read pack '{short(pack)}': bad header magic")
        off, count, th = parse_footer(pack, data)
        if off < len(HEADER) or off > len(data) - FOOTER.size:
            raise CorruptionError(f"unable to read pack '{short(pack)}': bad trailer offset")
        entries = parse_trailer(pack, data[off:len(data) - FOOTER.size], count, th,
                                self._open_trailer(bytes(data[:4096])))
        return _fitting(pack, entries, off)

    def _reader(self, index: Index) -> BlobReader:
        return BlobReader(self.repo.backend, index, getattr(self.repo, "key", None))

    def _verify_deltas(self, found: dict[str, list[PackEntry]],
                       deltas: list[tuple[str, PackEntry]]) -> set[tuple[str, bytes]]:
        """The (pack, blob) of delta blobs that fail against the verified blobs as references."""
        builder = IndexBuilder()
        for pack, entries in found.items():
            builder.add_pack(pack, entries)
        index = builder.finish()
        reader = self._reader(index)
        bad = set()
        for pack, e in deltas:
            try:
                stored = self.repo.backend.get_range("packs", pack, e.offset, e.stored_len)
                reader.decode_stored(e.id, pack, e.codec, e.raw_len, stored)
            except BackendError:
                raise  # the storage failed, not the blob
            except Exception:  # noqa: BLE001 - a missing or damaged reference, or damage
                bad.add((pack, e.id))
        return bad


class SetRepair:
    """One run of `repair sets`. The caller holds the gc lock."""

    def __init__(self, repo: MaintainedRepository, check_lock: Callable[[], None] | None = None) -> None:
        self.repo = repo
        self.check_lock = check_lock or (lambda: None)

    def run(self, *, dry_run: bool) -> SetRepairReport:
        backend = self.repo.backend
        removed: list[tuple[str, str]] = []
        refused: list[tuple[str, str]] = []
        newer: list[str] = []
        kept = 0
        for name in sorted(backend.list("sets")):
            try:
                data = backend.get("sets", name)
            except NotFoundError:
                continue  # forgotten meanwhile
            except CorruptionError as e:  # a sealed object that does not open
                removed.append((name, str(e)))
                continue
            except BackendError as e:  # the store refuses it (not a file, permissions): never taken for
                refused.append((name, e.message))  # damage; reported, left for the operator
                continue
            why = _unreadable(name, data)
            if why is None:
                kept += 1
            elif why == "newer":
                newer.append(name)
            else:
                removed.append((name, why))
        copies = {}  # a damaged set whose verified copy the local cache holds is put back, not removed
        for name, _why in removed:
            data = self.repo.local_copy("sets", name)
            if data is not None:
                copies[name] = data
        restored = [(name, why) for name, why in removed if name in copies]
        removed = [(name, why) for name, why in removed if name not in copies]
        if len(removed) >= 2 and not kept and not newer and not restored and not dry_run \
                and not _key_proven(self.repo):
            raise CorruptionError(
                f"refusing to remove set objects: all {len(removed)} of them fail their check, which "
                "points to a wrong config or key rather than damage; nothing was removed",
                hint="check that config/config and keys/ are this repository's; 'cairn repair sets --dry-run' "
                     "lists them")
        if not dry_run:
            for name, data in copies.items():
                self.check_lock()
                backend.put("sets", name, data)  # the same plaintext under its name: the set as written
            for name, _why in removed:
                self.check_lock()
                try:
                    backend.delete("sets", name)
                except NotFoundError:
                    pass
        return SetRepairReport(removed=tuple(removed), kept=kept, newer=tuple(newer), refused=tuple(refused),
                               restored=tuple(restored), dry_run=dry_run)


LOST_DATA = "its data is lost"


@dataclass(frozen=True)
class WalRepairReport:
    """What `repair wal` removed (or, with dry_run, would remove): (catalog object, why) pairs;
    the why of an entry that reads but whose data is lost ends with LOST_DATA."""

    removed: tuple[tuple[str, str], ...] = ()
    kept: int = 0  # readable catalog entries, untouched
    refused: tuple[tuple[str, str], ...] = ()  # entries the store refused to read (storage error): kept
    dry_run: bool = False


class WalRepair:
    """One run of `repair wal`. The caller holds the gc lock."""

    def __init__(self, repo: MaintainedRepository, check_lock: Callable[[], None] | None = None) -> None:
        self.repo = repo
        self.check_lock = check_lock or (lambda: None)

    def run(self, *, dry_run: bool) -> WalRepairReport:
        backend = self.repo.backend
        removed: list[tuple[str, str]] = []
        refused: list[tuple[str, str]] = []
        kept = lost_data = 0
        self.repo.load_index()
        held: set[bytes] | None = None  # chunks the packs no index names hold whole (read once needed)
        for name in sorted(backend.list("wal")):
            try:
                doc = decode_catalog(name, backend.get("wal", name))
                lost = None
                for c in doc["chunks"]:
                    if bytes.fromhex(c) not in self.repo.index:
                        held = self._unindexed_chunks() if held is None else held
                        if bytes.fromhex(c) not in held:
                            lost = c
                            break
                misfiled = self._misfiled(name, doc) if lost is None else None
                if misfiled is not None:
                    removed.append((name, f"unable to read WAL file '{name}': {misfiled}"))
                elif lost is None:
                    kept += 1
                else:
                    lost_data += 1
                    removed.append((name, f"WAL file '{name}': chunk '{short(lost)}' is in no index file and no "
                                          f"pack holds it: {LOST_DATA}"))
            except NotFoundError:
                continue  # forgotten meanwhile (WAL retention)
            except CorruptionError as e:  # a sealed entry that does not open, or not a catalog entry
                removed.append((name, str(e)))
            except UnavailableError:
                raise  # the store does not answer: nothing is unreadable for that
            except BackendError as e:  # the store refuses it (not a file, permissions): reported, kept
                refused.append((name, e.message))
        unreadable = len(removed) - lost_data
        if unreadable >= 2 and not kept and not lost_data and not dry_run and not _key_proven(self.repo):
            raise CorruptionError(
                f"refusing to remove WAL catalog entries: all {unreadable} of them fail their check, which "
                "points to a wrong config or key rather than damage; nothing was removed",
                hint="check that config/config and keys/ are this repository's; 'cairn repair wal --dry-run' "
                     "lists them")
        if not dry_run:
            for name, _why in removed:
                self.check_lock()
                try:
                    backend.delete("wal", name)
                except NotFoundError:
                    pass
        return WalRepairReport(removed=tuple(removed), kept=kept, refused=tuple(refused), dry_run=dry_run)

    def _misfiled(self, name: str, doc: dict) -> str | None:
        """Why the entry's content is another file than its name (the engine's rules read the
        start of it: store/segments.py), or None. Such an entry is of no use to a recovery,
        which would take it for the end of WAL; removed, it is a gap verify names."""
        rules = getattr(self.repo, "segment_rules", None)
        if rules is None or not doc["chunks"] or not hasattr(rules, "content_problem"):
            return None
        try:
            head = self.repo.reader.read(bytes.fromhex(doc["chunks"][0]))
        except CairnError:
            return None  # the chunk's own damage: 'repair index' and the packs' checks
        return rules.content_problem(split_object(name)[1], bytes(head[:8192]))

    def _unindexed_chunks(self) -> set[bytes]:
        """The blobs that the packs no index file names hold whole, read as `repair index` reads
        them: a chunk among them is not lost ('cairn repair index' indexes it again), one that is
        not (its pack gone, cut short, damaged) is."""
        reader = IndexRepair(self.repo, self.check_lock)
        held: set[bytes] = set()
        for pack in sorted(set(self.repo.backend.list("packs")) - self.repo.index.pack_names()):
            try:
                good, _bad, later, _intact = reader._read_whole(pack)
            except (NotFoundError, CorruptionError):  # gone meanwhile, or nothing in it can be read
                continue
            held.update(e.id for e in good)
            held.update(e.id for e in later)  # (delta blobs unverified here: counted as held, which keeps)
        return held


def _key_proven(repo: MaintainedRepository) -> bool:
    """Whether the repository's own key opens what it sealed: an index file was read (sealed
    under a key that derives from the same master key as sets and WAL entries). Then objects
    that all fail their check are damage (two swapped names, say), not a wrong config or key."""
    return len(repo.index) > 0


def _unreadable(name: str, data: bytes) -> str | None:
    """Why set object `name` cannot be read (None: it reads; "newer": a newer format wrote it)."""
    if not data:
        return f"unable to read set '{short(name)}': empty"
    try:
        decode_set(name, data)
        return None
    except CorruptionError as e:
        if _newer_set(name, data):
            return "newer"
        return str(e)


def _newer_set(name: str, data: bytes) -> bool:
    """A set object that verifies against its name and says it is of a version above this reader's."""
    if blake3.blake3(data).hexdigest() != name:
        return False
    try:
        doc = json.loads(data)
        return doc.get("magic") == SET_MAGIC and int(doc.get("version", 0)) > SET_VERSION
    except (ValueError, TypeError, AttributeError):
        return False


def _fitting(pack: str, entries: list[PackEntry], trailer_offset: int) -> list[PackEntry]:
    """The entries, checked to lie between the header and the trailer."""
    for e in entries:
        if e.offset < len(HEADER) or e.offset + e.stored_len > trailer_offset:
            raise CorruptionError(f"unable to read pack '{short(pack)}': entry outside the pack")
    return entries
