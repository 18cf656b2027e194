"""Prune: forget sets by retention policy, free what nothing references, keep the rest whole."""

from __future__ import annotations

import pytest
from cairn.store.model import PrunePolicy
from storekit import backup, differences, listing, snapshot, write_random

MIB = 1024 * 1024


def chunks_of(repo, s, name: str) -> list[bytes]:
    return next(e for e in repo.load_tree(bytes.fromhex(s.tree)) if e.name == name.encode()).chunks


@pytest.fixture
def history(repo, src, rng):
    """full1, inc1, inc2, full2, inc3 of source 'src' and one full of 'other', with snapshots."""
    write_random(src / "shared", 500_000, rng)
    write_random(src / "gone-early", 2 * MIB, rng)
    sets, snaps = {}, {}
    sets["full1"] = backup(repo, src, "full")
    snaps["full1"] = snapshot(src)
    (src / "gone-early").unlink()
    write_random(src / "inc1-data", 1 * MIB, rng)
    sets["inc1"] = backup(repo, src, "incremental")
    (src / "inc1-data").unlink()
    write_random(src / "inc2-data", 300_000, rng)
    sets["inc2"] = backup(repo, src, "incremental")
    sets["full2"] = backup(repo, src, "full")
    snaps["full2"] = snapshot(src)
    write_random(src / "inc3-data", 200_000, rng)
    sets["inc3"] = backup(repo, src, "incremental")
    snaps["inc3"] = snapshot(src)
    other = src.parent / "other"
    other.mkdir()
    write_random(other / "o", 100_000, rng)
    sets["other"] = backup(repo, other, "full", source="other")
    return sets, snaps


def test_prune_forgets_by_level_and_frees_chunks(repo, history, tmp_path):
    sets, snaps = history
    gone_chunks = chunks_of(repo, sets["full1"], "gone-early") + chunks_of(repo, sets["inc1"], "inc1-data")
    assert all(c in repo.index for c in gone_chunks)
    report = repo.prune(PrunePolicy(keep_full=1, keep_incremental=1), source="src")
    assert set(report.forgotten) == {sets[k].id for k in ("full1", "inc1", "inc2")}
    assert set(report.kept) == {sets["full2"].id, sets["inc3"].id}
    assert report.bytes_freed >= 3 * MIB and not report.dry_run
    assert [s.id for s in repo.list_sets()] == [sets[k].id for k in ("full2", "inc3", "other")]
    assert not any(c in repo.index for c in gone_chunks)
    check = repo.check(read_data=True)
    assert check.ok and check.warnings == ()
    for k in ("full2", "inc3"):
        stats = repo.restore(sets[k], str(tmp_path / k))
        assert stats.errors == ()
        assert not differences(snaps[k], snapshot(tmp_path / k))
    assert repo.restore(sets["other"], str(tmp_path / "other-out")).errors == ()


def test_prune_dry_run_changes_nothing(repo, history, tmp_path):
    sets, _ = history
    before = listing(str(tmp_path / "repo"))
    report = repo.prune(PrunePolicy(keep_full=1, keep_incremental=0), dry_run=True)
    assert report.dry_run
    assert set(report.forgotten) == {sets[k].id for k in ("full1", "inc1", "inc2", "inc3")}
    assert report.bytes_freed > 0
    assert listing(str(tmp_path / "repo")) == before
    assert len(repo.list_sets()) == 6


def test_prune_with_nothing_to_forget_keeps_all(repo, history):
    sets, _ = history
    index_size = len(repo.index)
    report = repo.prune(PrunePolicy())
    assert report.forgotten == () and report.packs_deleted == 0
    assert len(repo.list_sets()) == 6 and len(repo.index) == index_size
    assert repo.check(read_data=True).ok


def test_prune_is_scoped_to_a_source(repo, history):
    sets, _ = history
    report = repo.prune(PrunePolicy(keep_full=0, keep_incremental=0, keep_differential=0), source="other")
    assert report.forgotten == (sets["other"].id,)
    assert len(repo.list_sets("src")) == 5 and repo.list_sets("other") == []
    assert repo.check(read_data=True).ok


def test_prune_everything_leaves_an_empty_consistent_repository(repo, history, src, tmp_path):
    repo.prune(PrunePolicy(keep_full=0, keep_incremental=0, keep_differential=0))
    assert repo.list_sets() == []
    assert len(repo.index) == 0
    report = repo.check(read_data=True)
    assert report.ok and report.warnings == ()
    s = backup(repo, src, "incremental")
    assert s.level == "full" and "taken as full" in s.note
    assert repo.restore(s, str(tmp_path / "out")).errors == ()
    assert not differences(snapshot(src), snapshot(tmp_path / "out"))


