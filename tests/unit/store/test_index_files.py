"""Index files (store/content/index.py): what encode_index writes, decode_index reads back, and a
file whose checksums hold but whose layout does not (a writer's bug, not damage in transit) is
refused as a checksum mismatch rather than read wrongly or failing with a Python error."""

from __future__ import annotations

import os
import struct

import blake3
import pytest
from cairn.store.content.index import IENTRY, MAGIC, decode_index, encode_index
from cairn.store.content.packs import PackEntry
from cairn.store.errors import CorruptionError


def sealed(body: bytes) -> tuple[str, bytes]:
    """`body` with its inner checksum, and the name a file of that content gets."""
    data = body + blake3.blake3(body).digest()
    return blake3.blake3(data).hexdigest(), data


def layout(pack_ids: list[bytes], count: int, entries: list[tuple]) -> bytes:
    body = MAGIC + struct.pack("<I", len(pack_ids)) + b"".join(pack_ids) + struct.pack("<I", count)
    return body + b"".join(IENTRY.pack(*e) for e in entries)


def test_entries_come_back_per_pack_in_their_order() -> None:
    a, b = "aa" * 32, "bb" * 32
    packs = {a: [PackEntry(os.urandom(32), 0, 1, 100 + i, 50 + i, 8 + i * 60) for i in range(300)],
             b: [PackEntry(os.urandom(32), 1, 0, 7, 7, 8)]}
    name, data = encode_index(packs)
    assert decode_index(name, data) == packs
    assert all(type(e) is PackEntry for e in decode_index(name, data)[a])


@pytest.mark.parametrize("count", [0, 2, 4])
def test_an_entry_count_that_does_not_fit_the_file_is_refused(count: int) -> None:
    entries = [(os.urandom(32), 0, 1, 0, 8, 10, 12) for _ in range(3)]
    name, data = sealed(layout([b"\xaa" * 32], count, entries))
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        decode_index(name, data)


def test_an_entry_naming_a_pack_the_file_does_not_list_is_refused() -> None:
    entries = [(os.urandom(32), 0, 1, 0, 8, 10, 12), (os.urandom(32), 0, 1, 1, 8, 10, 12)]
    name, data = sealed(layout([b"\xaa" * 32], 2, entries))
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        decode_index(name, data)


def test_the_well_formed_twin_of_those_files_is_read() -> None:
    """The builders above make files decode_index accepts when their layout holds."""
    entries = [(os.urandom(32), 0, 1, 0, 8, 10, 12) for _ in range(3)]
    name, data = sealed(layout([b"\xaa" * 32], 3, entries))
    got = decode_index(name, data)["aa" * 32]
    assert [(e.id, e.offset, e.stored_len, e.raw_len) for e in got] == [(e[0], 8, 10, 12) for e in entries]
