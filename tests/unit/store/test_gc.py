"""Garbage collection in two phases beside running backups (memory backend, deterministic).

Each interleaving below is one that loses data when a piece of the handshake is missing: the
collector pauses (through the fault backend's hook) at the moment it has read everything its
decision uses, a writer commits in that window, then the collector goes on. With the
handshake, every committed set restores identical and check passes.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.errors import CairnError
from cairn.store.maintenance.prune import read_markers
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import differences, make_tree, snapshot

CONFIG = dict(pack_size=128 * 1024, chunker=ChunkerParams(min_size=16 * 1024, avg_size=32 * 1024,
                                                          max_size=128 * 1024))
FORGET_ALL = PrunePolicy(keep_full=0, keep_incremental=0, keep_differential=0)
FREE_ONLY = PrunePolicy()  # forgets nothing: frees only what nothing references
HOUR = 3600.0


def _req(src, level="full"):
    return BackupRequest(source="src", paths=(str(src),), level=level)


def _restores(repo, set_id, src, target) -> None:
    stats = repo.restore(repo.get_set(set_id), str(target))
    assert stats.errors == (), stats.errors
    assert not differences(snapshot(src), snapshot(target)), "restored tree differs"


def _wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _healthy(inner) -> None:
    report = Repository.open(inner).check(read_data=True)
    assert report.ok, [p.message for p in report.errors]


@pytest.fixture
def repo_src(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(str(src), random.Random(11), files=10, max_size=90_000)
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new(**CONFIG))
    return inner, src


class PausedPrune:
    """A prune in a thread that stops before its first call matching `at` (op, kind) until
    released; `paused` is set when it stopped there, `done` when it ended (whichever first)."""

    def __init__(self, inner, policy, at: tuple[str, str], grace: float = 0.0, after: int = 0) -> None:
        self.paused, self.release, self.done = threading.Event(), threading.Event(), threading.Event()
        self.result: dict = {}
        self.at, self.seen, self.after = at, 0, after

        def hook(op: str, kind: str, name: str) -> None:
            if (op, kind) == self.at:
                self.seen += 1
                if self.seen == self.after + 1:
                    self.paused.set()
                    assert self.release.wait(30)

        self.repo = Repository.open(FaultyBackend(inner, ops=(), hook=hook))

        def run() -> None:
            try:
                self.result["report"] = self.repo.prune(policy, grace=grace)
            except CairnError as e:
                self.result["error"] = e
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def wait_paused_or_done(self) -> None:
        for _ in range(3000):
            if self.paused.wait(0.01) or self.done.is_set():
                return
        raise AssertionError("prune neither paused nor ended")

    def finish(self):
        self.release.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.result


def test_a_marked_pack_waits_for_the_grace_period(repo_src):
    inner, src = repo_src
    repo = Repository.open(inner)
    repo.backup(_req(src))
    packs = set(inner.list("packs"))
    report = repo.prune(FORGET_ALL, grace=HOUR)
    assert report.forgotten and report.packs_deleted == 0
    assert set(inner.list("packs")) == packs, "a pack was deleted in the run that marked it"
    (marker,) = read_markers(inner)
    assert marker.packs == packs and marker.blockers == frozenset()
    assert repo.prune(FREE_ONLY, grace=HOUR).packs_deleted == 0  # a later run, grace not over
    assert set(inner.list("packs")) == packs
    report = repo.prune(FREE_ONLY, grace=0)
    assert report.packs_deleted == len(packs) and not set(inner.list("packs"))
    assert not list(inner.list("gc")), "a collected marker stays behind"
    _healthy(inner)


def test_a_backup_started_before_marking_keeps_what_it_deduplicated_against(repo_src, tmp_path):
    """The writer's session dedups against a set that is then forgotten; the collector runs
    right after marking and pauses once it read the sets; the writer commits in that window.
    Only the writer's lock (a blocker of the marker) keeps the pack from being deleted."""
    inner, src = repo_src
    Repository.open(inner).backup(_req(src))
    writer = Repository.open(inner)
    sess = writer.session(_req(src))
    sess.walk_all()
    assert sess.writer.deduped, "the second backup dedups against the first"
    prune = PausedPrune(inner, FORGET_ALL, at=("put", "index"))  # collect's new index: decision made
    prune.wait_paused_or_done()
    s = sess.commit()
    result = prune.finish()
    assert "error" not in result, result
    _restores(Repository.open(inner), s.id, src, tmp_path / "out1")
    Repository.open(inner).prune(FREE_ONLY, grace=0)  # the blockers are gone now: the set keeps its packs
    _restores(Repository.open(inner), s.id, src, tmp_path / "out2")
    _healthy(inner)


