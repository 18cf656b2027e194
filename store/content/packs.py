"""Pack files: many stored blobs in one object, self-describing.

Layout (all integers little-endian):
    header   8 bytes  b"CAIRNPK1"
    blobs    stored bytes of each blob, back to back
    trailer  per blob: id (32) | type u8 | codec u8 | raw_len u32 | stored_len u32 | offset u64
    footer   trailer_offset u64 | count u32 | blake3(trailer) (32) | b"CAIRNPKE"
A pack is named by the blake3 of its whole content, so any damage is detectable, and the
index can be rebuilt from packs alone by reading footers and trailers. In an encrypted
repository (format 2) the trailer is sealed (`seal`/`open` from the repository key) and the
footer's hash and offset are those of the sealed trailer, so ids, types and lengths of the
blobs are not readable without the key. A pack written with a write-only key starts with
PK_HEADER and the data key of its blobs wrapped to the repository's public key (see
store/content/crypto.py); its blobs start after that, offsets count from the pack's first byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

import blake3

from ..errors import CorruptionError, short

HEADER = b"CAIRNPK1"
PK_HEADER = b"CAIRNPKW"  # followed by the wrapped data key (store/content/crypto.py PK_HEADER_LEN in all)
FOOTER_MAGIC = b"CAIRNPKE"
ENTRY = struct.Struct("<32sBBIIQ")
FOOTER = struct.Struct("<QI32s8s")

TYPE_DATA = 0
TYPE_TREE = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_ZSTD_REF = 2  # 32-byte reference blob id, then zstd using that blob's plaintext as dictionary


class PackEntry(NamedTuple):
    """Where one blob lives inside its pack. A tuple: loading the index makes one per blob
    (millions at a daemon's start), and a tuple is made in half the time of a frozen dataclass."""

    id: bytes
    type: int
    codec: int
    raw_len: int
    stored_len: int
    offset: int


class PackBuilder:
    """Accumulates blobs for one pack; `finish` returns (name, bytes, entries).

    `buf` may be the buffer of an earlier, uploaded pack: it is overwritten in place, so a
    writer that recycles buffers allocates pack memory once instead of once per pack.
    """

    def __init__(self, buf: bytearray | None = None, seal: Callable[[bytes], bytes] | None = None,
                 header: bytes = HEADER) -> None:
        self.seal = seal
        self.buf = buf if buf is not None else bytearray()
        self.size = 0
        self.entries: list[PackEntry] = []
        self._put(header)

    def _put(self, data: bytes) -> None:
        end = self.size + len(data)
        if end <= len(self.buf):
            self.buf[self.size:end] = data
        else:
            del self.buf[self.size:]
            self.buf += data
        self.size = end

    def add(self, blob_id: bytes, btype: int, codec: int, raw_len: int, stored: bytes) -> None:
        self.entries.append(PackEntry(blob_id, btype, codec, raw_len, len(stored), self.size))
        self._put(stored)

    def __len__(self) -> int:
        return self.size

    def finish(self) -> tuple[str, bytearray, list[PackEntry]]:
        """Close the pack. The bytes returned are `self.buf` itself (no copy of the pack)."""
        trailer = b"".join(ENTRY.pack(e.id, e.type, e.codec, e.raw_len, e.stored_len, e.offset)
                           for e in self.entries)
        if self.seal is not None:
            trailer = self.seal(trailer)
        trailer_offset = self.size
        self._put(trailer)
        self._put(FOOTER.pack(trailer_offset, len(self.entries), blake3.blake3(trailer).digest(), FOOTER_MAGIC))
        del self.buf[self.size:]
        return blake3.blake3(self.buf, max_threads=1).hexdigest(), self.buf, self.entries


def parse_footer(name: str, tail: bytes) -> tuple[int, int, bytes]:
    """Return (trailer_offset, count, trailer_hash) from a pack's last FOOTER.size bytes."""
    if len(tail) < FOOTER.size:
        raise CorruptionError(f"unable to read pack '{short(name)}': too short for a footer")
    off, count, th, magic = FOOTER.unpack(tail[-FOOTER.size:])
    if magic != FOOTER_MAGIC:
        raise CorruptionError(f"unable to read pack '{short(name)}': bad footer magic")
    return off, count, th


def parse_trailer(name: str, trailer: bytes, count: int, trailer_hash: bytes,
                  open_sealed: Callable[[str, bytes], bytes] | None = None) -> list[PackEntry]:
    """Parse and verify a pack trailer into its entries (opening it first when sealed)."""
    if blake3.blake3(trailer).digest() != trailer_hash:
        raise CorruptionError(f"unable to read pack '{short(name)}': trailer checksum mismatch")
    if open_sealed is not None:
        trailer = open_sealed(name, trailer)
    if len(trailer) != count * ENTRY.size:
        raise CorruptionError(f"unable to read pack '{short(name)}': trailer checksum mismatch")
    return list(map(PackEntry._make, ENTRY.iter_unpack(trailer)))


def parse_pack(name: str, data: bytes, open_sealed: Callable[..., bytes] | None = None) -> list[PackEntry]:
    """Verify a whole pack against its name and return its entries. A pack sealed to a public
    key hands its header to `open_sealed` (as `header=`), which holds its wrapped data key."""
    if blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest() != name:
        raise CorruptionError(f"unable to read pack '{short(name)}': checksum mismatch")
    if data.startswith(PK_HEADER):
        if open_sealed is None:
            raise CorruptionError(f"unable to read pack '{short(name)}': sealed to a key and no key given")
        opener, head = open_sealed, bytes(data[:4096])
        open_sealed = lambda n, t: opener(n, t, header=head)  # noqa: E731
    elif not data.startswith(HEADER):
        raise CorruptionError(f"unable to read pack '{short(name)}': bad header magic")
    off, count, th = parse_footer(name, data)
    return parse_trailer(name, data[off:len(data) - FOOTER.size], count, th, open_sealed)
