"""Parts of restore-db --delta (daemon/databases/postgres/deltadb.py) on their own: files that
carry their content become one chunk named by its hash, placed WAL is compared by hash but not
kept in memory, a data directory is recognised before anything changes, and one delta per
directory runs at a time."""

from __future__ import annotations

import os

import blake3
import pytest
from cairn.daemon.databases.postgres import deltadb
from cairn.errors import FailedPreconditionError
from cairn.fsio.datadir import check_data_directory
from cairn.fsio.records import Data, EntryMeta, Failed, Hole


def test_inline_files_become_one_chunk_and_stored_ones_pass_through() -> None:
    stored = EntryMeta(path=b"base/1", kind="file", size=5, chunks=(b"c" * 32,), chunk_sizes=(5,))
    entries, inline, problems = deltadb.manifest_entries([
        EntryMeta(path=b"base", kind="dir"), stored,
        EntryMeta(path=b"postgresql.auto.conf", kind="file", size=7), Data(b"abc"), Hole(2), Data(b"de"),
        EntryMeta(path=b"recovery.signal", kind="file", size=0),
        Failed("unable to restore the contents of 'x/': damaged"),
    ])
    assert [m.path for m in entries] == [b"base", b"base/1", b"postgresql.auto.conf", b"recovery.signal"]
    assert entries[1] is stored
    conf = entries[2]
    assert conf.chunks == (blake3.blake3(b"abc\0\0de").digest(),) and conf.chunk_sizes == (7,)
    assert inline == {conf.chunks[0]: b"abc\0\0de"}
    assert entries[3].chunks == () and entries[3].size == 0
    assert problems == ["unable to restore the contents of 'x/': damaged"]


def test_placed_wal_is_named_by_hash_and_only_small_files_are_kept() -> None:
    segment = os.urandom(deltadb.INLINE_MAX + 1)
    entries, inline, names = deltadb.placed_entries([
        EntryMeta(path=b"pg_wal/000000010000000000000003", kind="file", size=len(segment), mtime_ns=1), Data(segment),
        EntryMeta(path=b"pg_wal/cairn-restore-db.wal", kind="file", size=25, mtime_ns=2),
        Data(b"000000010000000000000003\n"),
        EntryMeta(path=b"pg_wal/cairn-restore-db.own-point", kind="file", size=0, mtime_ns=3),
    ], mtime_ns=42)
    seg_id = blake3.blake3(segment).digest()
    assert names == {seg_id: "000000010000000000000003"} and seg_id not in inline
    assert list(inline.values()) == [b"000000010000000000000003\n"]
    assert [m.mtime_ns for m in entries] == [42, 42, 42]  # the set's: an unchanged file is not touched again
    assert entries[0].chunks == (seg_id,) and entries[2].chunks == ()


def test_a_directory_must_be_a_data_directory_without_a_server_or_a_wal_link(tmp_path) -> None:
    with pytest.raises(FailedPreconditionError, match="holds no PG_VERSION"):
        check_data_directory(str(tmp_path))
    (tmp_path / "PG_VERSION").write_text("15\n")
    check_data_directory(str(tmp_path))
    (tmp_path / "pg_wal").symlink_to(tmp_path.parent)
    with pytest.raises(FailedPreconditionError, match="is a symbolic link"):
        check_data_directory(str(tmp_path))
    (tmp_path / "postmaster.pid").write_text("1\n")
    with pytest.raises(FailedPreconditionError, match="may be running"):
        check_data_directory(str(tmp_path))


def test_one_delta_per_directory_at_a_time(tmp_path) -> None:
    with deltadb._only_one(str(tmp_path)):
        with pytest.raises(FailedPreconditionError, match="is running already"):
            with deltadb._only_one(str(tmp_path) + "/."):
                pass
        with deltadb._only_one(str(tmp_path / "other")):
            pass
    with deltadb._only_one(str(tmp_path)):  # released when the first ended
        pass