@pytest.mark.parametrize("pause", [("put", "index"), ("delete", "packs")], ids=["before-reindex", "before-delete"])
def test_a_backup_started_after_marking_never_relies_on_a_marked_pack(repo_src, tmp_path, pause):
    """The writer starts after the marker is complete (it is no blocker), writes the same data
    again, which packs into a pack of the same name as a marked one; the collector decides,
    pauses, the writer commits, the collector deletes. The writer must neither deduplicate
    against marked packs nor commit relying on a pack of a marked name (it copies the blobs
    into a pack of its own first)."""
    inner, src = repo_src
    repo = Repository.open(inner)
    repo.backup(_req(src))
    repo.prune(FORGET_ALL, grace=HOUR)
    marked = set().union(*(m.packs for m in read_markers(inner)))
    assert marked
    writer = Repository.open(inner)
    sess = writer.session(_req(src))
    sess.walk_all()
    assert not sess.writer.deduped, "a write session deduplicated against a marked pack"
    prune = PausedPrune(inner, FREE_ONLY, at=pause)
    prune.wait_paused_or_done()
    assert prune.paused.is_set(), "the ripe marker was not collected"
    s = sess.commit()
    result = prune.finish()
    assert "error" not in result and result["report"].packs_deleted, result
    assert not marked & set(inner.list("packs"))
    _restores(Repository.open(inner), s.id, src, tmp_path / "out")
    _healthy(inner)


def test_a_pack_of_a_running_backup_that_no_index_names_yet_is_kept(repo_src, tmp_path):
    """Packs a running session uploaded before its index file are unindexed when the collector
    marks them; its lock keeps them until it committed, and then its set does."""
    inner, src = repo_src
    writer = Repository.open(inner)
    sess = writer.session(_req(src))
    sess.walk_all()
    _wait_for(lambda: sess.writer.packs_written >= 1)  # uploaded, not yet in an index file
    in_flight = set(inner.list("packs"))
    assert in_flight and not list(inner.list("index"))
    report = Repository.open(inner).prune(FREE_ONLY, grace=0)
    assert report.packs_deleted == 0 and set(inner.list("packs")) >= in_flight
    s = sess.commit()
    Repository.open(inner).prune(FREE_ONLY, grace=0)
    _restores(Repository.open(inner), s.id, src, tmp_path / "out")
    _healthy(inner)


def test_a_marker_without_blockers_is_dropped_and_its_packs_marked_again(repo_src):
    """A collector that died between the marker's two writes left it without blockers: it
    never becomes ripe; the next run removes it and marks the packs anew."""
    inner, src = repo_src
    repo = Repository.open(inner)
    repo.backup(_req(src))
    faulty = FaultyBackend(inner, fail_at=2, mode="stop", ops=("put",), kind="gc")
    with pytest.raises(CairnError):
        Repository.open(faulty).prune(FORGET_ALL, grace=0)
    for name in list(inner.list("locks")):  # that process is gone
        inner.delete("locks", name)
    (marker,) = read_markers(inner)
    assert marker.blockers is None and marker.packs
    report = Repository.open(inner).prune(FREE_ONLY, grace=0)
    assert report.packs_deleted == len(marker.packs) and not list(inner.list("packs"))
    assert not list(inner.list("gc"))
    _healthy(inner)


