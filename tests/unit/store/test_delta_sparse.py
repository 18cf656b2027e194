"""A delta restore keeps the holes of a file the set holds sparse: zeros beyond the target's old
end are not written (a hole once the length is set), and zeros that must replace data inside
it are punched, not written. (An interrupted 512 MiB image once came back fully allocated.)"""

from __future__ import annotations

import os
import random

import blake3
from cairn.fsio.delta import count_sparse_writes, mend, plan
from cairn.fsio.records import EntryMeta

CHUNK = 1 << 20
SIZE = 64 * CHUNK


def _image() -> tuple[EntryMeta, dict[bytes, bytes], bytes]:
    """A 64 MiB file of 1 MiB chunks: data in chunks 0 and 40, zeros everywhere else (the same
    data every run: what a test changes in it is always a change)."""
    rng = random.Random(64)
    content = bytearray(SIZE)
    content[:CHUNK] = rng.randbytes(CHUNK)
    content[40 * CHUNK + 5000:40 * CHUNK + 9000] = rng.randbytes(4000)  # a chunk partly data, mostly zeros
    chunks, ids, store = [], [], {}
    for i in range(0, SIZE, CHUNK):
        piece = bytes(content[i:i + CHUNK])
        cid = blake3.blake3(piece).digest()
        store[cid] = piece
        ids.append(cid)
        chunks.append(len(piece))
    m = EntryMeta(path=b"disk.img", kind="file", mode=0o100600, mtime_ns=10**18, size=SIZE, sparse=True,
                  chunks=tuple(ids), chunk_sizes=tuple(chunks))
    return m, store, bytes(content)


def _allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_a_truncated_sparse_file_is_mended_without_filling_its_holes(tmp_path) -> None:
    m, store, content = _image()
    root = str(tmp_path / "t")
    os.makedirs(root)
    path = os.path.join(root, "disk.img")
    with open(path, "wb") as f:  # an interrupted restore: the first MiB and nothing more
        f.write(content[:CHUNK])
    p, st = mend(root, [m], lambda ids: ((c, store[c]) for c in ids))
    assert not st.errors
    with open(path, "rb") as f:
        assert f.read() == content
    assert _allocated(path) < 4 * CHUNK, _allocated(path)  # the data, not 64 MiB of zeros
    assert st.bytes_written < 2 * CHUNK


def test_zeros_that_replace_damage_inside_a_sparse_file_are_punched(tmp_path) -> None:
    m, store, content = _image()
    root = str(tmp_path / "t")
    os.makedirs(root)
    path = os.path.join(root, "disk.img")
    with open(path, "wb") as f:
        f.write(content[:CHUNK])
        f.truncate(SIZE)
    with open(path, "r+b") as f:  # damage in a hole: 8 MiB of data where the set has zeros
        f.seek(20 * CHUNK)
        f.write(os.urandom(8 * CHUNK))
    assert _allocated(path) >= 8 * CHUNK
    p, st = mend(root, [m], lambda ids: ((c, store[c]) for c in ids))
    assert not st.errors
    with open(path, "rb") as f:
        assert f.read() == content
    assert _allocated(path) < 4 * CHUNK, _allocated(path)


def test_a_sparse_file_made_anew_keeps_the_zero_blocks_of_partly_zero_chunks_as_holes(tmp_path) -> None:
    m, store, content = _image()
    root = str(tmp_path / "t")
    p, st = mend(root, [m], lambda ids: ((c, store[c]) for c in ids))
    path = os.path.join(root, "disk.img")
    with open(path, "rb") as f:
        assert f.read() == content
    assert _allocated(path) < CHUNK + 4 * 64 * 1024 + 65536, _allocated(path)  # chunk 40: one 64 KiB block


def test_the_dry_runs_count_is_what_the_delta_writes(tmp_path) -> None:
    """count_sparse_writes (--delta --dry-run) counts the blocks a delta writes of a sparse file,
    missing, cut short or damaged in a hole: chunks of zeros known by their ids are never
    fetched, and the zero blocks of a chunk partly data are not counted (they stayed the size
    of the chunks: 64 MiB for a missing file)."""
    m, store, content = _image()
    zero_id = blake3.blake3(bytes(CHUNK)).digest()
    root = str(tmp_path / "t")
    os.makedirs(root)
    path = os.path.join(root, "disk.img")

    def damages():
        yield  # missing
        with open(path, "wb") as f:
            f.write(content[:CHUNK // 2])  # cut short in the first chunk
        yield
        with open(path, "r+b") as f:  # data where the set has zeros, and a changed byte of data
            f.seek(20 * CHUNK)
            f.write(os.urandom(3 * CHUNK))
            f.seek(40 * CHUNK + 6000)  # a byte other than the set's (0xff was the set's one run in 256)
            f.write(bytes([content[40 * CHUNK + 6000] ^ 0xFF]))
        yield

    asked: list[bytes] = []

    def fetch(ids: list[bytes]):
        asked.extend(ids)
        return ((c, store[c]) for c in ids)

    for _ in damages():
        p = plan(root, [m])
        asked.clear()
        count_sparse_writes(p, fetch)
        assert asked and zero_id not in asked
        dry = p.write_bytes
        _, st = mend(root, [m], lambda ids: ((c, store[c]) for c in ids))
        assert not st.errors and dry == st.bytes_written, (dry, st.bytes_written)
        with open(path, "rb") as f:
            assert f.read() == content
    assert dry == 64 * 1024  # the last damage: one block of chunk 40 (chunks 20-22 punched)
