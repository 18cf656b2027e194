"""Which WAL a copied set takes along (daemon/operations/copying.py): every segment from each physical
capture's first to its last in its cluster's name space, the history files of its timeline,
nothing for dumps; and which sets a copy chooses."""

from __future__ import annotations

import pytest
from cairn.daemon.operations.copying import choose_sets, wal_needed
from cairn.store.errors import NotFoundError
from cairn.store.model import BackupRequest, BackupSet, SetStats
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend


def _set(extra: dict) -> BackupSet:
    return BackupSet(id="ab" * 32, source="s", level="full", requested_level="full", base=None, time_start=1.0,
                     time_end=2.0, hostname="h", paths=("/x",), tree="00" * 32, stats=SetStats(), tags=(),
                     note="", extra=extra, attachments={})


def test_segments_from_start_to_stop_per_name_space_with_history_files():
    pg = {"name": "app", "system_identifier": "7312", "wal": {"first": "00000003000000000000000E",
                                                              "last": "000000030000000000000010"}}
    other = {"name": "b", "kind": "postgres", "system_identifier": "99",
             "wal": {"first": "000000010000000000000002", "last": "000000010000000000000002"}}
    dump = {"name": "d", "kind": "pg_dump"}
    got = wal_needed(_set({"databases": [pg, other, dump]}))
    assert got == [("7312", "00000002.history"), ("7312", "00000003.history"),
                   ("7312", "00000003000000000000000E"), ("7312", "00000003000000000000000F"),
                   ("7312", "000000030000000000000010"), ("99", "000000010000000000000002")]
    assert wal_needed(_set({"database": {**other, "system_identifier": None}})) == [
        ("", "000000010000000000000002")]  # a record without a cluster id: the flat name space
    assert wal_needed(_set({})) == [] and wal_needed(_set({"databases": [dump]})) == []


def test_choose_sets(tmp_path):
    repo = Repository.init(MemoryBackend())
    (tmp_path / "f").write_text("x")
    a = repo.backup(BackupRequest(source="a", paths=(str(tmp_path),)))
    b = repo.backup(BackupRequest(source="b", paths=(str(tmp_path),)))
    assert [s.id for s in choose_sets(repo, [], "")] == [a.id, b.id]
    assert [s.id for s in choose_sets(repo, [], "b")] == [b.id]
    assert [s.id for s in choose_sets(repo, ["latest"], "a")] == [a.id]
    with pytest.raises(NotFoundError, match="no set of source 'zz'"):
        choose_sets(repo, [], "zz")
    with pytest.raises(NotFoundError, match="unknown set 'ffff'"):
        choose_sets(repo, ["ffff"], "")