def test_a_backup_whose_own_pack_was_collected_meanwhile_refuses_to_commit(repo_src):
    """The writer (started after marking, so no blocker) writes the data of a marked pack again,
    into a pack of the same name; a whole collection runs between its pack upload and its
    index file, deleting that pack and the marker. Only the writer's check that its own packs
    still exist stops it from committing a set whose data is gone."""
    inner, _ = repo_src
    # One small file: one data blob, then the tree, in this order every time, so the writer's
    # pack has the marked pack's name (a tree of many files is read in parallel, in any order).
    src = repo_src[1].parent / "one"
    src.mkdir()
    (src / "only.bin").write_bytes(random.Random(5).randbytes(40_000))
    Repository.open(inner).backup(_req(src))
    Repository.open(inner).prune(FORGET_ALL, grace=HOUR)
    marked = set().union(*(m.packs for m in read_markers(inner)))
    ran = []

    def hook(op: str, kind: str, name: str) -> None:
        if (op, kind) == ("put", "index") and not ran:
            ran.append(Repository.open(inner).prune(FREE_ONLY, grace=0))

    writer = Repository.open(FaultyBackend(inner, ops=(), hook=hook))
    sess = writer.session(_req(src))
    sess.walk_all()
    with pytest.raises(CairnError, match="deleted by garbage collection"):
        sess.commit()
    assert ran and ran[0].packs_deleted
    assert marked & set(sess.writer.own_blobs.values()), "expected the writer to rewrite a marked pack"
    assert not Repository.open(inner).list_sets()


def test_the_commit_checks_its_own_packs_in_parallel_and_finds_any_one_deleted(repo_src):
    """The check that a session's own packs still exist runs at every commit; on an object store
    each pack is a round trip, so they are asked in parallel. A pack deleted among many (as a
    collection that finished between the upload and the commit leaves it) still stops it."""
    inner, src = repo_src
    active, peak, lock = [0], [0], threading.Lock()

    def slow_stat(op: str, kind: str, name: str) -> None:
        if (op, kind) != ("stat", "packs") or not threading.current_thread().name.startswith("commit-stat"):
            return
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1

    sess = Repository.open(FaultyBackend(inner, ops=(), hook=slow_stat)).session(_req(src))
    set_id = sess.commit().id
    own = set(sess.writer.own_blobs.values())
    assert len(own) >= 3, "expected the session to write several packs"
    assert peak[0] >= 2, "the commit asked for its packs one at a time"
    _restores(Repository.open(inner), set_id, src, src.parent / "restored")

    deleted: list[str] = []
    holder: list = []

    def delete_one(op: str, kind: str, name: str) -> None:
        # at the commit's first check (every check passes this hook, under the lock, before it
        # asks), as a collection that finished after the uploads would leave things
        if (op, kind) == ("stat", "packs") and threading.current_thread().name.startswith("commit-stat"):
            with lock:
                if not deleted:
                    victim = sorted(set(holder[0].writer.own_blobs.values()))[-1]
                    inner.delete("packs", victim)
                    deleted.append(victim)

    fresh = src.parent / "fresh"
    fresh.mkdir()
    make_tree(str(fresh), random.Random(8), files=20, max_size=90_000)
    holder.append(Repository.open(FaultyBackend(inner, ops=(), hook=delete_one)).session(_req(fresh)))
    sess = holder[0]
    sess.walk_all()
    with pytest.raises(CairnError, match="deleted by garbage collection"):
        sess.commit()
    assert len(set(sess.writer.own_blobs.values())) >= 4 and deleted


@pytest.mark.parametrize("seed", range(6))  # the order index files load in varies with their names
def test_live_blobs_copied_out_of_a_marked_pack_are_deduplicated_against(tmp_path, seed):
    """A mostly dead pack is rewritten and marked; its live blobs now also lie in the copy, and
    a backup of the same data deduplicates against the copy instead of writing them again."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(seed)
    for i in range(8):  # small files share packs: dropping half leaves packs mostly dead
        (src / f"f{i}a").write_bytes(rng.randbytes(20_000))
        (src / f"f{i}b").write_bytes(rng.randbytes(40_000))
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new(**CONFIG))
    repo = Repository.open(inner)
    repo.backup(_req(src))
    for i in range(8):
        (src / f"f{i}b").unlink()
    repo.backup(_req(src))
    report = repo.prune(PrunePolicy(keep_full=1), grace=HOUR)
    assert report.packs_rewritten and read_markers(inner)
    s = Repository.open(inner).backup(_req(src))
    assert s.stats.bytes_added < 10_000, "live blobs of a rewritten pack were written again"
