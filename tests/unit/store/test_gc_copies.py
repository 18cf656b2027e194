"""Copies stored by concurrent sessions are freed: two hosts that back up the same new content
at the same time each store it (a blob becomes visible to other sessions only once its index
file is durable), in packs that also hold content of their own. The index names one copy;
garbage collection finds the packs carrying the others by their size, copies their live blobs
out and frees them, so afterwards every blob lies in exactly one pack. A pack holding nothing
but live, attributed blobs is never rewritten, so repeated runs settle. The hosts' handles,
whose indexes still name the freed packs, restore through a refreshed index."""

from __future__ import annotations

import random

from cairn.store.content.packs import parse_pack
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import differences, snapshot, write_random

CONFIG = dict(pack_size=4 * 1024 * 1024, chunker=ChunkerParams(min_size=16 * 1024, avg_size=32 * 1024,
                                                                max_size=128 * 1024))


def _copies(backend) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for pack in backend.list("packs"):
        for e in parse_pack(pack, backend.get("packs", pack)):
            out[e.id] = out.get(e.id, 0) + 1
    return out


def test_copies_written_by_concurrent_hosts_are_freed(tmp_path):
    rng = random.Random(7)
    shared = rng.randbytes(600_000)
    trees = {}
    for host in ("alpha", "beta"):
        root = tmp_path / host
        (root / "shared").mkdir(parents=True)
        (root / "shared" / "lib.bin").write_bytes(shared)
        write_random(str(root / "own.bin"), 200_000, rng)
        trees[host] = str(root)
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new(**CONFIG))
    handles = {h: Repository.open(inner) for h in trees}
    # Both sessions start before either has published an index file: neither sees the other's blobs.
    sessions = {h: handles[h].session(BackupRequest(source="data", paths=(trees[h],), level="full", hostname=h))
                for h in trees}
    sets = {h: sessions[h].commit().id for h in trees}
    before = _copies(inner)
    assert max(before.values()) == 2  # the shared content is stored twice

    asked: list[str] = []  # pack sizes the collector asks the store for

    def ask(op: str, kind: str, name: str) -> None:
        if (op, kind) == ("stat", "packs"):
            asked.append(name)

    counted = FaultyBackend(inner, ops=("stat",), hook=ask)
    collector = Repository.open(counted)
    report = collector.prune(PrunePolicy(), grace=0)
    assert report.packs_rewritten >= 1 and report.packs_deleted >= 1
    after = _copies(inner)
    assert set(after) == set(before)  # every blob is live: none was lost
    assert max(after.values()) == 1, "a blob is still stored twice"
    assert sum(len(inner.get("packs", p)) for p in inner.list("packs")) < 600_000 + 2 * 200_000 + 100_000

    for h, set_id in sets.items():
        target = tmp_path / f"restored-{h}"
        stats = handles[h].restore(handles[h].get_set(set_id), str(target))
        assert stats.errors == ()
        assert not differences(snapshot(trees[h]), snapshot(str(target)))
    assert collector.check(read_data=True).ok
    again = collector.prune(PrunePolicy(), grace=0)
    assert again.packs_rewritten == 0 and again.packs_deleted == 0  # nothing left to rewrite: no churn
    asked.clear()
    collector.prune(PrunePolicy(), grace=0)
    assert asked == []  # a pack's size is asked once per handle: its name fixes its content
