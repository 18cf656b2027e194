"""IndexBuilder (store/content/index.py): an index built from many packs at once answers exactly
as one built pack by pack with `Index.add_pack`, across the table's growth, with a blob listed
more than once keeping the location added last (but never a delta-coded copy over a plain one),
and stays usable for later `add_pack` calls.
Index files added straight from their bytes give the same index; packs asked to be deferred are
handed back; a file that names a pack it does not list is refused whole."""

from __future__ import annotations

import random
import struct

import blake3
import pytest
from cairn.store.content.index import (
    BUCKET_TARGET,
    IENTRY,
    MAGIC,
    Index,
    IndexBuilder,
    decode_index,
    encode_index,
    read_index,
)
from cairn.store.content.packs import PackEntry
from cairn.store.errors import CorruptionError, short


def make_packs(rng: random.Random, n_packs: int, per_pack: int, reuse: float = 0.0) -> list[tuple[str, list]]:
    """Packs of random blobs; with `reuse`, that share of each pack's blobs repeats earlier ones
    (at new offsets), as a rewrite by prune or a crash before an index file leaves them."""
    seen: list[bytes] = []
    packs = []
    for _ in range(n_packs):
        entries = []
        for i in range(per_pack):
            bid = rng.choice(seen) if seen and rng.random() < reuse else rng.randbytes(32)
            seen.append(bid)
            entries.append(PackEntry(bid, rng.randrange(2), rng.randrange(3), rng.randrange(1 << 32),
                                     rng.randrange(1 << 32), 8 + i * 100))
        packs.append((rng.randbytes(32).hex(), entries))
    return packs


def one_by_one(packs: list[tuple[str, list]]) -> Index:
    index = Index()
    for pack, entries in packs:
        index.add_pack(pack, entries)
    return index


def built(packs: list[tuple[str, list]]) -> Index:
    builder = IndexBuilder()
    for pack, entries in packs:
        builder.add_pack(pack, entries)
    return builder.finish()


@pytest.mark.parametrize(("n_packs", "per_pack", "reuse"), [
    (1, 1, 0.0),
    (3, 40, 0.0),  # below the first growth
    (40, 500, 0.0),  # 20,000 blobs: the table grows twice while it fills
    (40, 500, 0.2),  # with blobs listed again in later packs
    (2, 30_000, 0.1),  # one pack larger than several growths at once
])
def test_a_built_index_answers_as_one_added_pack_by_pack(n_packs: int, per_pack: int, reuse: float) -> None:
    rng = random.Random(n_packs * 7 + per_pack)
    packs = make_packs(rng, n_packs, per_pack, reuse)
    expected, got = one_by_one(packs), built(packs)
    assert len(got) == len(expected)
    assert sorted(got.items()) == sorted(expected.items())
    for _, entries in packs[::3]:
        for e in entries[::7]:
            assert e.id in got and got.get(e.id) == expected.get(e.id)
    missing = rng.randbytes(32)
    assert missing not in got and got.get(missing) is None
    assert got.packs() == expected.packs()
    bits = got._table[0]
    assert len(got) <= BUCKET_TARGET << bits, "buckets average more records than the table allows"
    assert bits == 0 or len(got) > BUCKET_TARGET << (bits - 1), "a table larger than needed: memory per blob grows"


def test_a_blob_listed_twice_keeps_the_location_added_last() -> None:
    bid = bytes(range(32))
    builder = IndexBuilder()
    builder.add_pack("aa" * 32, [PackEntry(bid, 0, 1, 10, 9, 8)])
    builder.add_pack("bb" * 32, [PackEntry(bid, 0, 1, 10, 9, 500)])
    builder.add_pack("cc" * 32, [PackEntry(bytes(32), 0, 1, 10, 9, 8)])
    index = builder.finish()
    assert len(index) == 2
    loc = index.get(bid)
    assert (loc.pack, loc.offset) == ("bb" * 32, 500)
    assert sum(1 for b, _ in index.items() if b == bid) == 1


def test_a_built_index_takes_later_packs_and_grows_as_any_index() -> None:
    rng = random.Random(5)
    packs = make_packs(rng, 40, 400, 0.05)
    index = built(packs[:10])
    bits = index._table[0]
    for pack, entries in packs[10:]:
        index.add_pack(pack, entries)
    assert index._table[0] > bits, "expected the table to grow after the build"
    expected = one_by_one(packs)
    assert len(index) == len(expected)
    assert sorted(index.items()) == sorted(expected.items())


def test_the_builder_is_empty_after_finish() -> None:
    builder = IndexBuilder()
    builder.add_pack("aa" * 32, [PackEntry(bytes(32), 0, 1, 10, 9, 8)])
    first = builder.finish()
    second = builder.finish()
    assert len(first) == 1 and len(second) == 0 and list(second.items()) == []


def test_index_files_added_from_their_bytes_give_the_same_index() -> None:
    rng = random.Random(11)
    packs = make_packs(rng, 12, 300, 0.1)
    files = [encode_index(dict(packs[i:i + 4])) for i in range(0, len(packs), 4)]
    builder = IndexBuilder()
    for name, data in files:
        assert builder.add_file(read_index(name, data)) == {}
    got = builder.finish()
    expected = Index()
    for name, data in files:
        for pack, entries in decode_index(name, data).items():
            expected.add_pack(pack, entries)
    assert len(got) == len(expected) and sorted(got.items()) == sorted(expected.items())


def test_entries_of_deferred_packs_are_returned_not_added() -> None:
    rng = random.Random(12)
    packs = make_packs(rng, 3, 50)
    name, data = encode_index(dict(packs))
    held = packs[1][0]
    deferred = IndexBuilder()
    out = deferred.add_file(read_index(name, data), defer={held})
    assert out == {held: packs[1][1]}
    index = deferred.finish()
    assert len(index) == 100 and held not in index.packs()
    assert not any(e.id in index for e in packs[1][1])


def test_a_file_naming_a_pack_it_does_not_list_adds_nothing() -> None:
    good = IndexBuilder()
    first = encode_index({"aa" * 32: [PackEntry(bytes([i]) * 32, 0, 1, 10, 9, 8 + i) for i in range(20)]})
    good.add_file(read_index(*first))
    entries = [(bytes([200 + i]) * 32, 0, 1, i % 2, 8, 10, 12) for i in range(10)]  # every other names pack 1
    body = MAGIC + struct.pack("<I", 1) + b"\xbb" * 32 + struct.pack("<I", len(entries))
    body += b"".join(IENTRY.pack(*e) for e in entries)
    data = body + blake3.blake3(body).digest()
    name = blake3.blake3(data).hexdigest()
    with pytest.raises(CorruptionError, match=f"unable to read index '{short(name)}': checksum mismatch"):
        good.add_file(read_index(name, data))
    index = good.finish()
    assert len(index) == 20 and index.packs() == {"aa" * 32}
