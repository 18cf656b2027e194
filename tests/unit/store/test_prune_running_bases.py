"""A set that a running backup builds on is not forgotten by a prune (memory backend).

An incremental or differential carries unchanged subtrees by reference to its base set's trees,
so a prune that forgot the base while the backup ran made that backup fail at its commit ("a
blob this backup relies on was removed"). The backup names its base in its lock; prune keeps
such a set (and says why), and forgets it in a later run once the backup has ended. Both races
are closed: a prune that looked at the locks before the backup named its base puts the set
object back if the backup named it before the set was deleted; a backup whose base was deleted
before it could name it takes another base."""

from __future__ import annotations

import os
import random
import time

import pytest
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.maintenance import prune as prunemod
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from storekit import differences, make_tree, snapshot

FORGET_FULLS = PrunePolicy(keep_full=0)


def _req(src, level):
    return BackupRequest(source="src", paths=(str(src),), level=level, hostname="beta")


@pytest.fixture
def base_and_src(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(str(src), random.Random(5), files=12, max_size=60_000)
    for d, _, files in os.walk(src):  # older than the set: carried over, not re-read
        for name in files:
            os.utime(os.path.join(d, name), (time.time() - 3600,) * 2)
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new())
    full = repo.backup(_req(src, "full"))
    return inner, src, full


def _restores(inner, set_id, src, target) -> None:
    repo = Repository.open(inner)
    assert repo.restore(repo.get_set(set_id), str(target)).errors == ()
    assert not differences(snapshot(str(src)), snapshot(str(target)))


def test_prune_keeps_the_base_of_a_running_differential_and_forgets_it_afterwards(base_and_src, tmp_path):
    inner, src, full = base_and_src
    sess = Repository.open(inner).session(_req(src, "differential"))
    assert sess.base is not None and sess.base.id == full.id
    sess.walk_all()
    report = Repository.open(inner).prune(FORGET_FULLS, grace=0)  # another host's retention, meanwhile
    assert full.id in report.kept and full.id not in report.forgotten
    why = {d.set_id: d for d in report.decisions}[full.id]
    assert why.keep and why.reasons[0].startswith("base of a running backup (backup of source 'src' on host ")
    s = sess.commit()  # without the lock's base, this failed: its base set was gone
    assert s.base == full.id
    _restores(inner, s.id, src, tmp_path / "out")
    later = Repository.open(inner).prune(FORGET_FULLS, grace=0)
    assert later.forgotten == (full.id,)  # nothing builds on it now
    Repository.open(inner).prune(PrunePolicy(), grace=0)
    _restores(inner, s.id, src, tmp_path / "out2")  # the differential holds what it needs
    assert Repository.open(inner).check(read_data=True).ok


def test_a_base_named_after_the_prune_looked_is_put_back(base_and_src, tmp_path, monkeypatch):
    """The prune reads the locks before the backup names its base, and deletes the set after the
    backup checked it was still there: the prune's second look puts the set object back."""
    inner, src, full = base_and_src
    sess = Repository.open(inner).session(_req(src, "incremental"))
    real = prunemod.Pruner.bases_in_use
    calls = []

    def late_sight(self):
        calls.append(1)
        return {} if len(calls) == 1 else real(self)  # the first look missed the backup's lock

    monkeypatch.setattr(prunemod.Pruner, "bases_in_use", late_sight)
    report = Repository.open(inner).prune(FORGET_FULLS, grace=0)
    assert len(calls) == 2 and full.id in report.kept and full.id not in report.forgotten
    assert full.id in {s.id for s in Repository.open(inner).list_sets()}
    sess.walk_all()
    s = sess.commit()
    _restores(inner, s.id, src, tmp_path / "out")


def test_a_commit_between_the_prunes_delete_and_its_put_back_waits_for_the_base(base_and_src, tmp_path,
                                                                                monkeypatch):
    """The prune deleted the base (its first look at the locks missed the backup) and has not
    put it back yet when the backup commits: the commit waits while the collector runs, instead
    of failing for a base that comes back a moment later."""
    import threading

    inner, src, full = base_and_src
    repo = Repository.open(inner)
    sess = repo.session(_req(src, "incremental"))
    sess.walk_all()
    real = prunemod.Pruner.bases_in_use
    deleted, go_on = threading.Event(), threading.Event()
    calls = []

    def late_sight(self):
        calls.append(1)
        if len(calls) == 1:
            return {}  # the first look missed the backup's lock
        deleted.set()  # the base set object is deleted now; the put-back waits
        go_on.wait(30)
        return real(self)

    monkeypatch.setattr(prunemod.Pruner, "bases_in_use", late_sight)
    reports = []
    pruner = threading.Thread(target=lambda: reports.append(Repository.open(inner).prune(FORGET_FULLS, grace=0)))
    pruner.start()
    assert deleted.wait(30)
    assert full.id not in {s.id for s in Repository.open(inner).list_sets()}
    looked = threading.Event()
    others = repo.locks.others

    def counting(mine=""):
        looked.set()  # the commit found its base missing and looks for a collector
        return others(mine)

    repo.locks.others = counting
    committed = []
    committer = threading.Thread(target=lambda: committed.append(sess.commit()))
    committer.start()
    looked.wait(10)  # (a commit that does not wait has failed by now)
    go_on.set()
    pruner.join(30)
    committer.join(30)
    assert committed and committed[0].base == full.id
    assert reports and full.id in reports[0].kept
    _restores(inner, committed[0].id, src, tmp_path / "out")


def test_a_backup_whose_base_was_forgotten_before_it_named_it_takes_another(base_and_src, tmp_path):
    inner, src, full = base_and_src
    repo = Repository.open(inner)
    decided = repo.choose_base("src", "incremental", "beta")
    assert decided[1].id == full.id
    Repository.open(inner).prune(FORGET_FULLS, grace=0)  # forgets it: no backup named it yet
    sess = repo.session(_req(src, "incremental"), decision=decided)  # the daemon decided before
    assert sess.base is None and sess.level == "full"
    sess.walk_all()
    s = sess.commit()
    _restores(inner, s.id, src, tmp_path / "out")


def test_prune_says_what_its_marked_packs_wait_for_and_unlock_lets_them_go(base_and_src):
    """A host that died mid-backup leaves a lock that stands until it is stale (30 min): prune
    marks packs but frees nothing, and says so naming the lock; `unlock --host` removes it and
    the next prune frees them."""
    import json

    inner, src, full = base_and_src
    inner.put("locks", "e" * 32, json.dumps({"host": "beta", "pid": 4242, "pid_space": "elsewhere",
                                             "exclusive": False, "purpose": "backup of source 'app'",
                                             "time": time.time()}).encode())
    repo = Repository.open(inner)
    report = repo.prune(FORGET_FULLS, grace=0)
    assert report.forgotten == (full.id,) and report.packs_deleted == 0
    assert report.waiting_packs > 0 and report.waiting_bytes > 0
    assert len(report.waiting_on) == 1 and "backup of source 'app' on host beta (pid 4242" in report.waiting_on[0]
    removed, kept = repo.unlock(host="beta")
    assert [x["name"] for x in removed] == ["e" * 32] and kept == []
    after = repo.prune(PrunePolicy(), grace=0)
    assert after.packs_deleted == report.waiting_packs and after.waiting_packs == 0 and after.waiting_on == ()
