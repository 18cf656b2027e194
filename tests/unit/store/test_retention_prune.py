"""Retention through Repository.prune: host groups, reasons, WAL retention that frees chunks."""

from __future__ import annotations

import time

from cairn.daemon.databases.archive import PostgresSegments
from cairn.store.model import PrunePolicy
from storekit import backup, write_random


def test_prune_groups_by_host_and_reports_reasons(repo, src, rng):
    ids = {}
    for host in ("alpha", "beta"):
        for i in range(3):
            write_random(src / f"{host}{i}", 50_000, rng)
            ids[(host, i)] = backup(repo, src, "full", hostname=host).id
    dry = repo.prune(PrunePolicy(keep_last=1), dry_run=True)
    assert set(dry.forgotten) == {ids[(h, i)] for h in ("alpha", "beta") for i in (0, 1)}
    by_id = {d.set_id: d for d in dry.decisions}
    assert by_id[ids[("beta", 2)]].reasons == ("last 1 of 1",) and by_id[ids[("beta", 2)]].host == "beta"
    assert by_id[ids[("alpha", 0)]].keep is False and by_id[ids[("alpha", 0)]].reasons == ()
    assert len(repo.list_sets()) == 6
    # a prune limited to one host leaves the other host's sets alone
    report = repo.prune(PrunePolicy(keep_last=1, host="alpha"))
    assert set(report.forgotten) == {ids[("alpha", 0)], ids[("alpha", 1)]}
    assert {d.host for d in report.decisions} == {"alpha"}
    assert {s.id for s in repo.list_sets()} == {ids[("alpha", 2)]} | {ids[("beta", i)] for i in range(3)}
    assert repo.check(read_data=True).ok


def test_prune_without_policy_frees_only_unreferenced_data(repo, src, rng):
    write_random(src / "f", 300_000, rng)
    s = backup(repo, src, "full")
    # data a failed backup left behind: a pack no set references
    writer = repo.writer()
    writer.put_data(0, rng.randbytes(200_000))
    writer.finish()
    repo.load_index()
    report = repo.prune(PrunePolicy())
    assert report.forgotten == () and report.packs_deleted == 1 and report.bytes_freed > 100_000
    assert [x.id for x in repo.list_sets()] == [s.id] and repo.check(read_data=True).ok


def _db_set(repo, src, first: str, last: str):
    extra = {"database": {"wal": {"first": first, "last": last}, "wal_segment_size": 16 * 1024 * 1024}}
    return backup(repo, src, "full", extra=extra)


def test_wal_retention_forgets_catalog_entries_and_frees_their_chunks(repo, src, rng):
    repo.set_segment_rules(PostgresSegments())  # the daemon gives the store PostgreSQL's archive rules
    wal = {f"0000000100000000000000{n:02X}": rng.randbytes(300_000) for n in range(1, 7)}
    for name, data in wal.items():
        repo.put_wal(name, data)
    write_random(src / "f", 10_000, rng)
    old = _db_set(repo, src, "000000010000000000000001", "000000010000000000000002")
    new = _db_set(repo, src, "000000010000000000000004", "000000010000000000000005")
    # no WAL retention configured: every WAL file stays, whatever the sets
    report = repo.prune(PrunePolicy(keep_last=1))
    assert report.forgotten == (old.id,) and report.wal_forgotten == ()
    assert repo.list_wal() == sorted(wal)
    # a window longer than the age of the WAL keeps it too
    assert repo.prune(PrunePolicy(keep_last=1, wal_keep=3600.0)).wal_forgotten == ()
    time.sleep(0.05)
    dry = repo.prune(PrunePolicy(keep_last=1, wal_keep=0.01), dry_run=True)
    assert dry.wal_forgotten == tuple(sorted(wal)[:3]) and repo.list_wal() == sorted(wal)
    assert dry.bytes_freed > 3 * 250_000  # the dry run counts what the forgotten WAL frees
    index_before = len(repo.index)
    report = repo.prune(PrunePolicy(keep_last=1, wal_keep=0.01))
    assert report.wal_forgotten == tuple(sorted(wal)[:3])
    assert abs(report.bytes_freed - dry.bytes_freed) <= 0.05 * dry.bytes_freed, (report, dry)
    assert (report.packs_deleted, report.packs_rewritten) == (dry.packs_deleted, dry.packs_rewritten)
    assert repo.list_wal() == sorted(wal)[3:]
    assert report.bytes_freed > 3 * 250_000 and len(repo.index) < index_before
    for name in sorted(wal)[3:]:
        assert repo.get_wal(name) == wal[name]
    assert [s.id for s in repo.list_sets()] == [new.id]
    assert repo.check(read_data=True).ok
