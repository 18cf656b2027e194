"""Repository locks: conflicts, staleness, waiting with backoff, and losing a lock."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import types

import pytest
from cairn.store.content.locks import Locks
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.errors import CairnError, LockedError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import make_tree


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def backend():
    return MemoryBackend()


def test_two_exclusive_locks_conflict(backend):
    with Locks(backend).hold("prune", exclusive=True):
        with pytest.raises(LockedError, match="exclusive, prune"):
            with Locks(backend).hold("prune", exclusive=True):
                pass
    with Locks(backend).hold("prune", exclusive=True):
        pass


def test_exclusive_and_shared_conflict_both_ways(backend):
    with Locks(backend).hold("backup"):
        with pytest.raises(LockedError, match="shared, backup"):
            with Locks(backend).hold("prune", exclusive=True):
                pass
    with Locks(backend).hold("prune", exclusive=True):
        with pytest.raises(LockedError, match="exclusive, prune"):
            with Locks(backend).hold("backup"):
                pass
    assert list(backend.list("locks")) == []


def test_shared_locks_do_not_conflict(backend):
    with Locks(backend).hold("backup a"), Locks(backend).hold("wal-push"):
        assert len(list(backend.list("locks"))) == 2


def _plant(backend, name: str, **doc) -> None:
    """A lock object; one whose time is in the past was also last written then (by the storage)."""
    backend.put("locks", name, json.dumps({"host": "elsewhere", "pid": 1, "exclusive": True,
                                           "purpose": "prune", "time": time.time(), **doc}).encode())
    if "time" in doc:
        backend.times[("locks", name)] = doc["time"]


def test_a_lock_not_refreshed_is_stale_and_broken(backend):
    _plant(backend, "old", time=time.time() - 31 * 60)
    locks = Locks(backend)
    assert locks.stale(json.loads(backend.get("locks", "old")))
    with locks.hold("prune", exclusive=True):
        assert "old" not in list(backend.list("locks"))


def test_a_lock_of_a_dead_process_on_this_host_is_stale(backend):
    proc = subprocess.Popen(["true"])
    proc.wait()
    locks = Locks(backend)
    _plant(backend, "dead", host=locks.host, pid=proc.pid)
    assert locks.stale(json.loads(backend.get("locks", "dead")))
    with locks.hold("prune", exclusive=True):
        assert "dead" not in list(backend.list("locks"))


def test_a_live_lock_is_not_stale_and_not_broken(backend):
    import os
    locks = Locks(backend)
    _plant(backend, "live-here", host=locks.host, pid=os.getpid())
    _plant(backend, "live-elsewhere", exclusive=False, purpose="backup")
    for name in ("live-here", "live-elsewhere"):
        assert not locks.stale(json.loads(backend.get("locks", name)))
    with pytest.raises(LockedError):
        with locks.hold("prune", exclusive=True):
            pass
    assert sorted(backend.list("locks")) == ["live-elsewhere", "live-here"]


def test_waiting_for_a_lock_retries_until_it_is_released(backend):
    attempts = []
    faulty = FaultyBackend(backend, hook=lambda op, kind, name: attempts.append(1)
                           if op in ("list", "list_info") and kind == "locks" else None)
    holder = Locks(backend).hold("backup")
    holder.__enter__()
    done = {}

    def prune_lock():
        with Locks(faulty).hold("prune", exclusive=True, wait=60):
            done["at"] = time.monotonic()

    t = threading.Thread(target=prune_lock)
    t.start()
    wait_for(lambda: len(attempts) >= 3)  # it retried (with backoff) instead of failing at once
    assert "at" not in done
    holder.__exit__(None, None, None)
    t.join(30)
    assert "at" in done


def test_waiting_for_a_lock_is_bounded(backend):
    with Locks(backend).hold("backup"):
        start = time.monotonic()
        with pytest.raises(LockedError):
            with Locks(backend).hold("prune", exclusive=True, wait=0.5):
                pass
        assert 0.5 <= time.monotonic() - start < 15


def test_prune_runs_beside_a_running_backup(tmp_path, src, rng):
    make_tree(str(src), rng, files=3)
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new())
    repo.backup(BackupRequest(source="src", paths=(str(src),)))
    sess = repo.session(BackupRequest(source="src", paths=(str(src),), level="incremental"))
    report = Repository.open(inner).prune(PrunePolicy(keep_full=1), lock_wait=0)  # no wait for the backup
    assert report.kept
    s = sess.commit()
    assert s.id in {x.id for x in repo.list_sets()}


def test_prune_waits_for_another_prune(backend):
    Repository.init(backend, RepoConfig.new())
    with Locks(backend).hold("prune", gc=True):
        with pytest.raises(LockedError, match="gc, prune"):
            Repository.open(backend).prune(PrunePolicy(keep_full=1), lock_wait=0)
        with Locks(backend).hold("backup"):  # a gc lock does not exclude backups
            pass
    result, attempts = {}, []
    held = threading.Event()
    release = threading.Event()

    def other_prune():
        with Locks(backend).hold("prune", gc=True):
            held.set()
            release.wait(30)

    other = threading.Thread(target=other_prune)
    other.start()
    held.wait(10)
    pruner = Repository.open(FaultyBackend(backend, hook=lambda op, kind, name: attempts.append(1)
                                           if op in ("list", "list_info") and kind == "locks" else None))
    t = threading.Thread(target=lambda: result.setdefault("r", pruner.prune(PrunePolicy(keep_full=1))))
    t.start()
    wait_for(lambda: len(attempts) >= 3)
    assert "r" not in result and t.is_alive()
    release.set()
    t.join(60)
    other.join(10)
    assert result["r"].dry_run is False


def test_a_lock_whose_refresh_fails_is_lost(backend):
    faulty = FaultyBackend(backend, fail_at=2, mode="fail-from", kind="locks")
    lost = []
    with Locks(faulty, refresh_every=0.02).hold("backup", on_lost=lost.append) as lock:
        wait_for(lock.lost.is_set)
        assert lost and "refresh" in lost[0]
        with pytest.raises(LockedError, match="refresh"):
            lock.check()


def test_a_lock_removed_by_someone_else_is_lost(backend):
    with Locks(backend, refresh_every=0.02).hold("backup") as lock:
        backend.delete("locks", lock.name)
        wait_for(lock.lost.is_set)
        assert "removed" in lock.reason


def test_a_backup_whose_lock_refresh_fails_commits_nothing(src, rng):
    make_tree(str(src), rng, files=5)
    inner = MemoryBackend()
    Repository.init(inner, RepoConfig.new())
    faulty = FaultyBackend(inner, kind="locks")
    repo = Repository.open(faulty)
    repo.locks.refresh_every = 0.02
    with repo.session(BackupRequest(source="src", paths=(str(src),))) as sess:
        faulty.fail_at, faulty.mode, faulty.puts = 1, "fail-from", 0
        wait_for(sess._lock_lost.is_set)
        with pytest.raises(CairnError, match="refresh"):
            sess.walk_all()
            sess.commit()
    assert list(inner.list("sets")) == []


def test_prune_whose_lock_is_lost_stops_before_its_next_write(src, rng):
    make_tree(str(src), rng, files=5)
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new())
    for level in ("full", "full", "full"):
        make_tree(str(src), rng, files=2, dirs=(level,))
        repo.backup(BackupRequest(source="src", paths=(str(src),), level=level))

    def hook(op, kind, name):
        if (op, kind) == ("delete", "sets"):  # prune is under way: now its lock goes
            faulty.fail_at, faulty.mode, faulty.puts = 1, "fail-from", 0
            wait_for(lambda: any(h.lost.is_set() for h in pruner.locks.held))

    faulty = FaultyBackend(inner, kind="locks", hook=hook)
    pruner = Repository.open(faulty)
    pruner.locks.refresh_every = 0.02
    index_before = sorted(inner.list("index"))
    packs_before = sorted(inner.list("packs"))
    with pytest.raises(LockedError, match="refresh"):
        pruner.prune(PrunePolicy(keep_full=0))
    assert len(list(inner.list("sets"))) == 2  # the one delete under way finished, nothing after it
    assert sorted(inner.list("index")) == index_before and sorted(inner.list("packs")) == packs_before


def test_retries_of_a_conflicting_lock_are_jittered(backend, monkeypatch):
    """Two takers that collide withdraw and retry; with equal delays they would retry in step
    and could collide again and again, so each wait is drawn from half to one and a half of
    the doubling backoff."""
    import cairn.store.content.locks as locks

    slept: list[float] = []
    monkeypatch.setattr(locks.Locks, "_pause", lambda self, s: slept.append(s) is not None)
    clock = [1000.0]

    def monotonic() -> float:  # time moves only by what was slept
        return clock[0] + sum(slept)

    monkeypatch.setattr(locks.time, "monotonic", monotonic)
    with Locks(backend).hold("prune", exclusive=True):
        with pytest.raises(LockedError):
            with Locks(backend).hold("prune", exclusive=True, wait=30.0):
                pass
    full = [s for s in slept if s < 30.0][:6]
    assert len(full) >= 5
    nominal = [locks.BACKOFF_FIRST * 2 ** i for i in range(len(full))]
    assert all(0.5 * n <= s <= 1.5 * n for s, n in zip(full, nominal, strict=True)), full
    assert len({round(s / n, 6) for s, n in zip(full, nominal, strict=True)}) > 1, "every retry waited the same share"


@pytest.mark.parametrize("content", [b"", b"\x00garbage that does not open"])
def test_a_damaged_lock_of_an_encrypted_repository_is_stale_and_broken(tmp_path, content):
    """A sealed lock object that fails to open (damaged, emptied) is unreadable, hence stale,
    as a garbage lock of a plaintext repository is: it cannot block backups and prune for ever."""
    from cairn.store.content import crypto
    from cairn.store.storage.backend import LocalBackend

    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), secret=crypto.Secret("passphrase", b"pw"),
                           argon2={"memory_kib": 1024, "iterations": 1, "lanes": 1})
    try:
        assert repo.encrypted
        repo.backend.inner.put("locks", "c" * 64, content)  # below the sealing: as damage on disk
        with repo.locks.hold("prune", exclusive=True):  # would raise LockedError or CorruptionError
            pass
        assert list(repo.backend.list("locks")) == []
    finally:
        repo.close()


def test_a_wait_for_a_conflicting_lock_ends_when_the_owner_stops(backend):
    """A prune waiting (up to minutes) for another host's gc lock stops waiting at once when the
    daemon shuts down (`stopping`), instead of holding the shutdown for the whole wait."""
    from cairn.store.errors import AbortedError

    _plant(backend, "theirs", gc=True, exclusive=False)
    locks = Locks(backend)
    outcome: list[BaseException] = []

    def take() -> None:
        try:
            with locks.hold("prune", gc=True, wait=120):
                pass
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            outcome.append(e)

    t = threading.Thread(target=take)
    t.start()  # waiting or about to: a stop before the wait ends it the same way
    started = time.monotonic()
    locks.stopping.set()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - started < 5
    assert len(outcome) == 1 and isinstance(outcome[0], AbortedError) and "shutting down" in str(outcome[0])


def test_an_annotation_is_written_at_once_and_kept_by_every_refresh(backend):
    """A backup's base set in its lock object: visible to others at once, and still there after
    refreshes (a refresh that wrote the lock's first document would drop it)."""
    locks = Locks(backend, refresh_every=0.02)
    with locks.hold("backup") as lock:
        locks.annotate(lock, base="ab" * 32)

        def seen() -> dict:
            return json.loads(backend.get("locks", lock.name))

        assert seen()["base"] == "ab" * 32
        first = seen()["time"]
        wait_for(lambda: seen()["time"] > first)  # refreshed since
        assert seen()["base"] == "ab" * 32 and seen()["purpose"] == "backup"
        assert Locks(backend).others()[0]["base"] == "ab" * 32


def _foreign(backend, name: str, host: str, age: float = 0.0, purpose: str = "backup of source 'app'") -> None:
    """A lock another machine wrote (its pid cannot be checked from here): fresh unless `age`."""
    backend.put("locks", name, json.dumps({"host": host, "pid": 4242, "pid_space": "elsewhere", "exclusive": False,
                                           "purpose": purpose, "time": time.time() - age}).encode())
    backend.times[("locks", name)] = time.time() - age  # last written then, by the storage's clock


def test_break_locks_removes_the_stale_and_what_it_is_told_and_never_its_own(backend):
    locks = Locks(backend)
    with locks.hold("prune", gc=True) as mine:  # (taking a lock also breaks stale ones: written after)
        _foreign(backend, "a" * 32, "beta")
        _foreign(backend, "b" * 32, "gamma")
        _foreign(backend, "c" * 32, "delta", age=2 * 3600)  # not refreshed for two hours: stale
        backend.put("locks", "d" * 32, b"{ not a lock")  # unreadable: stale
        removed, kept = locks.break_locks()
        assert sorted(x["name"] for x in removed) == ["c" * 32, "d" * 32]
        assert sorted(x["name"] for x in kept) == ["a" * 32, "b" * 32]
        assert "on host beta (pid 4242, refreshed" in locks.describe(kept[0])
        removed, kept = locks.break_locks(host="beta")
        assert [x["name"] for x in removed] == ["a" * 32] and [x["name"] for x in kept] == ["b" * 32]
        removed, kept = locks.break_locks(everything=True)
        assert [x["name"] for x in removed] == ["b" * 32] and kept == []
        assert sorted(backend.list("locks")) == [mine.name]  # its own lock stays


class SlowRefresh:
    """Passes everything to `inner`; a `put` of a lock (a refresh: locks are created with
    put_if_absent) waits for `go` once `hold` is set, and says when it has started."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.hold = threading.Event()
        self.started = threading.Event()
        self.go = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, kind: str, name: str, data: bytes) -> None:
        if kind == "locks" and self.hold.is_set():
            self.started.set()
            assert self.go.wait(30)
        self.inner.put(kind, name, data)


def test_a_refresh_still_on_its_way_when_the_lock_is_released_does_not_bring_it_back(backend, monkeypatch):
    """A refresh write slower than the release waits for (a store answering slowly) lands after
    the release deleted the object: the refresher deletes what it wrote, so no lock of a finished
    holder is left looking alive (it would hold up garbage collection while the process lives)."""
    from cairn.store.content import locks as locks_mod

    monkeypatch.setattr(locks_mod, "RELEASE_WAIT", 0.1)
    slow = SlowRefresh(backend)
    before = set(threading.enumerate())
    with Locks(slow, refresh_every=0.02).hold("backup") as lock:
        name = lock.name
        slow.hold.set()
        assert slow.started.wait(20), "no refresh started"
    assert name not in backend.list("locks")  # the release deleted it, the refresh still waiting
    slow.go.set()  # the refresh's write lands now
    refreshers = [t for t in set(threading.enumerate()) - before if t.name == "lock-refresh"]
    for t in refreshers:
        t.join(20)
    assert refreshers and not any(t.is_alive() for t in refreshers)
    assert name not in backend.list("locks"), "a released lock came back"


def test_a_backup_whose_lock_was_removed_says_so_when_its_writes_fail(tmp_path, src, rng):
    """`cairn unlock` removed a running backup's lock and a prune freed its packs: the failure
    that follows is told as the lock's removal, not as a pack 'not found'."""
    from cairn.store.errors import BackendError

    make_tree(str(src), rng, files=3)
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new())
    sess = repo.session(BackupRequest(source="src", paths=(str(src),)))
    sess.walk_all()
    for name in list(inner.list("locks")):
        inner.delete("locks", name)  # as `cairn unlock --host` does

    def lost_pack() -> None:
        raise BackendError("unable to write pack: packs object 'ab12cd34..' not found")

    sess.writer.finish = lost_pack
    with pytest.raises(LockedError, match="its repository lock was removed by another process"):
        sess.commit()
    assert not list(inner.list("sets"))


