"""Prune is safe to interrupt at every write and delete, and to run again.

A repository with forgotten-to-be sets whose packs mix live and dead blobs (so prune
rewrites some), fully dead packs, packs a failed backup left unindexed and a WAL file is
built once. Then, for each write and delete prune makes in turn, a copy of it is pruned by a
process that dies right before that call (nothing more reaches the storage, its lock stays
behind), the same prune runs again to the end, then a different one: every kept set restores
identical, the WAL file reads back, check finds neither errors nor leftovers, and the rerun
leaves the packs a prune that was not interrupted leaves.
"""

from __future__ import annotations

import random

import pytest
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.errors import CairnError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend, MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import differences, snapshot, write_random

CONFIG = dict(pack_size=128 * 1024, chunker=ChunkerParams(min_size=16 * 1024, avg_size=32 * 1024,
                                                          max_size=128 * 1024))
DATA_KINDS = ("packs", "index", "sets", "wal", "config", "gc")
FIRST = PrunePolicy(keep_full=1, keep_incremental=1)
SECOND = PrunePolicy(keep_full=1, keep_incremental=0)
WAL_NAME = "000000010000000000000007"


def _backup(repo, src, level):
    return repo.backup(BackupRequest(source="src", paths=(str(src),), level=level))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(objects of the repository, {set name: set}, {set name: snapshot of its source}, wal bytes)."""
    rng = random.Random(4242)
    src = tmp_path_factory.mktemp("prune-crash") / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    write_random(src / "a" / "keep", 150_000, rng)
    write_random(src / "a" / "drop1", 300_000, rng)
    write_random(src / "b" / "other", 60_000, rng)
    for i in range(12):  # small files: packs mix what stays with what goes, so prune rewrites them
        write_random(src / "b" / f"k{i:02d}", 12_000, rng)
        write_random(src / "b" / f"d{i:02d}", 12_000, rng)
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new(**CONFIG))
    sets, snaps = {}, {}
    sets["full1"] = _backup(repo, src, "full")
    snaps["full1"] = snapshot(src)
    (src / "a" / "drop1").unlink()
    for i in range(12):
        (src / "b" / f"d{i:02d}").unlink()
    write_random(src / "inc1data", 200_000, rng)
    sets["inc1"] = _backup(repo, src, "incremental")
    sets["full2"] = _backup(repo, src, "full")
    snaps["full2"] = snapshot(src)
    write_random(src / "inc2data", 100_000, rng)
    sets["inc2"] = _backup(repo, src, "incremental")
    snaps["inc2"] = snapshot(src)
    wal = rng.randbytes(200_000)
    repo.put_wal(WAL_NAME, wal)
    # a backup that fails at its index write leaves packs no index names
    write_random(src / "orphan", 250_000, rng)
    with pytest.raises(CairnError):
        Repository.open(FaultyBackend(inner, fail_at=1, kind="index")).backup(
            BackupRequest(source="src", paths=(str(src),), level="incremental"))
    (src / "orphan").unlink()
    assert set(inner.list("packs")) - repo.index.packs(), "expected unindexed packs"
    return dict(inner.objects), sets, snaps, wal


def _copy(objects, where=None) -> MemoryBackend | LocalBackend:
    """The repository's objects in a fresh memory backend, or in a local directory `where`."""
    if where is None:
        inner = MemoryBackend()
        inner.objects = dict(objects)
        return inner
    local = LocalBackend(str(where))
    for (kind, name), data in objects.items():
        local.put(kind, name, data)
    return local


def _verify(inner, sets, snaps, wal, keep: tuple[str, ...], tmp, tag: str) -> None:
    repo = Repository.open(inner)
    report = repo.check(read_data=True)
    assert report.ok, f"{tag}: {[p.message for p in report.errors]}"
    assert report.warnings == (), f"{tag}: {[p.message for p in report.warnings]}"
    assert sorted(s.id for s in repo.list_sets()) == sorted(sets[k].id for k in keep), tag
    for k in keep:
        target = tmp / f"{tag}-{k}"
        stats = repo.restore(repo.get_set(sets[k].id), str(target))
        assert stats.errors == (), f"{tag} {k}: {stats.errors}"
        assert not differences(snaps[k], snapshot(target)), f"{tag}: {k} restores different"
    assert repo.get_wal(WAL_NAME) == wal, tag


def _prune_calls(objects) -> list[tuple[str, str, str]]:
    faulty = FaultyBackend(_copy(objects), ops=("put", "delete"), kind=DATA_KINDS)
    Repository.open(faulty).prune(FIRST)
    return faulty.calls


def test_prune_makes_every_kind_of_step(built):
    calls = _prune_calls(built[0])
    kinds = {(op, kind) for op, kind, _ in calls}
    assert {("delete", "sets"), ("put", "packs"), ("put", "index"), ("delete", "index"),
            ("delete", "packs"), ("put", "gc"), ("delete", "gc")} <= kinds, calls


