"""Deduplication: content-defined chunks survive an insertion; identical data is stored once."""

from __future__ import annotations

import os

from storekit import backup

MIB = 1024 * 1024


def test_insert_100_bytes_in_middle_of_64mib_adds_at_most_3_chunks(repo, src, rng):
    data = rng.randbytes(64 * MIB)
    (src / "big.bin").write_bytes(data)
    first = backup(repo, src)
    assert first.stats.chunks_added >= 20  # ~1 MiB average chunks, plus the tree
    mid = len(data) // 2
    (src / "big.bin").write_bytes(data[:mid] + rng.randbytes(100) + data[mid:])
    del data
    second = backup(repo, src, "incremental")
    assert second.stats.modified_paths == ("big.bin",)
    assert 1 <= second.stats.chunks_added <= 3, second.stats.chunks_added
    assert second.stats.bytes_added < 10 * MIB


def test_identical_files_and_repeated_backups_store_data_once(repo, src, rng):
    blob = rng.randbytes(3 * MIB)
    for name in ("one", "two", "three"):
        (src / name).write_bytes(blob)
    s = backup(repo, src)
    assert s.stats.bytes_added < 3.5 * MIB
    (src / "four").write_bytes(blob)
    s2 = backup(repo, src, "full")
    assert s2.stats.chunks_added == 1  # only the new root tree
    assert s2.stats.bytes_added < 4096


def test_moved_file_is_not_stored_again(repo, src, rng):
    (src / "a").mkdir()
    (src / "a" / "data").write_bytes(rng.randbytes(2 * MIB))
    backup(repo, src)
    (src / "b").mkdir()
    os.rename(src / "a" / "data", src / "b" / "data")
    s = backup(repo, src, "incremental")
    assert s.stats.bytes_read == 2 * MIB  # a new path is read ...
    assert s.stats.bytes_added < 4096  # ... but only new trees are stored


def test_compressible_data_is_compressed(repo, src):
    (src / "text").write_bytes(b"all work and no play makes jack a dull boy\n" * 100_000)
    s = backup(repo, src)
    assert s.stats.bytes_added < s.stats.bytes_total / 20
