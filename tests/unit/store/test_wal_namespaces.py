"""WAL name spaces: one per cluster in one repository; entries of the flat name space (archives
written before name spaces) are still read, listed, checked, kept alive by prune and retained."""

from __future__ import annotations

import os
import time

import pytest
from cairn.daemon.databases.archive import PostgresSegments
from cairn.store.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from cairn.store.model import PrunePolicy
from cairn.store.repository import Repository
from storekit import backup, write_random

SEG = "000000010000000000000001"
A, B = "7312345678901234567", "7398765432109876543"


def seg(n: int) -> str:
    return f"00000001{0:08X}{n:08X}"


def test_the_same_name_from_two_clusters_stores_both(repo, rng):
    one, two = rng.randbytes(200_000), rng.randbytes(200_000)
    assert repo.put_wal(SEG, one, A) is True
    assert repo.put_wal(SEG, two, B) is True
    assert repo.get_wal(SEG, A) == one and repo.get_wal(SEG, B) == two
    assert repo.wal_entries() == [(A, SEG), (B, SEG)]
    assert repo.list_wal(A) == [SEG] and repo.list_wal() == []
    # the contract per name space: identical again is a no-op, different content is refused
    assert repo.put_wal(SEG, one, A) is False
    with pytest.raises(AlreadyExistsError, match=f"{A}/{SEG}"):
        repo.put_wal(SEG, two, A)
    reopened = Repository.open_local(repo.backend.location())
    assert reopened.get_wal(SEG, B) == two
    assert repo.check(read_data=True).ok


def test_flat_entries_are_read_from_every_name_space_and_the_own_entry_wins(repo, rng):
    flat, own = rng.randbytes(50_000), rng.randbytes(50_000)
    repo.put_wal(SEG, flat)  # an entry from before name spaces
    repo.put_wal("00000002.history", b"1\t0/3000000\tno recovery target specified\n")
    assert repo.get_wal(SEG, A) == flat
    assert repo.get_wal_entry(SEG, A) == ("", flat)
    assert repo.list_wal(A) == [SEG, "00000002.history"] and repo.list_wal(A, flat=False) == []
    repo.put_wal(SEG, own, A)  # not refused: the flat entry may be another cluster's
    assert repo.get_wal_entry(SEG, A) == (A, own)
    assert repo.get_wal(SEG) == flat and repo.get_wal(SEG, B) == flat
    with pytest.raises(NotFoundError, match=f"{B}/{seg(9)}"):
        repo.get_wal(seg(9), B)


@pytest.mark.parametrize("namespace", ["a/b", "a@b", "a.b", "-x", "x" * 65])
def test_bad_name_spaces_are_refused(repo, namespace):
    with pytest.raises(InvalidArgumentError, match="not a WAL name space"):
        repo.put_wal(SEG, b"x", namespace)
    with pytest.raises(InvalidArgumentError, match="not a WAL name space"):
        repo.get_wal(SEG, namespace)
    assert repo.wal_entries() == []


def test_verify_finds_damage_in_a_name_space_and_prune_keeps_its_chunks(repo, src, rng):
    data = rng.randbytes(300_000)
    repo.put_wal(SEG, data, A)
    write_random(src / "f", 10_000, rng)
    backup(repo, src, "full")
    report = repo.prune(PrunePolicy())  # nothing forgotten: the WAL's chunks are live
    assert report.packs_deleted == 0 and repo.get_wal(SEG, A) == data
    path = os.path.join(repo.backend.location(), "wal", f"{A}@{SEG}")
    raw = bytearray(open(path, "rb").read())
    raw[5] ^= 0x01
    open(path, "wb").write(bytes(raw))
    problems = repo.check(read_data=False).errors
    assert any(f"{A}@{SEG}" in p.message for p in problems)


def _db_set(repo, src, recs: list[dict]):
    extra = {"databases": [{"name": f"db{i}", "wal": {"first": r["first"], "last": r["last"]},
                            "system_identifier": r["sysid"], "wal_segment_size": 16 * 1024 * 1024}
                           for i, r in enumerate(recs)]}
    return backup(repo, src, "full", extra=extra)


def test_wal_retention_keeps_what_each_clusters_kept_sets_need(repo, src, rng):
    repo.set_segment_rules(PostgresSegments())  # the daemon gives the store PostgreSQL's archive rules
    for n in range(1, 7):
        repo.put_wal(seg(n), rng.randbytes(20_000), A)
        repo.put_wal(seg(n), rng.randbytes(20_000), B)
        repo.put_wal(seg(n), rng.randbytes(20_000))  # flat: serves every cluster
    write_random(src / "f", 10_000, rng)
    _db_set(repo, src, [{"first": seg(1), "last": seg(1), "sysid": A}, {"first": seg(1), "last": seg(1), "sysid": B}])
    # the kept set needs A from segment 5 on and B from segment 2 on
    kept = _db_set(repo, src, [{"first": seg(5), "last": seg(5), "sysid": A},
                               {"first": seg(2), "last": seg(2), "sysid": B}])
    time.sleep(0.05)
    report = repo.prune(PrunePolicy(keep_last=1, wal_keep=0.01))
    assert sorted(report.wal_forgotten) == sorted([f"{A}/{seg(n)}" for n in range(1, 5)] + [f"{B}/{seg(1)}", seg(1)])
    assert repo.list_wal(A, flat=False) == [seg(n) for n in range(5, 7)]
    assert repo.list_wal(B, flat=False) == [seg(n) for n in range(2, 7)]
    assert repo.list_wal() == [seg(n) for n in range(2, 7)]  # the flat name space: the oldest need of any
    assert [s.id for s in repo.list_sets()] == [kept.id]
    assert repo.check(read_data=True).ok
