"""Locks of several hosts on one store. A released lock whose object could not be deleted (the
store was unreachable at that moment) is deleted by the same Locks object the next time it
lists or takes locks: a garbage collector does not wait 30 minutes for it to go stale; while it
still cannot be deleted its own process does not count it as held. A lock
is judged by whether its pid is alive only in the pid space that wrote it."""

from __future__ import annotations

import json
import os
import subprocess
import time

from cairn.store.content.locks import Locks
from cairn.store.storage.backend import MemoryBackend
from cairn.store.storage.faults import FaultyBackend


def test_a_lock_left_by_a_failed_release_is_deleted_at_the_next_listing():
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, fail_at=1, mode="fail", kind="locks", ops=("delete",))
    locks = Locks(faulty)
    with locks.hold("backup of source 'data'"):
        pass
    assert faulty.fired and len(list(inner.list("locks"))) == 1  # the release could not delete it
    collector = Locks(inner)
    assert len(collector.others()) == 1  # live for others until it goes stale: not theirs to judge
    assert locks.others() == []  # its own process deletes it
    assert list(inner.list("locks")) == [] and locks.leftover == set()


def test_a_leftover_that_still_cannot_be_deleted_is_tried_again():
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, fail_at=1, mode="fail-from", kind="locks", ops=("delete",))
    locks = Locks(faulty)
    with locks.hold("backup of source 'data'"):
        pass
    locks.remove_leftovers()  # still failing: kept for the next try
    assert len(locks.leftover) == 1 and len(list(inner.list("locks"))) == 1
    faulty.stopped = faulty.fired = False
    faulty.mode = "fail"  # the store answers again
    faulty.fail_at = None
    with locks.hold("backup of source 'data'"):  # taking a lock sweeps first
        assert len(list(inner.list("locks"))) == 1
    assert list(inner.list("locks")) == [] and locks.leftover == set()


def test_a_leftover_that_cannot_be_deleted_is_not_held_by_anyone_in_its_own_process():
    """The repository went read-only (or away) under a backup: its lock's release could not
    delete the object, nor can the next listing. The daemon's own verify and prune must not say
    that backup still runs, nor wait for it: the lock was released."""
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, fail_at=1, mode="fail-from", kind="locks", ops=("delete",))
    locks = Locks(faulty)
    with locks.hold("backup of source 'data'"):
        held = next(iter(inner.list("locks")))
        assert locks.others(held) == [] and len(Locks(inner).others()) == 1
    assert locks.leftover == {held} and list(inner.list("locks")) == [held]  # still there
    assert locks.others() == [] and locks.others_named("") == {}
    assert list(inner.list("locks")) == [held]  # not deleted (the store refuses), only not counted
    assert len(Locks(inner).others()) == 1  # another process cannot tell it from a live one


def test_a_dead_pid_counts_only_in_the_same_pid_space():
    """Two machines (or containers) with the same host name: a pid written by the other is not
    looked up here, so its live lock is not broken (only the 30-minute staleness applies)."""
    inner = MemoryBackend()
    locks = Locks(inner)
    assert locks.pid_space  # Linux: boot id and pid namespace
    dead = subprocess.Popen(["true"])
    dead.wait()
    doc = {"host": locks.host, "pid": dead.pid, "exclusive": False, "purpose": "backup", "time": time.time()}
    assert not locks.stale({**doc, "pid_space": "another-boot/pid:[1]"})
    assert locks.stale({**doc, "pid_space": locks.pid_space})
    assert locks.stale(doc)  # written before pid spaces were recorded: the host name decides, as before
    assert locks.stale({**doc, "pid_space": "another-boot/pid:[1]", "time": time.time() - 31 * 60})
    with locks.hold("backup of source 'data'"):
        held = json.loads(inner.get("locks", next(iter(inner.list("locks")))))
    assert held["pid_space"] == locks.pid_space and held["pid"] == os.getpid()


def test_locks_name_hosts_as_sets_do_and_unlock_host_matches_that_name():
    """Two daemons on one machine with other `[daemon] host` names (as sets carry them): a lock
    says both names, and unlock of one host's locks leaves the other's, although both share
    the machine's name."""
    backend = MemoryBackend()
    alpha, beta, admin = Locks(backend), Locks(backend), Locks(backend)
    alpha.daemon_host, beta.daemon_host = "alpha", "beta"
    with alpha.hold("backup of source 'a'"), beta.hold("backup of source 'b'"):
        docs = admin.others()
        assert sorted(d["daemon_host"] for d in docs) == ["alpha", "beta"]
        beta_doc = next(d for d in docs if d["daemon_host"] == "beta")
        assert f"on host beta (machine {beta.host})" in admin.describe(beta_doc)
        removed, kept = admin.break_locks(host=beta.host)  # the machine's name is no host's
        assert removed == [] and len(kept) == 2
        removed, kept = admin.break_locks(host="beta")
        assert [d["daemon_host"] for d in removed] == ["beta"] and [d["daemon_host"] for d in kept] == ["alpha"]
    old = {"host": "oldbox", "pid": 1, "purpose": "backup", "time": time.time()}  # written before daemon_host
    backend.put("locks", "0" * 32, json.dumps(old).encode())
    assert admin.break_locks(host="oldbox")[0][0]["host"] == "oldbox"


def test_holders_names_every_lock_host_stale_ones_too_and_removes_none():
    """What `cairn ... --host H` takes as a known host beside the sets' hosts (Repository.hosts):
    the holder of every lock object, a stale one of a host that is gone included, each by the
    name its sets carry; an unreadable lock object names nobody. Nothing is deleted."""
    inner = MemoryBackend()
    locks = Locks(inner)
    locks.daemon_host = "alpha"
    inner.put("locks", "a" * 32, json.dumps({"host": "betabox", "daemon_host": "beta", "pid": 1,
                                             "pid_space": "elsewhere", "time": time.time() - 86400}).encode())
    inner.times[("locks", "a" * 32)] = time.time() - 86400  # not refreshed for a day: stale
    inner.put("locks", "b" * 32, json.dumps({"host": "gamma", "pid": 1, "time": time.time()}).encode())
    inner.put("locks", "c" * 32, b"not json")
    assert locks.holders() == {"beta", "gamma"} and len(list(inner.list("locks"))) == 3
    with locks.hold("backup of source 'data'"):  # taking a lock removes the stale and unreadable ones
        assert locks.holders() == {"alpha", "gamma"}
