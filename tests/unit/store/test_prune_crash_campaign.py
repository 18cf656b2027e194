"""A seeded randomized campaign: prune interrupted at every write and delete, over drawn histories.

Each round draws a repository history: random trees of two sources taken by two hosts as full,
incremental and differential sets, one source carrying a database-like attachment whose pages
are rewritten in place (its chunks are deltas of the base's), WAL entries, and backups that die
before they commit (at their index write: packs no index names; at their set write: packs no
set needs). It then draws a retention policy and prunes a copy without interruption: the
reference. For each write and delete that prune made, a copy is pruned by a process that dies
right before that call; in some rounds the rerun dies too, at a drawn call, and runs once more.
After the uninterrupted prune and after every rerun, always:
- check reads every blob and reports neither an error nor a warning;
- the sets kept are the reference's, and each restores as it was captured, files and
  attachment; the WAL entries read back;
- one more prune changes no pack: the run finished the job (a fixed point).

Not required: that a rerun ends with the very packs of the uninterrupted prune. A rerun may put
the same live blobs into other packs (the order a rewrite copies them in follows the order the
index files were read in); tests/unit/store/test_prune_crash.py requires the same packs where
that order is fixed.

Reproduce a failure with CAIRN_FUZZ_SEED=<the printed seed>; CAIRN_FUZZ_ROUNDS runs more
rounds. A developer's run draws a new seed each time; CI (CI set) runs a fixed one.
"""

from __future__ import annotations

import itertools
import os
import random

import pytest
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.errors import CairnError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import differences, fuzz_rounds, fuzz_seed, snapshot, write_random

pytestmark = pytest.mark.campaign

ROUNDS = fuzz_rounds(3)  # 3 fit the suite's time budget (~15 s)
CONFIG = dict(pack_size=96 * 1024, chunker=ChunkerParams(min_size=8 * 1024, avg_size=16 * 1024,
                                                         max_size=64 * 1024))
DATA_KINDS = ("packs", "index", "sets", "wal", "config", "gc")
PAGE = 8192
_places = itertools.count()



class History:
    """Draws and takes the sets of one round; remembers what each set captured."""

    def __init__(self, rng: random.Random, root, inner: MemoryBackend) -> None:
        self.rng, self.root, self.inner = rng, root, inner
        self.repo = Repository.init(inner, RepoConfig.new(**CONFIG))
        self.clock = 1_700_000_000  # file times move forward by whole seconds: changes are seen
        self.captured: dict[str, tuple[object, object | None]] = {}  # set id -> (files, attachment)
        self.wal: dict[str, bytes] = {}
        for src in ("alpha", "beta"):
            (root / src).mkdir()
            for i in range(rng.randrange(6, 14)):
                self._write(root / src / f"f{i:02d}", rng.randrange(0, 40_000))
        (root / "db").mkdir()
        for i in range(2):  # rewritten in place, page by page, as a database does
            self._write(root / "db" / f"rel{i}", PAGE * rng.randrange(64, 200))

    def _write(self, path, size: int) -> None:
        write_random(path, size, self.rng)
        self.clock += 1
        os.utime(path, (self.clock, self.clock))

    def mutate(self, src: str) -> None:
        rng, d = self.rng, self.root / src
        names = sorted(os.listdir(d))
        for _ in range(rng.randrange(1, 5)):
            op = rng.random()
            if op < 0.3 and names:
                (d / names.pop(rng.randrange(len(names)))).unlink()
            elif op < 0.7 and names:
                self._write(d / rng.choice(names), rng.randrange(0, 40_000))
            else:
                name = f"n{rng.randrange(10_000):04d}"
                self._write(d / name, rng.randrange(0, 60_000))
                names.append(name)
        if src == "alpha":
            for rel in sorted(os.listdir(self.root / "db")):
                path = self.root / "db" / rel
                with open(path, "r+b") as f:
                    pages = os.path.getsize(path) // PAGE
                    for p in rng.sample(range(pages), min(pages, rng.randrange(1, 6))):
                        f.seek(p * PAGE + rng.randrange(PAGE - 200))
                        f.write(rng.randbytes(rng.randrange(1, 200)))
                self.clock += 1
                os.utime(path, (self.clock, self.clock))

    def take(self, src: str, level: str, host: str, fail: str | None = None) -> None:
        req = BackupRequest(source=src, paths=(str(self.root / src),), level=level, hostname=host)
        repo, faulty = self.repo, None
        if fail is not None:  # the backup's process dies at its first write of that kind
            faulty = FaultyBackend(self.inner, fail_at=1, mode="stop", kind=fail)
            repo = Repository.open(faulty)
        try:
            with repo.session(req) as sess:
                if src == "alpha":
                    sess.attach("db:main", str(self.root / "db"))
                s = sess.commit()
        except CairnError:
            assert faulty is not None and faulty.fired
            for name in list(self.inner.list("locks")):
                self.inner.delete("locks", name)
            return
        assert faulty is None or not faulty.fired  # a backup with nothing new writes no index file
        self.captured[s.id] = (snapshot(self.root / src), snapshot(self.root / "db") if src == "alpha" else None)

    def draw(self) -> None:
        rng = self.rng
        for src in ("alpha", "beta"):
            self.take(src, "full", rng.choice(("h1", "h2")))
        for _ in range(rng.randrange(4, 9)):
            src = rng.choice(("alpha", "beta"))
            self.mutate(src)
            r = rng.random()
            if r < 0.12:
                self.take(src, rng.choice(("incremental", "full")), "h1", fail=rng.choice(("index", "sets")))
            else:
                level = "full" if r < 0.35 else "differential" if r < 0.55 else "incremental"
                self.take(src, level, rng.choice(("h1", "h2")))
            if rng.random() < 0.3:
                name = f"0000000100000000000000{len(self.wal) + 1:02X}"
                self.wal[name] = rng.randbytes(rng.randrange(20_000, 90_000))
                self.repo.put_wal(name, self.wal[name])

    def policy(self) -> PrunePolicy:
        rng = self.rng
        while True:
            p = PrunePolicy(keep_full=rng.choice((None, 1, 2)), keep_differential=rng.choice((None, 0, 1)),
                            keep_incremental=rng.choice((None, 0, 1, 2)), keep_last=rng.choice((None, None, 1)))
            if p.keep_full or p.keep_differential or p.keep_incremental or p.keep_last:
                return p


