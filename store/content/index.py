"""The chunk index: blob id -> (pack, offset, lengths, type, codec).

On disk, index files list the blobs of some packs:
    b"CAIRNIX1" | pack_count u32 | pack ids (32 bytes each) | entry_count u32 |
    entries: id (32) | type u8 | codec u8 | pack_no u32 | offset u32 | stored_len u32 | raw_len u32 |
    blake3 of all preceding bytes (32)
An index file is named by the blake3 of its content. Index files only ever add knowledge;
the same blob listed twice (a crash between writing a pack and its index, a rewrite by prune,
two sessions at once that both stored a new chunk) is harmless: the location added last is
kept, except that a plain copy is never replaced by a delta-coded one (codec 2) and (the
loader's part: Repository._load_all, _add_pack) a location in a pack storage lacks never
replaces one in a pack it has (an index file of an older state put back). A delta names
its reference by id and a reference must never be a delta itself (blobs.reference_data): two
sessions of one database at once may store a chunk plainly and as a delta, a later set then
compresses against the plain copy, and an index that named the delta copy (learnt last, or
loaded last: index files load in name order) made that later delta unreadable.

In memory the index is compact, about 50 bytes per blob whatever its size (a dict of bytes
keys cost about 140): blob ids are (keyed) blake3 hashes, so their first bits spread them
evenly over 2^k buckets, and each bucket is one immutable `bytes` of 49-byte records
`id (32) | pack_no u32 | offset u32 | stored_len u32 | raw_len u32 | type<<4|codec u8`. A
lookup picks the bucket by the id's first bits and finds the id in it (12 to 48 records on
average, one C-level search); the table grows 4x when buckets average more than 48. Buckets
of a few KB rather than a few hundred bytes also keep glibc from fragmenting: the process
grows by about 55 bytes per blob, not just the objects' 50 (tests/unit/store/test_index_memory.py).
Adding replaces whole bucket objects and growing replaces the whole table, so lookups take
no lock and always see a consistent bucket; adds are serialised by a lock. Loading many index
files at once goes through IndexBuilder, which reads entries straight from the files' bytes
and makes each bucket once (a load holds the records about once, as the finished index does).
"""

from __future__ import annotations

import struct
import sys
import threading
from bisect import bisect_left
from collections.abc import Container, Iterable, Iterator
from typing import NamedTuple

import blake3

from ..errors import CorruptionError, short
from .packs import CODEC_ZSTD_REF, PackEntry

MAGIC = b"CAIRNIX1"
IENTRY = struct.Struct("<32sBBIIII")
REC = struct.Struct("<32sIIIIB")  # one blob in memory: id, pack_no, offset, stored_len, raw_len, type<<4|codec
VAL = struct.Struct("<IIIIB")  # the record without its id
RSIZE = REC.size  # 49
IDLEN = 32
BUCKET_TARGET = 48  # average records per bucket before the table grows (4x)


def _slot(bid: bytes, bits: int) -> int:
    return int.from_bytes(bid[:4], "big") >> (32 - bits) if bits else 0


def _keeps(old: bytes | memoryview, new: bytes | memoryview) -> bool:
    """True when record `old` stays over record `new` of the same blob (records of RSIZE bytes,
    the last one type<<4|codec): a plain copy is kept over a delta-coded one."""
    return new[RSIZE - 1] & 0xF == CODEC_ZSTD_REF and old[RSIZE - 1] & 0xF != CODEC_ZSTD_REF


def _find(bucket: bytes, bid: bytes) -> int:
    """Offset of the record of `bid` in `bucket`, -1 if none (ids only match at record starts)."""
    pos = bucket.find(bid)
    while pos > 0 and pos % RSIZE:
        pos = bucket.find(bid, pos + 1)
    return pos


class Location(tuple):
    """(pack name, offset, stored_len, raw_len, type, codec) of one blob."""

    __slots__ = ()

    pack = property(lambda s: s[0])
    offset = property(lambda s: s[1])
    stored_len = property(lambda s: s[2])
    raw_len = property(lambda s: s[3])
    type = property(lambda s: s[4])
    codec = property(lambda s: s[5])


