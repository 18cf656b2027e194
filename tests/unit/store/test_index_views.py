"""A handle's view of the index: never stale after a prune (its own, failed, or another
handle's), and never losing what a write session in progress has written when it is reloaded.
"""

from __future__ import annotations

import random
import threading

import pytest
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.errors import BackendError, CairnError, FailedPreconditionError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend, MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import differences, make_tree, snapshot, write_random

CONFIG = dict(pack_size=128 * 1024, chunker=ChunkerParams(min_size=16 * 1024, avg_size=32 * 1024,
                                                          max_size=128 * 1024))
FORGET_ALL = PrunePolicy(keep_full=0, keep_incremental=0, keep_differential=0)


def _req(src, level="full"):
    return BackupRequest(source="src", paths=(str(src),), level=level)


def _restores(repo, s, src, target) -> None:
    stats = repo.restore(repo.get_set(s.id), str(target))
    assert stats.errors == (), stats.errors
    assert not differences(snapshot(src), snapshot(target))


def test_backup_after_another_handle_pruned_writes_the_data_again(tmp_path, src):
    make_tree(str(src), random.Random(5), files=10, max_size=80_000)
    Repository.init(LocalBackend(str(tmp_path / "repo")), RepoConfig.new(**CONFIG))
    a = Repository.open_local(str(tmp_path / "repo"))
    b = Repository.open_local(str(tmp_path / "repo"))
    a.backup(_req(src))
    b.prune(FORGET_ALL)
    assert b.list_sets() == []
    again = a.backup(_req(src))
    assert again.stats.bytes_added > 0, "dedup against blobs another handle's prune deleted"
    _restores(a, again, src, tmp_path / "out")
    report = Repository.open_local(str(tmp_path / "repo")).check(read_data=True)
    assert report.ok, [p.message for p in report.errors]


def test_failed_prune_leaves_no_stale_index(tmp_path, src):
    make_tree(str(src), random.Random(6), files=12, max_size=80_000)
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new(**CONFIG))
    faulty = FaultyBackend(inner)
    repo = Repository.open(faulty)
    repo.backup(_req(src))
    faulty.ops, faulty.kinds, faulty.fail_at, faulty.puts = ("delete",), {"packs"}, 2, 0
    with pytest.raises(CairnError, match="injected"):
        repo.prune(FORGET_ALL)
    assert faulty.fired
    stored = set(inner.list("packs"))
    assert repo.index.packs() <= stored, "the handle still indexes packs the failed prune deleted"
    faulty.fail_at = None
    s = repo.backup(_req(src))
    _restores(repo, s, src, tmp_path / "out")
    assert Repository.open(inner).check(read_data=True).ok


def test_commit_refuses_when_a_deduped_blob_was_removed_meanwhile(tmp_path, src):
    """Another handle pruned (ignoring locks, as a second process might) during the session."""
    make_tree(str(src), random.Random(7), files=6, max_size=60_000)
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new(**CONFIG))
    a, b = Repository.open(inner), Repository.open(inner)
    a.backup(_req(src))
    sess = a.session(_req(src))
    sess.walk_all()
    assert sess.writer.deduped, "the second full backup dedups against the first"
    for name in list(inner.list("locks")):  # b does not see a's lock
        inner.delete("locks", name)
    b.prune(FORGET_ALL)
    with pytest.raises(FailedPreconditionError, match="removed"):
        sess.commit()
    assert a.list_sets() == []


def test_check_during_a_session_loses_nothing_the_session_wrote(repo, src, tmp_path, rng):
    make_tree(str(src), rng, files=8, max_size=60_000)
    first = repo.backup(_req(src))
    write_random(src / "new", 300_000, rng)
    with repo.session(_req(src, "incremental")) as sess:
        sess.walk_all()
        assert sess.base.id == first.id
        assert repo.check().ok  # reloads the index while the session's blobs are not yet published
        s = sess.commit()
    _restores(repo, s, src, tmp_path / "out")
    write_random(src / "newer", 1000, rng)
    nxt = repo.backup(_req(src, "incremental"))
    assert nxt.base == s.id, "the next incremental must base on the newest set"
    assert nxt.stats.bytes_added < 50_000


@pytest.mark.timeout(120)
def test_reload_racing_a_session_publish_keeps_its_blobs(src, tmp_path, rng):
    """The session's index file is written after a reload listed the index files, and published
    before the reload swaps its new index in: the published blobs must survive the swap."""
    make_tree(str(src), rng, files=8, max_size=60_000)
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new(**CONFIG))
    published = threading.Event()
    armed = threading.Event()
    box: dict = {}

    def hook(op, kind, name):
        if armed.is_set() and op == "get" and kind == "index":
            armed.clear()  # the reload has listed the index files: let the session commit now
            box["thread"] = threading.Thread(target=sess.writer.finish)
            box["thread"].start()
            assert published.wait(60), "the session never published its index"

    faulty = FaultyBackend(inner, hook=hook)
    repo = Repository.open(faulty)
    first = repo.backup(_req(src))
    publish = repo._publish

    def spy(name, packs):
        publish(name, packs)
        published.set()

    repo._publish = spy
    write_random(src / "new", 300_000, rng)
    sess = repo.session(_req(src, "incremental"))
    sess.walk_all()
    armed.set()
    repo.load_index()
    box["thread"].join(60)
    written = set(sess.writer._inflight)
    assert written and all(b in repo.index for b in written), "the reload dropped blobs published meanwhile"
    s = sess.commit()
    assert s.base == first.id
    _restores(repo, s, src, tmp_path / "out")
    assert repo.choose_base("src", "incremental")[1].id == s.id


def test_failed_prune_whose_reload_fails_too_reloads_at_the_next_backup(tmp_path, src):
    """The handle keeps an index naming a deleted pack; the next session sees that index files it
    had read are gone (prune removes them before it deletes any pack) and reloads them all."""
    make_tree(str(src), random.Random(8), files=12, max_size=80_000)
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new(**CONFIG))
    state = {"armed": False, "deletes": 0, "fail_list": False}

    def hook(op, kind, name):
        if not state["armed"]:
            return
        if (op, kind) == ("delete", "packs"):
            state["deletes"] += 1
            if state["deletes"] == 2:  # one pack is gone, the next cannot be deleted
                state["fail_list"] = True
                raise BackendError("injected delete fault")
        if state["fail_list"] and (op, kind) == ("list", "index"):  # and the reload after it fails
            state["fail_list"] = False
            raise BackendError("injected list fault")

    repo = Repository.open(FaultyBackend(inner, hook=hook))
    repo.backup(_req(src))
    state["armed"] = True
    with pytest.raises(CairnError, match="injected"):
        repo.prune(FORGET_ALL)
    state["armed"] = False
    assert state["deletes"] == 2 and not state["fail_list"]
    s = repo.backup(_req(src))
    assert s.stats.bytes_added > 0
    _restores(repo, s, src, tmp_path / "out")
    assert Repository.open(inner).check(read_data=True).ok
