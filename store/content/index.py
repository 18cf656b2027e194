"""The chunk index: blob id -> (pack, offset, lengths, type, codec).

On disk, index files list the blobs of some packs:
    b"CAIRNIX1" | pack_count u32 | pack ids (32 bytes each) | entry_count u32 |
    entries: id (32) | type u8 | codec u8 | pack_no u32 | offset u32 | stored_len u32 | raw_len u32 |
    blake3 of all preceding bytes (32)
An index file is named by the blake3 of its content. Index files only ever add knowledge;
the same blob listed twice (a crash between writing a pack and its index, a rewrite by prune)
is harmless. In memory, each blob costs one dict slot with a 32-byte key and one packed int.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Iterable, Iterator

import blake3

from ..errors import CorruptionError, short
from .packs import PackEntry

MAGIC = b"CAIRNIX1"
IENTRY = struct.Struct("<32sBBIIII")


def _pack_value(pack_no: int, e: PackEntry) -> int:
    return ((((pack_no << 32 | e.offset) << 32 | e.stored_len) << 32 | e.raw_len) << 8) | (e.type << 4 | e.codec)


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
    """In-memory map of every committed blob. Thread-safe."""

    def __init__(self) -> None:
        self._map: dict[bytes, int] = {}
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._map

    def _pack_number(self, pack: str) -> int:
        n = self._pack_no.get(pack)
        if n is None:
            n = self._pack_no[pack] = len(self._packs)
            self._packs.append(pack)
        return n

    def add_pack(self, pack: str, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            n = self._pack_number(pack)
            m = self._map
            for e in entries:
                m[e.id] = _pack_value(n, e)

    def get(self, blob_id: bytes) -> Location | None:
        v = self._map.get(blob_id)
        if v is None:
            return None
        tc = v & 0xFF
        v >>= 8
        raw = v & 0xFFFFFFFF
        v >>= 32
        stored = v & 0xFFFFFFFF
        v >>= 32
        off = v & 0xFFFFFFFF
        return Location((self._packs[v >> 32], off, stored, raw, tc >> 4, tc & 0xF))

    def packs(self) -> set[str]:
        with self._lock:
            used = {v >> 104 for v in self._map.values()}
            return {self._packs[n] for n in used}

    def items(self) -> Iterator[tuple[bytes, Location]]:
        for k in list(self._map):
            loc = self.get(k)
            if loc is not None:
                yield k, loc

    def memory_bytes(self) -> int:
        """Approximate memory held by the map (keys, values and the dict's table)."""
        n = len(self._map)
        if not n:
            return sys.getsizeof(self._map)
        k, v = next(iter(self._map.items()))
        return sys.getsizeof(self._map) + n * (sys.getsizeof(k) + sys.getsizeof(v))


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


def decode_index(name: str, data: bytes) -> dict[str, list[PackEntry]]:
    """Parse and verify one index file."""
    bad = CorruptionError(f"unable to read index '{short(name)}': checksum mismatch")
    if len(data) < len(MAGIC) + 40 or blake3.blake3(data).hexdigest() != name:
        raise bad
    if not data.startswith(MAGIC) or blake3.blake3(data[:-32]).digest() != data[-32:]:
        raise bad
    pos = len(MAGIC)
    (npacks,) = struct.unpack_from("<I", data, pos)
    pos += 4
    names = [data[pos + 32 * i: pos + 32 * (i + 1)].hex() for i in range(npacks)]
    pos += 32 * npacks
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    out: dict[str, list[PackEntry]] = {n: [] for n in names}
    for _ in range(count):
        bid, t, c, pn, off, sl, rl = IENTRY.unpack_from(data, pos)
        pos += IENTRY.size
        out[names[pn]].append(PackEntry(bid, t, c, rl, sl, off))
    return out