@pytest.mark.parametrize("kind", ["memory", pytest.param("local", marks=pytest.mark.slow)])
def test_prune_interrupted_before_each_write_and_delete_then_rerun(built, tmp_path, kind):
    objects, sets, snaps, wal = built
    total = len(_prune_calls(objects))
    assert total >= 10, total
    whole = _copy(objects)
    Repository.open(whole).prune(FIRST)
    packs_after = set(whole.list("packs"))
    for n in range(1, total + 1):
        inner = _copy(objects, tmp_path / f"repo{n}" if kind == "local" else None)
        faulty = FaultyBackend(inner, fail_at=n, mode="stop", ops=("put", "delete"), kind=DATA_KINDS)
        with pytest.raises(CairnError):
            Repository.open(faulty).prune(FIRST)
        assert faulty.fired
        # the pruning process is gone: its lock is stale (same pid here, so it is removed by hand)
        for name in list(inner.list("locks")):
            inner.delete("locks", name)
        Repository.open(inner).prune(FIRST)
        # the same packs as a prune that was not interrupted: nothing it frees stays behind
        assert set(inner.list("packs")) == packs_after, f"stop{n}"
        _verify(inner, sets, snaps, wal, ("full2", "inc2"), tmp_path, f"stop{n}-same")
        Repository.open(inner).prune(SECOND)
        _verify(inner, sets, snaps, wal, ("full2",), tmp_path, f"stop{n}-other")


def test_collection_interrupted_before_each_write_and_delete_then_rerun(built, tmp_path):
    """The two phases in separate runs: the first marks (grace not over), then the collecting
    run is stopped before each of its writes and deletes in turn and run again."""
    objects, sets, snaps, wal = built
    marked = _copy(objects)
    Repository.open(marked).prune(FIRST, grace=3600)
    assert list(marked.list("gc")) and {k for k in objects if k[0] == "packs"} <= set(marked.objects), \
        "the marking run deleted a pack"
    faulty = FaultyBackend(_copy(marked.objects), ops=("put", "delete"), kind=DATA_KINDS)
    Repository.open(faulty).prune(FIRST, grace=0)
    total = len(faulty.calls)
    assert {("delete", "packs"), ("delete", "gc"), ("put", "index")} <= {(o, k) for o, k, _ in faulty.calls}
    for n in range(1, total + 1):
        inner = _copy(marked.objects)
        faulty = FaultyBackend(inner, fail_at=n, mode="stop", ops=("put", "delete"), kind=DATA_KINDS)
        with pytest.raises(CairnError):
            Repository.open(faulty).prune(FIRST, grace=0)
        for name in list(inner.list("locks")):
            inner.delete("locks", name)
        Repository.open(inner).prune(FIRST, grace=0)
        _verify(inner, sets, snaps, wal, ("full2", "inc2"), tmp_path, f"collect-stop{n}")
        assert not list(inner.list("gc")), f"collect-stop{n}: a marker stayed"


def test_a_rerun_after_prune_died_before_its_marker_copies_nothing_again(tmp_path):
    """A prune that copied a mostly dead pack's live blobs and indexed the copy, then died before
    its marker, leaves the copy and the old pack both indexed; the index a rerun loads may name
    the old pack for those blobs (whichever index file it reads last). The rerun must find the
    copies by every index file, not copy the blobs a second time: that would leave two copies,
    one of them never indexed again once the old pack goes."""
    from cairn.store.content.packs import parse_pack

    for attempt in range(40):  # until the loaded index names the old pack (index file names decide)
        rng = random.Random(attempt)
        src = tmp_path / f"src{attempt}"
        src.mkdir()
        for i in range(12):  # one pack mixes what stays with what goes: prune rewrites it
            write_random(src / f"f{i:02d}keep", 12_000, rng)
            write_random(src / f"f{i:02d}drop", 12_000, rng)
        inner = MemoryBackend()
        repo = Repository.init(inner, RepoConfig.new(**CONFIG))
        _backup(repo, src, "full")
        for i in range(12):
            (src / f"f{i:02d}drop").unlink()
        kept = _backup(repo, src, "full")
        policy = PrunePolicy(keep_full=1)
        before = set(inner.list("packs"))
        faulty = FaultyBackend(inner, fail_at=1, mode="stop", ops=("put",), kind=("gc",))
        with pytest.raises(CairnError):
            Repository.open(faulty).prune(policy)
        for name in list(inner.list("locks")):
            inner.delete("locks", name)
        copies = set(inner.list("packs")) - before
        assert copies, "prune rewrote nothing"
        copied = {e.id for p in copies for e in parse_pack(p, inner.get("packs", p))}
        loaded = Repository.open(inner).index
        if all(loaded.get(b).pack in copies for b in copied):
            continue
        recorder = FaultyBackend(inner, ops=("put",), kind=("packs",))
        Repository.open(recorder).prune(policy)
        assert recorder.calls == [], "the rerun copied the blobs again"
        report = Repository.open(inner).check(read_data=True)
        assert report.ok and report.warnings == (), [p.message for p in report.errors + report.warnings]
        out = tmp_path / f"out{attempt}"
        assert Repository.open(inner).restore(kept, str(out)).errors == ()
        assert not differences(snapshot(src), snapshot(out))
        return
    pytest.fail("the loaded index never named the old pack")