def test_a_lock_written_by_a_clock_hours_behind_is_live_and_shown_as_just_refreshed(backend):
    """Staleness and the age shown go by when the storage wrote the object, not by the time
    field the holder's clock put in it."""
    backend.put("locks", "e" * 32, json.dumps({"host": "beta", "pid": 4242, "pid_space": "elsewhere",
                                               "exclusive": False, "purpose": "backup of source 'app'",
                                               "time": time.time() - 2 * 3600}).encode())
    locks = Locks(backend)
    with locks.hold("prune", gc=True) as mine:
        (doc,) = locks.others(mine.name)
        assert "refreshed 0 s ago" in locks.describe(doc) or "refreshed 1 s ago" in locks.describe(doc)
        removed, kept = locks.break_locks()
        assert removed == [] and [x["name"] for x in kept] == ["e" * 32]
        assert abs(kept[0]["time"] - time.time()) < 5
    assert "e" * 32 in list(backend.list("locks"))


def test_a_process_holding_no_lock_removes_none_for_its_age_when_its_clock_is_ahead(backend, monkeypatch):
    """A verify holds no lock, so it has no storage clock to tell ages by: on a host whose clock
    is two hours ahead, another host's backup lock written a moment ago looks two hours old. It
    must stay (listed as held); `break_locks` holds a lock for the while and judges by the
    storage's clock, and leaves no lock of its own behind."""
    from cairn.store.content import locks as locks_module

    _foreign(backend, "f" * 32, "beta")
    _foreign(backend, "0" * 32, "gamma", age=2 * 3600)  # really not refreshed for two hours: stale
    ahead = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    ahead.time = lambda: time.time() + 2 * 3600
    monkeypatch.setattr(locks_module, "time", ahead)
    locks = Locks(backend)
    assert sorted(d["host"] for d in locks.others()) == ["beta", "gamma"]  # neither removed: no reference
    assert sorted(backend.list("locks")) == ["0" * 32, "f" * 32]
    removed, kept = locks.break_locks()
    assert [x["name"] for x in removed] == ["0" * 32] and [x["name"] for x in kept] == ["f" * 32]
    assert sorted(backend.list("locks")) == ["f" * 32]  # the backup's lock, and no unlock lock left