def test_prune_keeps_wal_chunks(repo, history):
    wal = bytes(range(256)) * 4096
    repo.put_wal("000000010000000000000001", wal)
    repo.prune(PrunePolicy(keep_full=0, keep_incremental=0, keep_differential=0))
    assert repo.get_wal("000000010000000000000001") == wal
    assert repo.check(read_data=True).ok


class BackwardClock:
    """time for prune's module whose wall clock steps back 10 s at every reading (a clock set back
    by NTP or a virtual machine's host between marking and collecting)."""

    def __init__(self) -> None:
        import time

        self._time = time
        self.now = time.time()

    def time(self) -> float:
        self.now -= 10
        return self.now

    def __getattr__(self, name: str):
        return getattr(self._time, name)


def test_without_a_grace_period_a_run_collects_what_it_marked_whatever_the_clock_does(repo, history, src, rng,
                                                                                      monkeypatch):
    """With no grace period the run that marks packs deletes them (once nothing blocks them), even
    when the wall clock goes back between the two steps: the marker's time must not make it wait
    for a later run, which left a failed backup's unindexed packs behind and a check warning about
    each."""
    from cairn.store.errors import CairnError
    from cairn.store.maintenance import prune as prunemod
    from cairn.store.model import BackupRequest
    from cairn.store.repository import Repository
    from cairn.store.storage.faults import FaultyBackend

    sets, _ = history
    # a backup that failed at its index write: packs no index names, which prune removes
    write_random(src / "orphan", 400_000, rng)
    with pytest.raises(CairnError):
        Repository.open(FaultyBackend(repo.backend, fail_at=1, kind="index")).backup(
            BackupRequest(source="src", paths=(str(src),), level="incremental"))
    assert set(repo.backend.list("packs")) - repo.index.packs(), "expected unindexed packs"
    monkeypatch.setattr(prunemod, "time", BackwardClock())
    report = repo.prune(PrunePolicy(keep_full=1, keep_incremental=1), source="src", grace=0)
    assert set(report.forgotten) == {sets[k].id for k in ("full1", "inc1", "inc2")}
    assert report.packs_deleted > 0 and report.waiting_packs == 0, report
    assert not list(repo.backend.list("gc")), "a marker was left for a later run"
    check = repo.check(read_data=True)
    assert check.ok and check.warnings == (), [p.message for p in check.warnings]


@pytest.mark.parametrize("harm", ["deleted", "truncated"])
def test_of_two_marked_packs_holding_a_live_blob_the_whole_one_is_kept(repo, src, rng, tmp_path, harm):
    """When only marked packs hold a live blob, collection keeps one of them, and never one that
    an index names but storage lacks (a writer died before its pack landed) or that is shorter
    than its blobs (damaged): keeping that one and deleting the other would lose the blob."""
    import json
    from collections import defaultdict

    from cairn.store.content.packs import TYPE_DATA
    from cairn.store.maintenance.prune import Marker, encode_marker

    (src / "big").write_bytes(rng.randbytes(20 << 20))  # more than a pack: the first holds data only
    s = backup(repo, src, "full")
    by_pack = defaultdict(list)
    for bid, loc in repo.index.items():
        by_pack[loc.pack].append((loc.offset, bid, loc.type))
    originals = {p for p, es in by_pack.items() if all(t == TYPE_DATA for _o, _b, t in es)}
    assert originals
    before = set(repo.backend.list("packs"))
    writer = repo.writer()  # a second copy of their blobs, in packs of their own (other order), indexed
    for p in sorted(originals):
        for _o, bid, btype in sorted(by_pack[p], reverse=True):
            writer.put_forced(bid, btype, repo.reader.read(bid))
    writer.finish()
    copies = set(repo.backend.list("packs")) - before
    assert copies
    for name in copies:  # named by an index, gone from storage or cut short
        if harm == "deleted":
            repo.backend.delete("packs", name)
        else:
            repo.backend.put("packs", name, repo.backend.get("packs", name)[:100])
    name = "ab" * 16  # both copies of each of those blobs are marked, and ripe
    repo.backend.put("gc", name, encode_marker(Marker(name, 0.0, frozenset(originals | copies), frozenset())))
    assert json.loads(repo.backend.get("gc", name))["blockers"] == []
    repo.prune(PrunePolicy(), grace=0)
    assert set(repo.backend.list("packs")) == before
    out = tmp_path / "out"
    assert repo.restore(repo.get_set(s.id), str(out)).errors == ()
    assert not differences(snapshot(src), snapshot(out))
    check = repo.check(read_data=True)
    assert check.ok and check.warnings == (), [p.message for p in check.errors + check.warnings]
