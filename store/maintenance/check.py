"""Repository check: structure, and with read_data every byte of every pack.

Structure: every set parses, every tree is indexed and parses, every chunk a file names is
indexed, every indexed pack exists (one that does not is an error naming the sets that need
blobs it held, or, when every set was walked and neither a set nor the WAL needs one, a warning
naming `cairn repair index`: nothing is lost, and backups do not deduplicate against it),
every WAL catalog entry verifies and names indexed chunks; a set object that does not verify
is an error naming it. Read-data: every pack is read whole and verified against its name; in
a damaged pack each blob is verified on its own so the report names exactly the blobs, and
through them the sets and paths, that are hurt.
A damaged pack is one finding, with the most specific reason: a pack shorter than its indexed
blobs need is reported as truncated (found from the listing's sizes, with or without
read-data), never also as a checksum mismatch; its blobs past the end are bad as truncated,
and those still within it are verified one by one (the finding counts the ones that fail).
A read-data subset (`n/m`, or a percentage) reads only some packs: `n/m` the packs
whose id falls in group n of m (a pack's group is its id's first 32 bits modulo m, so running
1/m to m/m over m days reads every pack once), `P%` a random P percent of the packs (at least one).
A pack no index names is a leftover of an interrupted backup or prune when the whole walk
found no set or WAL file needing a blob no index names, or when its trailer lists none of
those blobs: that is a note (one for all such packs, "N packs not in any index, left by an
interrupted write; prune removes them"), never a warning or an error. Otherwise it may hold the
only copy of live data (its index file was lost): when the sets need blobs no index names,
such a pack's trailer is read, and a pack holding some of them whole (each verified, reading
at most LOOK_BYTES of such packs) is named as one whose index file was deleted or lost, with
`cairn repair index` (a pack a repair left out holds the blob that failed there); the blobs
the sets miss are errors. What cannot be told apart stays a warning naming both readings; so
does an unreadable index file. A file entry that records more bytes than its chunks hold (a
set taken by older code while the file grew) is an error naming set and path: its content is
short of what the set says it is (restore writes the bytes stored, never zeros). The report's
advice names the repair for what was found: blobs missing (lost packs, lost index files) or
damaged (read-data) call for `cairn repair index` (with --read-data for damaged blobs) and then
a backup, which stores the lost content again (unless every such blob is in a pack whose index
file is gone: then the repair alone); damaged set objects for `cairn repair sets`.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..content.blobs import decode_blob
from ..content.packs import CODEC_ZSTD_REF, FOOTER, HEADER, PackEntry, parse_footer, parse_pack, parse_trailer
from ..errors import (
    BackendError,
    CairnError,
    CorruptionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    short,
)
from ..model import BackupSet, CheckProblem, CheckReport, Progress
from ..snapshots import wal as walmod
from ..snapshots.sets import decode_set, set_trees
from ..snapshots.trees import tree_entries
from . import prune as prunemod

if TYPE_CHECKING:
    from .handle import MaintainedRepository

MAX_PATHS = 20
# Packs no index names that hold blobs sets need are read (to tell an index file gone from blobs
# a repair left out as damaged) up to this many bytes in all, in a check without read-data
LOOK_BYTES = 256 << 20
HEAD_BYTES = 8192  # of a WAL entry's content, for the engine's page-header check


def parse_subset(text: str) -> Callable[[list[str]], list[str]]:
    """A read-data subset ("n/m" or "P%") as a function choosing packs from a sorted list."""
    group = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if group:
        n, m = int(group[1]), int(group[2])
        if 1 <= n <= m:
            return lambda packs: [p for p in packs if int(p[:8], 16) % m == n - 1]
    share = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
    if share and 0 < float(share[1]) <= 100:
        frac = float(share[1]) / 100

        def sample(packs: list[str]) -> list[str]:
            k = min(len(packs), max(1, math.ceil(len(packs) * frac))) if packs else 0
            return sorted(random.SystemRandom().sample(packs, k))
        return sample
    raise InvalidArgumentError(f"invalid read-data subset '{text}': give n/m (1 <= n <= m, e.g. 2/7) "
                               "or a percentage (e.g. 10%)")


class Checker:
    """One run of check over a repository."""

    def __init__(self, repo: MaintainedRepository, progress: Callable[[Progress], None] | None) -> None:
        self.repo = repo
        self.progress = progress
        self.errors: list[CheckProblem] = []
        self.warnings: list[CheckProblem] = []
        self.notes: list[CheckProblem] = []
        self.bad: dict[bytes, str] = {}
        self.packs_checked = 0
        self.chunks_checked = 0
        self.bytes_read = 0
        self._tree_problems: dict[bytes, list[tuple[str, bytes, str]]] = {}
        self.missing = False  # blobs an index names in a lost pack, or that no index names
        self.unindexed_needed = False  # blobs sets or the WAL need that no index file names
        self._needed: set[bytes] = set()  # ... those blobs
        self._sizes: dict[str, int] = {}  # every stored pack's size (one listing)
        self._lost_for_good = False  # blobs an index names in a lost, truncated or unreadable pack
        self._lost_otherwise = False  # ... other than in missing packs (those may turn out unneeded)
        self._unrecovered = True  # needed blobs that no stored pack holds (or not looked for)
        self._regained: list[str] = []  # packs no index names that hold blobs sets need: an index file gone
        self._unindexed: list[str] = []  # packs no index names (warned after the walk, see _unindexed_warnings)
        self._unneeded: set[str] = set()  # ... those whose trailer lists no blob that sets need
        self._truncated: dict[str, int] = {}  # packs shorter than their indexed blobs need -> their finding in errors
        self._cut: set[bytes] = set()  # the blobs that lie past the end of such a pack
        self._missing_at: dict[str, int] = {}  # packs indexed but missing -> their finding in errors
        self._needing: dict[str, set[str]] = defaultdict(set)  # ... -> the sets that need a blob of it
        self._wal_needs: set[str] = set()  # ... those a WAL catalog entry needs a blob of
        self._via_reference: dict[bytes, str] = {}  # delta blob -> the missing pack holding its reference
        self.corrupt = False  # blobs that failed verification (read-data)
        self.damaged_sets = False
        self.damaged_wal = False
        self.lost_wal = False  # a readable WAL catalog entry names a chunk that is missing or damaged
        self.refused = False  # objects the store refuses to read: no repair command fixes those
        self.short_files = False  # files recorded larger than their chunks hold (older sets of growing files)

    def run(self, *, read_data: bool, set_ref: str | None, subset: str = "") -> CheckReport:
        choose = parse_subset(subset) if subset else None
        if choose is not None and set_ref is not None:
            raise InvalidArgumentError("a read-data subset chooses among the repository's packs: it does not go with "
                                       "a set (that set's data is read whole)")
        sets = self._sets(set_ref)
        self._index_warnings()
        self._packs_present()
        if read_data or choose is not None:
            if set_ref is None:
                self._read_all_packs(choose)
            else:
                self._read_blobs_of(sets)
            self._count_damage_in_truncated()
        self._check_references()
        self._walk_sets(sets)
        self._check_wal(read_data)
        self._missing_pack_findings(whole=set_ref is None)
        self._unindexed_warnings(whole=set_ref is None)
        self._check_keys()
        self._check_markers()
        return CheckReport(errors=tuple(self.errors), warnings=tuple(self.warnings), sets_checked=len(sets),
                           packs_checked=self.packs_checked, chunks_checked=self.chunks_checked,
                           bytes_read=self.bytes_read, advice=self._advice(), notes=tuple(self.notes))

    def _advice(self) -> str:
        """The repair commands for the errors found, in the order to run them."""
        steps = []
        if self.refused:
            steps.append("the store refuses to read the objects named above (not a file, permissions): fix "
                         "those by hand first (a set object that is damage may simply be removed)")
        if self.damaged_sets:
            steps.append("'cairn repair sets' removes the damaged set objects (or puts back the good copies the "
                         "local cache holds)")
        if self.damaged_wal:
            steps.append("'cairn repair wal' removes the WAL catalog entries that cannot be read (prune refuses to "
                         "run while one is there)")
        if self.corrupt:
            steps.append("'cairn repair index --read-data' drops the damaged blobs from the index")
        elif self.missing and self._regained and not self._lost_for_good and not self._unrecovered:
            steps.append("'cairn repair index' indexes again the packs whose index file is gone: what they hold is "
                         "not lost, and no backup is needed for it")
            return "; ".join(steps + self._short_files_advice())
        elif self.missing:
            steps.append("'cairn repair index' drops the lost blobs from the index")
        if self.lost_wal:
            steps.append("then 'cairn repair wal' removes the WAL catalog entries whose data is lost (those WAL files "
                         "cannot be fetched: take a new base backup of a database whose recovery needs them)")
        if self.corrupt or self.missing:
            steps.append("then a full backup of every source stores them again (older sets that reference "
                         "them restore again once it has); a set whose lost data is not in its source any more "
                         "stays damaged, and 'cairn prune --forget SET' forgets it (prune refuses to run while a "
                         "set needs a blob that no index names)")
        return "; ".join(steps + self._short_files_advice())

    def _short_files_advice(self) -> list[str]:
        if not self.short_files:
            return []
        return ["a file recorded larger than its content was growing while an older Cairn read it: its set holds "
                "only what was read, which restore writes (never padded with zeros); a full backup of its source "
                "stores it whole, and 'cairn prune --forget SET' forgets a set not worth keeping with it"]

    # -- objects ---------------------------------------------------------------------
    def _check_keys(self) -> None:
        """Format 2: an unreadable key object opens nothing; it is a warning while another key
        works (this handle was opened with one)."""
        if getattr(self.repo, "key", None) is None:
            return
        for _info, key_id, problem in self.repo.list_keys():
            if problem:
                self.warnings.append(CheckProblem(problem, object_id=key_id))

    def _check_markers(self) -> None:
        """A gc marker that cannot be read is a warning: its packs count as unmarked (kept
        longer, never lost), and the next prune removes it."""
        unreadable: dict[str, str] = {}
        prunemod.read_markers(self.repo.backend, unreadable)
        for name, why in sorted(unreadable.items()):
            self.warnings.append(CheckProblem(f"gc marker '{short(name)}' cannot be read ({why}): the packs it marked "
                                              "are kept until the next prune, which removes it", object_id=name))

    def _sets(self, set_ref: str | None) -> list[BackupSet]:
        sets = self.repo.list_sets()
        listed = {s.id for s in sets}
        for name in list(self.repo.backend.list("sets")):
            if name in listed:
                continue
            try:  # writes are atomic: a set object that does not verify is damage, not a torn write
                decode_set(name, self.repo.backend.get("sets", name))
            except NotFoundError:
                continue
            except CorruptionError as e:
                if self.repo.local_copy("sets", name) is not None:  # what this daemon lists and restores
                    what = (f"set '{short(name)}' is damaged in the repository ({e}); the local cache holds a good "
                            "copy, which 'cairn repair sets' puts back")
                else:
                    what = f"set '{short(name)}' is damaged and is not listed: {e}"
                self.errors.append(CheckProblem(what, object_id=name, sets=(name,)))
                self.damaged_sets = True
            except UnavailableError:
                raise  # the store does not answer: verify stops rather than call everything unreadable
            except BackendError as e:
                self.errors.append(CheckProblem(f"set '{short(name)}' cannot be read and is not listed: {e}",
                                                object_id=name, sets=(name,)))
                self.refused = True
        if set_ref is not None:
            return [self.repo.get_set(set_ref)]
        return sets

    def _index_warnings(self) -> None:
        for msg in self.repo.index_problems:
            self.warnings.append(CheckProblem(f"{msg}; the index file is ignored"))

    def _packs_present(self) -> None:
        """Every indexed pack exists and is long enough for the blobs the index places in it
        (a truncated pack is found without reading it: one listing gives the sizes)."""
        sizes = self._sizes = {o.name: o.size for o in self.repo.backend.list_info("packs")}
        stored = set(sizes)
        indexed = self.repo.index.packs()
        missing = indexed - stored
        self._lost_for_good = bool(missing)  # (not for a pack nothing needs: _missing_pack_findings)
        for pack in sorted(missing):
            self._missing_at[pack] = len(self.errors)  # told apart once the walk knows who needs it
            self.errors.append(CheckProblem(f"pack '{short(pack)}' is indexed but missing", object_id=pack))
            self.missing = True
        needed: dict[str, int] = defaultdict(int)
        short_packs: set[str] = set()
        for bid, loc in self.repo.index.items():
            end = loc.offset + loc.stored_len
            if loc.pack in missing:
                self.bad[bid] = f"pack '{short(loc.pack)}' is missing"
            elif end > sizes.get(loc.pack, end):
                self.bad[bid] = f"pack '{short(loc.pack)}' is truncated"
                self._cut.add(bid)
                short_packs.add(loc.pack)
            needed[loc.pack] = max(needed[loc.pack], end)
        for pack in sorted(short_packs):
            self._truncated[pack] = len(self.errors)
            self.errors.append(CheckProblem(f"pack '{short(pack)}' is truncated: {sizes[pack]} bytes, its indexed "
                                            f"blobs need at least {needed[pack]}", object_id=pack))
            self.missing = self._lost_for_good = self._lost_otherwise = True
        unindexed = sorted(stored - indexed)
        writing = [self.repo.locks.describe(d) for d in self.repo.locks.others() if not d.get("gc")] \
            if unindexed else []
        for pack in unindexed:
            if writing:  # a running session indexes its packs when it finishes them
                self.warnings.append(CheckProblem(
                    f"pack '{short(pack)}' is not indexed yet: it may belong to what is running now "
                    f"({'; '.join(writing[:3])}), which indexes it when done; if a later verify still finds it, "
                    "'cairn repair index' indexes it", object_id=pack))
                continue
            self._unindexed.append(pack)

    def _missing_pack_findings(self, whole: bool) -> None:
        """Say of each pack the index names and storage lacks whether anything needs it. One
        that sets need stays an error naming them (each blob they miss is a finding of its own,
        with the paths it hurts). One that no set and no WAL file needs, when every set was
        walked, is a warning: nothing restorable is lost (an index file naming a pack prune
        deleted put back, or a pack lost after the sets that needed it were forgotten), and a
        backup never deduplicates against it (it stores anew what it needs of a pack found
        missing), so only the stale entries are left, which `cairn repair index` drops.
        A check of one set cannot tell whether another set needs it: an error, as before."""
        if not self._missing_at:
            return
        unneeded: set[int] = set()
        for pack, at in sorted(self._missing_at.items()):
            sets = sorted(self._needing.get(pack, ()))
            if sets:
                n = len(sets)
                self.errors[at] = CheckProblem(
                    f"pack '{short(pack)}' is indexed but missing: {n} set{'s' if n != 1 else ''} "
                    f"need{'s' if n == 1 else ''} blobs it held (named below with the paths they hurt)",
                    object_id=pack, sets=tuple(sets))
            elif pack in self._wal_needs or not whole:
                continue
            else:
                unneeded.add(at)
                self.warnings.append(CheckProblem(
                    f"pack '{short(pack)}' is indexed but missing, and no set or WAL file needs a blob the index "
                    "places in it: nothing is lost, and backups store anew what they need of it; 'cairn repair "
                    "index' drops its entries from the index", object_id=pack))
        if unneeded:
            self.errors = [e for i, e in enumerate(self.errors) if i not in unneeded]
            self._truncated = {}  # (indices into errors, used up by now)
            if len(unneeded) == len(self._missing_at) and not self._lost_otherwise:
                self._lost_for_good = False
                self.missing = self.unindexed_needed

    def _unindexed_warnings(self, whole: bool) -> None:
        """Packs no index names, told apart by what the walk found (`whole`: every set walked).
        When no set and no WAL file needs a blob no index names, or when such a pack's trailer
        lists none of the blobs they need, the pack is what an interrupted backup or prune left
        (restic's unreferenced packs): no damage, one note for all of them, and prune removes
        them. A pack whose trailer lists blobs sets need lost its index file (deleted, or lost
        with a copy of the repository): a warning says so and names the repair (the blobs the
        sets miss are errors). What cannot be told apart (one set checked, a trailer that
        cannot be read, a pack a repair left out) keeps a warning naming both readings."""
        held = self._held_by_unindexed() if self.unindexed_needed and self._unindexed else {}
        self._regained = sorted(held)
        self._unrecovered = bool(self._needed - set().union(*held.values())) if held else True
        leftovers = 0
        for pack in self._unindexed:
            if pack in held:
                n = len(held[pack])
                self.warnings.append(CheckProblem(
                    f"pack '{short(pack)}' holds {n} blob{'s' if n != 1 else ''} that sets need and no index file "
                    "names: its index file was deleted or lost; 'cairn repair index' indexes it again",
                    object_id=pack))
                continue
            if whole and (pack in self._unneeded or not self.unindexed_needed):
                leftovers += 1
                continue
            if self.unindexed_needed:
                why = ("sets need blobs that no index names: if its index file was lost, 'cairn repair index' "
                       "indexes it; if a repair already left it out (a blob in it failed verification), those blobs "
                       "are lost: a full backup of every source stores again what the sources still hold, and "
                       "'cairn prune --forget SET' forgets a set that needs the rest (prune refuses to run until "
                       "no set needs a blob that no index names)")
            else:
                why = ("left by an interrupted backup or prune (prune removes it) or its index file was lost "
                       "(then sets miss blobs, and 'cairn repair index' indexes it)")
            self.warnings.append(CheckProblem(f"pack '{short(pack)}' is not indexed: {why}", object_id=pack))
        if leftovers:
            them = "them" if leftovers > 1 else "it"
            self.notes.append(CheckProblem(
                f"{leftovers} pack{'s' if leftovers > 1 else ''} not in any index, left by an interrupted write; "
                f"prune removes {them}"))

    def _held_by_unindexed(self) -> dict[str, set[bytes]]:
        """The packs no index names that hold whole blobs sets or the WAL need and no index
        names, with those blobs: their trailer lists them, and each verifies against its id (a
        pack a repair left out holds the blob that failed there; that one is not claimed). Such
        packs are read whole, as a repair would, up to LOOK_BYTES in all; beyond that, and for a
        pack whose trailer cannot be read, nothing is claimed."""
        held: dict[str, set[bytes]] = {}
        key = getattr(self.repo, "key", None)
        budget = LOOK_BYTES
        for pack in self._unindexed:
            try:
                size = self._sizes.get(pack) or self.repo.backend.stat("packs", pack)
                off, count, digest = parse_footer(pack, self.repo.backend.get_range("packs", pack, size - FOOTER.size,
                                                                                     FOOTER.size))
                if not len(HEADER) <= off <= size - FOOTER.size:
                    continue
                trailer = self.repo.backend.get_range("packs", pack, off, size - FOOTER.size - off)
                entries = parse_trailer(pack, trailer, count, digest, key.open_trailer if key is not None else None)
                wanted = [e for e in entries if e.id in self._needed]
                if not wanted:
                    self._unneeded.add(pack)  # holds nothing a set needs: left by an interrupted write
                    continue
                if size > budget:
                    continue
                budget -= size
                data = self.repo.backend.get("packs", pack)
            except UnavailableError:
                raise
            except CairnError:
                continue  # gone meanwhile, refused or damaged: its warning says what else it may be
            self.bytes_read += len(data)
            if all(self._whole_blob(pack, data, e) for e in wanted):
                held[pack] = {e.id for e in wanted}
        return held

    def _whole_blob(self, pack: str, data: bytes, e: PackEntry) -> bool:
        """Whether blob `e` of `pack` (its bytes `data`) opens and hashes to its id; a delta-coded
        one is not verified alone (its reference may be in no index either): False."""
        if e.codec == CODEC_ZSTD_REF or e.offset + e.stored_len > len(data):
            return False
        try:
            stored = self.repo.reader.unseal(pack, e.id, data[e.offset:e.offset + e.stored_len])
            return self.repo.reader.blob_id(decode_blob(stored, e.codec, e.raw_len)) == e.id
        except Exception:  # noqa: BLE001 - any failure to open, decompress or hash is damage
            return False

    def _emit(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(Progress(phase, done, total))

    def _read_all_packs(self, choose: Callable[[list[str]], list[str]] | None = None) -> None:
        by_pack: dict[str, list[bytes]] = defaultdict(list)
        for bid, loc in self.repo.index.items():
            by_pack[loc.pack].append(bid)
        packs = sorted(by_pack)
        if choose is not None:
            packs = choose(packs)
        for n, pack in enumerate(packs):
            self._emit("read-data", n, len(packs))
            try:
                data = self.repo.backend.get("packs", pack)
            except NotFoundError:
                continue
            except UnavailableError:
                raise
            except BackendError as e:  # refused (permissions, not a file): its blobs are unreadable
                self.errors.append(CheckProblem(str(e), object_id=pack))
                self.refused = True
                for bid in by_pack[pack]:
                    self.bad[bid] = f"pack '{short(pack)}' cannot be read"
                continue
            self.packs_checked += 1
            self.bytes_read += len(data)
            self.chunks_checked += len(by_pack[pack])
            if pack in self._truncated:
                # One finding per pack: it was reported as truncated (_packs_present), and its
                # checksum cannot match, so saying that too would count one damage twice. Its
                # blobs past the end stay bad as truncated; those still within it are verified
                # one by one, so a damaged one is still found: the pack's one finding says how
                # many, and each is named by the sets and paths it hurts, with its own reason.
                self._find_bad_blobs(pack, data, by_pack[pack])
                continue
            try:
                parse_pack(pack, data, self.repo.key.open_trailer if getattr(self.repo, "key", None) else None)
            except CorruptionError as e:
                self.errors.append(CheckProblem(str(e), object_id=pack))
                self.corrupt = True
                self._find_bad_blobs(pack, data, by_pack[pack])

    def _count_damage_in_truncated(self) -> None:
        """Read-data: the one finding of a truncated pack also counts the blobs still within it
        that failed verification (each is named through the sets that need it)."""
        damaged: dict[str, int] = defaultdict(int)
        for bid in self.bad:
            loc = self.repo.index.get(bid)
            if loc is not None and loc.pack in self._truncated and bid not in self._cut:
                damaged[loc.pack] += 1
        for pack, n in sorted(damaged.items()):
            at = self._truncated[pack]
            self.errors[at] = CheckProblem(f"{self.errors[at].message}; {n} of the blobs still within it "
                                           f"fail{'s' if n == 1 else ''} verification too", object_id=pack)

    def _find_bad_blobs(self, pack: str, data: bytes, ids: list[bytes]) -> None:
        """Verify each blob of a damaged pack on its own; a blob already known bad (past the end
        of a truncated pack) keeps that, more specific, reason."""
        for bid in ids:
            if bid in self.bad:
                continue
            loc = self.repo.index.get(bid)
            stored = data[loc.offset:loc.offset + loc.stored_len]
            try:
                stored = self.repo.reader.unseal(pack, bid, stored)
                if loc.codec == CODEC_ZSTD_REF:
                    ref = self.repo.reader.reference_data(pack, bid, stored)
                    plain = decode_blob(stored, loc.codec, loc.raw_len, ref)
                else:
                    plain = decode_blob(stored, loc.codec, loc.raw_len)
                ok = self.repo.reader.blob_id(plain) == bid
            except Exception:  # noqa: BLE001 - any decode failure means damaged
                ok = False
            if not ok:
                self.bad[bid] = f"unable to read pack '{short(pack)}': checksum mismatch in blob '{short(bid.hex())}'"
                self.corrupt = True

    def _check_references(self) -> None:
        """A delta blob is only as good as its reference: missing or damaged reference -> bad."""
        for bid, loc in self.repo.index.items():
            if loc.codec != CODEC_ZSTD_REF or bid in self.bad:
                continue
            try:
                ref = self.repo.reader.reference_of(bid)
            except CairnError as e:
                self.bad[bid] = str(e)
                continue
            if ref in self.bad or ref not in self.repo.index:
                why = "is damaged" if ref in self.bad else "is missing"
                self.bad[bid] = (f"reference blob '{short(ref.hex())}' of blob '{short(bid.hex())}' in pack "
                                 f"'{short(loc.pack)}' {why}")
                held = self.repo.index.get(ref)
                if held is not None and held.pack in self._missing_at:  # a set needing the delta needs that pack
                    self._via_reference[bid] = held.pack

    def _read_blobs_of(self, sets: list[BackupSet]) -> None:
        seen: set[bytes] = set()
        for s in sets:
            for bid in (b for t in set_trees(s) for b in self._blobs_of_tree(bytes.fromhex(t), seen)):
                self.chunks_checked += 1
                if bid in self.bad:  # past the end of a truncated pack: that reason stands
                    continue
                try:
                    self.bytes_read += len(self.repo.reader.read(bid))
                except CairnError as e:
                    self.bad[bid] = str(e)
                    self.corrupt = True

    def _blobs_of_tree(self, tree: bytes, seen: set[bytes]):
        if tree in seen:
            return
        seen.add(tree)
        yield tree
        try:
            entries = iter(self.repo.tree_entries(tree))
        except CairnError:
            return
        while True:
            try:
                e = next(entries)  # a large tree is decoded as it is walked
            except (StopIteration, CairnError):  # the tree's own damage is the tree walk's to report
                return
            if e.kind == "dir" and e.subtree:
                yield from self._blobs_of_tree(e.subtree, seen)
            for c in e.chunks:
                if c not in seen:
                    seen.add(c)
                    yield c

    # -- sets ------------------------------------------------------------------------
    def _walk_sets(self, sets: list[BackupSet]) -> None:
        grouped: dict[str, tuple[str, list[str], list[str]]] = {}
        for s in sets:
            problems = [(f"{name}:{rel}" if name else rel, obj, msg) for name, t in _named_trees(s)
                        for rel, obj, msg in self._tree(bytes.fromhex(t))]
            for rel, obj, msg in problems:
                loc = self.repo.index.get(obj) if self._missing_at else None
                if loc is not None and loc.pack in self._missing_at:
                    self._needing[loc.pack].add(s.id)
                elif obj in self._via_reference:
                    self._needing[self._via_reference[obj]].add(s.id)
                key = msg
                entry = grouped.setdefault(key, (obj.hex(), [], []))
                if s.id not in entry[1]:
                    entry[1].append(s.id)
                if len(entry[2]) < MAX_PATHS and rel not in entry[2]:
                    entry[2].append(rel)
        for msg, (obj, set_ids, paths) in grouped.items():
            self.errors.append(CheckProblem(msg, object_id=obj, sets=tuple(set_ids), paths=tuple(paths)))

    def _tree(self, tree: bytes) -> list[tuple[str, bytes, str]]:
        """Problems inside tree `tree` as (relative path, object id, message); memoised per tree."""
        hit = self._tree_problems.get(tree)
        if hit is not None:
            return hit
        out: list[tuple[str, bytes, str]] = []
        if tree in self.bad:
            out.append(("", tree, f"tree is damaged: {self.bad[tree]}"))
        elif tree not in self.repo.index:
            out.append(("", tree, f"tree '{short(tree.hex())}' is missing from the index"))
            self.missing = self.unindexed_needed = True
            self._needed.add(tree)
        else:
            try:
                data = self.repo.reader.read(tree)
                entries = iter(tree_entries(tree, data))  # a large tree is decoded as it is walked
            except UnavailableError:
                raise
            except CairnError as e:  # and the advice says which repair applies
                entries = iter(())
                out.append(("", tree, f"tree is damaged: {e}"))
                if isinstance(e, NotFoundError):
                    self.missing = self._lost_for_good = self._lost_otherwise = True
                elif isinstance(e, BackendError):
                    self.refused = True
                else:
                    self.corrupt = True
            while True:
                try:
                    e = next(entries)
                except StopIteration:
                    break
                except CorruptionError as err:  # not a tree after all, from some entry on
                    out.append(("", tree, f"tree is damaged: {err}"))
                    self.corrupt = True
                    break
                name = os.fsdecode(e.name)
                if e.kind == "dir" and e.subtree:
                    for rel, obj, msg in self._tree(e.subtree):
                        out.append((f"{name}/{rel}" if rel else name, obj, msg))
                held: int | None = 0  # the bytes its chunks hold (None: a chunk is not readable)
                for c in e.chunks:
                    loc = self.repo.index.get(c)
                    if c in self.bad:
                        out.append((name, c, self.bad[c]))
                        held = None
                    elif loc is None:
                        out.append((name, c, f"chunk '{short(c.hex())}' is missing from the index"))
                        self.missing = self.unindexed_needed = True
                        self._needed.add(c)
                        held = None
                    elif held is not None:
                        held += loc.raw_len
                if e.kind == "file" and held is not None and e.size > held:
                    out.append((name, tree, short_file_problem(e.size, held)))
                    self.short_files = True
        self._tree_problems[tree] = out
        return out


    # -- WAL -------------------------------------------------------------------------
    def _check_wal(self, read_data: bool) -> None:
        """Every catalog entry decodes and every chunk it names is indexed and undamaged; with
        read_data, entries without a checksum of their own are verified against their content."""
        for name in sorted(self.repo.backend.list("wal")):
            try:
                data = self.repo.backend.get("wal", name)
                doc = walmod.decode_catalog(name, data)
            except NotFoundError:
                continue
            except CorruptionError as e:
                self.errors.append(CheckProblem(str(e), object_id=name))
                self.damaged_wal = True
                continue
            for c in (bytes.fromhex(h) for h in doc["chunks"]):
                why = self.bad.get(c) or (None if c in self.repo.index else
                                          f"chunk '{short(c.hex())}' is missing from the index")
                if why is not None:
                    self.missing = True
                    self.lost_wal = True
                    self.unindexed_needed = self.unindexed_needed or c not in self.repo.index
                    if c in self.repo.index:
                        self._lost_for_good = self._lost_otherwise = True
                        self._wal_needs.add(self.repo.index.get(c).pack)
                    else:
                        self._needed.add(c)
                    self.errors.append(CheckProblem(f"WAL file '{name}': {why}", object_id=c.hex()))
                    break
            else:
                if read_data and "sum" not in doc:
                    try:
                        walmod.read_content(self.repo, name, doc)
                    except CairnError as e:
                        self.errors.append(CheckProblem(str(e), object_id=name))
                        continue
                if read_data:
                    self._check_wal_content(name, doc)

    def _check_wal_content(self, name: str, doc: dict) -> None:
        """With read_data: the start of the entry's content is the file its name says (the
        engine's rules read a segment's page header), so an entry filed under another's name
        (swapped, or damaged where its name is not bound to it) is found before a recovery
        is handed the wrong segment."""
        rules = getattr(self.repo, "segment_rules", None)
        if rules is None or not doc["chunks"] or not hasattr(rules, "content_problem"):
            return
        try:
            head = self.repo.reader.read(bytes.fromhex(doc["chunks"][0]))
        except CairnError:
            return  # the chunk's own damage is reported with the packs
        why = rules.content_problem(walmod.split_object(name)[1], bytes(head[:HEAD_BYTES]))
        if why is not None:
            self.damaged_wal = True
            self.errors.append(CheckProblem(f"unable to read WAL file '{name}': {why}", object_id=name))


def short_file_problem(recorded: int, held: int) -> str:
    """The finding of a file entry that records more bytes than its chunks hold (the same for
    the same file in every set that shares it, so one finding names them all)."""
    return (f"file records {recorded} bytes but its chunks hold {held}: it grew while it was read (a set taken by "
            f"an older Cairn), and a restore writes only the {held} bytes stored")


def _named_trees(s: BackupSet) -> list[tuple[str, str]]:
    return [("", s.tree)] + [(name, a["tree"]) for name, a in s.attachments.items()]