class Index:
    """In-memory map of every committed blob. Thread-safe; see the module docstring."""

    def __init__(self) -> None:
        self._table: tuple[int, list[bytes]] = (0, [b""])  # (bits, buckets), replaced as a whole
        self._lookup: tuple[int, list[bytes]] = (32, self._table[1])  # (32 - bits, the same buckets)
        self._count = 0
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def _record(self, blob_id: object) -> tuple[bytes, int]:
        if type(blob_id) is not bytes or len(blob_id) != IDLEN:
            return b"", -1
        shift, buckets = self._lookup
        bucket = buckets[int.from_bytes(blob_id[:4], "big") >> shift]
        pos = bucket.find(blob_id)
        while pos > 0 and pos % RSIZE:
            pos = bucket.find(blob_id, pos + 1)
        return bucket, pos

    def __contains__(self, blob_id: object) -> bool:
        if type(blob_id) is not bytes or len(blob_id) != IDLEN:
            return False
        shift, buckets = self._lookup
        bucket = buckets[int.from_bytes(blob_id[:4], "big") >> shift]
        pos = bucket.find(blob_id)
        while pos > 0 and pos % RSIZE:
            pos = bucket.find(blob_id, pos + 1)
        return pos >= 0

    def _pack_number(self, pack: str) -> int:
        n = self._pack_no.get(pack)
        if n is None:
            n = self._pack_no[pack] = len(self._packs)
            self._packs.append(pack)
        return n

    def add_pack(self, pack: str, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            n = self._pack_number(pack)
            bits, buckets = self._table
            shift = 32 - bits
            pack_rec = REC.pack
            groups: dict[int, dict[bytes, bytes]] = {}
            for bid, btype, codec, raw_len, stored_len, offset in entries:  # PackEntry, unpacked
                h = int.from_bytes(bid[:4], "big") >> shift
                g = groups.get(h)
                if g is None:
                    g = groups[h] = {}
                rec = pack_rec(bid, n, offset, stored_len, raw_len, btype << 4 | codec)
                if bid not in g or not _keeps(g[bid], rec):
                    g[bid] = rec
            for h, recs in groups.items():
                bucket = buckets[h]
                if bucket:
                    known = [b for b in recs if bucket.find(b) >= 0 and _find(bucket, b) >= 0]
                    for bid in known:  # the newer location replaces the one known (not a plain by a delta)
                        pos = _find(bucket, bid)
                        rec = recs.pop(bid)
                        if not _keeps(bucket[pos:pos + RSIZE], rec):
                            bucket = bucket[:pos] + rec + bucket[pos + RSIZE:]
                self._count += len(recs)
                buckets[h] = bucket + b"".join(recs.values()) if recs else bucket
            if self._count > BUCKET_TARGET << bits:
                self._grow()

    def _grow(self) -> None:
        """Make the table 4x (or more) larger, so buckets average at most BUCKET_TARGET records
        (lock held)."""
        bits = self._table[0]
        new_bits = bits + 2
        while self._count > BUCKET_TARGET << new_bits:
            new_bits += 1
        self._split(min(new_bits, 32))

    def _split(self, new_bits: int, consume: bool = False) -> None:
        """Replace the table with one of 2^new_bits buckets: a bucket's records sorted by id split
        into contiguous runs by slot. With `consume` (an index nobody reads yet) each old bucket
        is dropped once split, so the records are held about once, not twice."""
        bits, buckets = self._table
        k = new_bits - bits
        if k <= 0:
            return
        table: list[bytes] = []
        for h, bucket in enumerate(buckets):
            recs = [bucket[o:o + RSIZE] for o in range(0, len(bucket), RSIZE)]
            if consume:
                buckets[h] = bucket = b""
            recs.sort()
            lo = 0
            for j in range(1, 1 << k):
                hi = bisect_left(recs, ((h << k | j) << (32 - new_bits)).to_bytes(4, "big"), lo)
                table.append(b"".join(recs[lo:hi]))
                lo = hi
            table.append(b"".join(recs[lo:]))
        self._table = (new_bits, table)
        self._lookup = (32 - new_bits, table)

    @classmethod
    def _built(cls, bits: int, buckets: list[bytes], count: int, packs: list[str]) -> Index:
        index = cls()
        index._table = (bits, buckets)
        index._lookup = (32 - bits, buckets)
        index._count = count
        index._packs = packs
        index._pack_no = {p: n for n, p in enumerate(packs)}
        return index

    def get(self, blob_id: bytes) -> Location | None:
        bucket, pos = self._record(blob_id)
        if pos < 0:
            return None
        pn, off, stored, raw, tc = VAL.unpack_from(bucket, pos + IDLEN)
        return Location((self._packs[pn], off, stored, raw, tc >> 4, tc & 0xF))

    def pack_names(self) -> set[str]:
        """Every pack an index file loaded (or a session published) named, also one whose blobs
        are all located elsewhere now: as many as there are packs, not blobs, to look at."""
        with self._lock:
            return set(self._packs)

    def packs(self) -> set[str]:
        with self._lock:
            _, buckets = self._table
            used: set[int] = set()
            for bucket in buckets:
                used.update(pn for _, pn, _, _, _, _ in REC.iter_unpack(bucket))
            return {self._packs[n] for n in used}

    def items(self) -> Iterator[tuple[bytes, Location]]:
        _, buckets = self._table
        packs = self._packs
        for bucket in list(buckets):
            for bid, pn, off, stored, raw, tc in REC.iter_unpack(bucket):
                yield bid, Location((packs[pn], off, stored, raw, tc >> 4, tc & 0xF))

    def memory_bytes(self) -> int:
        """Memory held by the blob records and the bucket table (pack names not counted)."""
        _, buckets = self._table
        return sys.getsizeof(buckets) + sum(sys.getsizeof(b) for b in buckets)


class IndexBuilder:
    """Builds one Index from many packs at once, as loading every index file does.

    `Index.add_pack` replaces a whole bucket to add records to it, which is right for a session
    adding a pack to an index in use but copies each bucket once per pack that lands in it when
    millions of records arrive together. The builder appends each record to one of 256 growable
    buffers chosen by the id's first byte (large buffers grow in place, so they neither copy
    much nor fragment the heap), and `finish` turns each buffer into a bucket and splits the
    table to the size `Index` keeps, dropping each old bucket as it goes: a load holds the
    records about once (plus the buffers' slack), and moves each about twice. The same blob
    listed more than once keeps the location added last, as in `Index.add_pack` (and as there,
    never a delta-coded copy over a plain one); `finish` leaves in `contested` the packs whose
    location of such a blob was kept over another pack's, which the loader may check exist. Not
    thread-safe: one loader owns it until `finish`.
    """

    PART_BITS = 8

    def __init__(self) -> None:
        self._parts: list[bytearray] = [bytearray() for _ in range(1 << self.PART_BITS)]
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self.contested: set[str] = set()

    def add_pack(self, pack: str, entries: Iterable[PackEntry]) -> None:
        n = self._pack_no.get(pack)
        if n is None:
            n = self._pack_no[pack] = len(self._packs)
            self._packs.append(pack)
        parts = self._parts
        pack_rec = REC.pack
        for bid, btype, codec, raw_len, stored_len, offset in entries:  # PackEntry, unpacked
            parts[bid[0]] += pack_rec(bid, n, offset, stored_len, raw_len, btype << 4 | codec)

    def add_file(self, f: IndexFile, defer: Container[str] = ()) -> dict[str, list[PackEntry]]:
        """Add every entry of a verified index file, straight from its bytes (no object per
        entry); the entries of packs in `defer` are returned instead, per pack. A file with an
        entry naming a pack it does not list adds nothing and raises CorruptionError."""
        nums = [self._pack_no.get(p, -1) for p in f.packs]
        for i, p in enumerate(f.packs):
            if nums[i] < 0:
                nums[i] = self._pack_no[p] = len(self._packs)
                self._packs.append(p)
        deferred: dict[str, list[PackEntry]] = {p: [] for p in f.packs if p in defer}
        parts = self._parts
        pack_rec = REC.pack
        sizes = [len(part) for part in parts]
        try:
            if not deferred:
                for bid, t, c, pn, off, sl, rl in IENTRY.iter_unpack(f.entries):
                    parts[bid[0]] += pack_rec(bid, nums[pn], off, sl, rl, t << 4 | c)
            else:
                lists = [deferred.get(p) for p in f.packs]
                for bid, t, c, pn, off, sl, rl in IENTRY.iter_unpack(f.entries):
                    held = lists[pn]
                    if held is None:
                        parts[bid[0]] += pack_rec(bid, nums[pn], off, sl, rl, t << 4 | c)
                    else:
                        held.append(PackEntry(bid, t, c, rl, sl, off))
        except IndexError:  # a pack number the file does not list: take back what it added
            for part, size in zip(parts, sizes, strict=True):
                del part[size:]
            raise bad_pack_number(f) from None
        return deferred

    def finish(self) -> Index:
        """The index of every pack added; the builder is empty afterwards."""
        buckets: list[bytes] = []
        count = 0
        parts = self._parts
        contested: set[int] = set()  # pack numbers kept for a blob that another pack holds too
        for h, part in enumerate(parts):
            bucket = bytes(part)
            parts[h] = bytearray()
            ids = {bucket[o:o + IDLEN] for o in range(0, len(bucket), RSIZE)}
            if len(ids) * RSIZE != len(bucket):  # a blob listed twice: the record added last, not a delta over a plain
                last: dict[bytes, int] = {}
                twice: set[bytes] = set()
                for o in range(0, len(bucket), RSIZE):
                    bid = bucket[o:o + IDLEN]
                    had = last.get(bid)
                    if had is not None and bucket[had + IDLEN:had + IDLEN + 4] != bucket[o + IDLEN:o + IDLEN + 4]:
                        twice.add(bid)
                    if had is None or not _keeps(bucket[had:had + RSIZE], bucket[o:o + RSIZE]):
                        last[bid] = o
                contested.update(int.from_bytes(bucket[last[b] + IDLEN:last[b] + IDLEN + 4], "little")
                                 for b in twice)
                bucket = b"".join(bucket[o:o + RSIZE] for o in sorted(last.values()))
            count += len(ids)
            buckets.append(bucket)
        bits = 0  # as Index grows: the fewest buckets that average at most BUCKET_TARGET records
        while count > BUCKET_TARGET << bits:
            bits += 1
        if bits < self.PART_BITS:  # neighbours share their first `bits` bits: join them
            k = self.PART_BITS - bits
            index = Index._built(bits, [b"".join(buckets[i:i + (1 << k)]) for i in range(0, len(buckets), 1 << k)],
                                 count, self._packs)
        else:
            index = Index._built(self.PART_BITS, buckets, count, self._packs)
            index._split(bits, consume=True)
        packs = self._packs
        self.__init__()
        self.contested = {packs[n] for n in contested}
        return index


def encode_index(packs: dict[str, list[PackEntry]]) -> tuple[str, bytes]:
    """Serialise the entries of `packs` into one index file; returns (name, bytes)."""
    names = sorted(packs)
    out = bytearray(MAGIC)
    out += struct.pack("<I", len(names))
    for n in names:
        out += bytes.fromhex(n)
    total = sum(len(packs[n]) for n in names)
    out += struct.pack("<I", total)
    for i, n in enumerate(names):
        for e in packs[n]:
            out += IENTRY.pack(e.id, e.type, e.codec, i, e.offset, e.stored_len, e.raw_len)
    out += blake3.blake3(out).digest()
    data = bytes(out)
    return blake3.blake3(data).hexdigest(), data


class IndexFile(NamedTuple):
    """One index file whose checksums and layout were verified: the packs it names and its
    entries, IENTRY records (a pack number counts into `packs`; each is checked where used)."""

    name: str
    packs: list[str]
    entries: memoryview


def read_index(name: str, data: bytes) -> IndexFile:
    """Verify one index file (its name is the hash of its content, its inner checksum holds, its
    entry count fits its size) without making an object per entry."""
    bad = CorruptionError(f"unable to read index '{short(name)}': checksum mismatch")
    if len(data) < len(MAGIC) + 40 or blake3.blake3(data).hexdigest() != name:
        raise bad
    if not data.startswith(MAGIC) or blake3.blake3(data[:-32]).digest() != data[-32:]:
        raise bad
    pos = len(MAGIC)
    (npacks,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if pos + 32 * npacks + 4 > len(data) - 32:
        raise bad
    names = [data[pos + 32 * i: pos + 32 * (i + 1)].hex() for i in range(npacks)]
    pos += 32 * npacks
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if pos + count * IENTRY.size != len(data) - 32:
        raise bad
    return IndexFile(name, names, memoryview(data)[pos:pos + count * IENTRY.size])


def bad_pack_number(f: IndexFile) -> CorruptionError:
    """What an entry naming a pack its file does not list means: a file to refuse."""
    return CorruptionError(f"unable to read index '{short(f.name)}': checksum mismatch")


def decode_index(name: str, data: bytes) -> dict[str, list[PackEntry]]:
    """Parse and verify one index file."""
    f = read_index(name, data)
    out: dict[str, list[PackEntry]] = {n: [] for n in f.packs}
    lists = [out[n] for n in f.packs]
    try:
        for bid, t, c, pn, off, sl, rl in IENTRY.iter_unpack(f.entries):
            lists[pn].append(PackEntry(bid, t, c, rl, sl, off))
    except IndexError:  # a pack number the file does not list
        raise bad_pack_number(f) from None
    return out