def _copy(objects) -> MemoryBackend:
    inner = MemoryBackend()
    inner.objects = dict(objects)
    return inner


def _unlock(inner: MemoryBackend) -> None:
    """The pruning process is gone: its lock is stale (same pid here, so it is removed by hand)."""
    for name in list(inner.list("locks")):
        inner.delete("locks", name)


def _stopped_prune(inner: MemoryBackend, policy: PrunePolicy, at: int) -> bool:
    """Prune with a process that dies right before write or delete number `at`; whether it did."""
    faulty = FaultyBackend(inner, fail_at=at, mode="stop", ops=("put", "delete"), kind=DATA_KINDS)
    try:
        Repository.open(faulty).prune(policy)
    except CairnError:
        assert faulty.fired, "prune failed without a fault"
    _unlock(inner)
    return faulty.fired


def _verify(inner: MemoryBackend, hist: History, kept: set[str], policy: PrunePolicy, tmp, tag: str) -> None:
    """Check, restore, WAL and a fixed point as the module says."""
    repo = Repository.open(inner)
    report = repo.check(read_data=True)
    assert report.ok, f"{tag}: {[p.message for p in report.errors]}"
    assert report.warnings == (), f"{tag}: {[p.message for p in report.warnings]}"
    assert {s.id for s in repo.list_sets()} == kept, tag
    for set_id in sorted(kept):
        files, db = hist.captured[set_id]
        s = repo.get_set(set_id)
        out = tmp / f"restore{next(_places)}"
        assert repo.restore(s, str(out / "files")).errors == (), tag
        assert not differences(files, snapshot(out / "files")), f"{tag}: set {set_id[:8]} restores different"
        if db is not None:
            assert repo.restore(s, str(out / "db"), attachment="db:main").errors == (), tag
            assert not differences(db, snapshot(out / "db")), f"{tag}: {set_id[:8]}'s attachment restores different"
    for name, data in hist.wal.items():
        assert repo.get_wal(name) == data, f"{tag}: WAL {name}"
    packs = set(inner.list("packs"))
    Repository.open(inner).prune(policy)
    assert set(inner.list("packs")) == packs, f"{tag}: one more prune changed packs"


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_prune_interrupted_anywhere_over_drawn_histories(tmp_path, round_):
    seed = fuzz_seed() + round_
    print(f"CAIRN_FUZZ_SEED={seed - round_} (round {round_})")
    rng = random.Random(seed)
    inner = MemoryBackend()
    hist = History(rng, tmp_path, inner)
    hist.draw()
    policy = hist.policy()
    objects = dict(inner.objects)

    reference = _copy(objects)
    recorder = FaultyBackend(reference, ops=("put", "delete"), kind=DATA_KINDS)
    Repository.open(recorder).prune(policy)
    calls = len(recorder.calls)
    kept = {s.id for s in Repository.open(reference).list_sets()}
    _verify(_copy(reference.objects), hist, kept, policy, tmp_path, f"seed {seed} reference")

    for n in range(1, calls + 1):
        tag = f"seed {seed} {policy} stop at {n} of {calls} {recorder.calls[n - 1][:2]}"
        inner = _copy(objects)
        assert _stopped_prune(inner, policy, n), tag
        again = rng.randrange(1, calls + 1) if rng.random() < 0.3 else 0
        twice = again and _stopped_prune(inner, policy, again)
        if twice:
            tag += f", its rerun at {again}"
        Repository.open(inner).prune(policy)
        _verify(inner, hist, kept, policy, tmp_path, tag)
