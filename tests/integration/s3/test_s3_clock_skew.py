"""Hosts whose clocks disagree, on one SeaweedFS bucket, through real daemons: one host backs up a
tree of several packs while another prunes, and one of the two has a wall clock two hours off
(skewed_cairnd.py): the backing-up host's behind (its lock says it was refreshed two hours ago,
by its own clock), or the pruning host's ahead (every lock looks two hours old by its clock; that
host also runs a verify and an unlock first, which hold no lock of their own).
The storage wrote the lock object a moment ago, and the pruning host must judge the lock by the
storage's clock: it keeps the lock, and with it the packs the backup has uploaded so far (they
are marked, not deleted, while the lock stands), the backup commits, `verify --read-data` is
clean and the set restores identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from cairnd_harness import CAIRND, snapshot
from s3daemons import Host, s3_repository

MIB = 1024 * 1024
OFF = 2 * 3600.0
SKEWED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "skewed_cairnd.py")


def _until(cond, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not reached in time: {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("skewed_host, offset", [("backup", -OFF), ("prune", OFF)],
                         ids=["backup-behind", "prune-ahead"])
def test_a_clock_hours_off_does_not_make_a_running_backups_lock_stale(weed, creds, rundir, skewed_host, offset):
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("hosts share this passphrase\n")
    prefix = f"skew-{uuid.uuid4().hex[:8]}"
    repository = s3_repository(weed, creds, prefix, passphrase)
    tree = os.path.join(rundir, "data")
    os.makedirs(tree)
    for i in range(8):  # eight packs' worth: once the first is listed the backup has far to go, even on a
        with open(os.path.join(tree, f"f{i}.bin"), "wb") as f:  # loaded machine where listings are slow
            f.write(os.urandom(16 * MIB))
    skewed = Host(rundir, "skewed", repository, {"data": tree})
    pruner = Host(rundir, "pruner", repository, {})
    off = skewed if skewed_host == "backup" else pruner
    off.command = [sys.executable, SKEWED]
    off.env = {"CAIRN_TEST_CLOCK_OFFSET": str(offset)}
    pruner.init()
    raw = weed.backend(prefix)
    try:
        skewed.start()
        pruner.start()
        result: dict[str, subprocess.CompletedProcess] = {}
        backup = threading.Thread(target=lambda: result.setdefault(
            "r", skewed.cli("--json", "backup", "--level", "full", timeout=600)))
        backup.start()
        _until(lambda: list(raw.list("locks")) and list(raw.list("packs")) or "r" in result,
               "the backup holds its lock and has uploaded a pack")
        assert "r" not in result, "the backup ended before it could be caught running"
        os.kill(skewed.proc.pid, signal.SIGSTOP)  # the backup stands still, its lock and packs in the bucket
        try:
            assert not list(raw.list("sets")), "the backup committed its set before it could be stopped"
            locks, packs = set(raw.list("locks")), set(raw.list("packs"))
            if off is pruner:  # a verify and an unlock hold no lock to read the storage's clock off
                pruner.cli("verify")  # (asks who writes when it finds packs not indexed yet)
                assert set(raw.list("locks")) >= locks, "a verify took the running backup's lock for stale"
                pruner.ok("unlock")
                assert set(raw.list("locks")) == locks, "an unlock took the running backup's lock for stale"
            report = json.loads(pruner.ok("--json", "prune", "--keep-last", "1"))
            assert set(raw.list("locks")) >= locks, "the running backup's lock was taken for stale"
            assert set(raw.list("packs")) >= packs, "packs of the running backup were deleted"
            assert report["waiting"]["packs"] >= len(packs) and report["packs_deleted"] == 0, report
        finally:
            os.kill(skewed.proc.pid, signal.SIGCONT)
        backup.join(600)
        r = result["r"]
        assert r.returncode == 0, (r.stdout, r.stderr)
        set_id = json.loads(r.stdout)["id"]
        pruner.ok("--json", "prune", "--keep-last", "1")  # nothing holds the packs now: they stay, in use
        pruner.ok("verify", "--read-data", timeout=600)
        target = os.path.join(rundir, "restored")
        pruner.ok("restore", set_id, "--target", target, timeout=600)
        restored = os.path.join(target, tree.lstrip("/")) if not os.path.exists(os.path.join(target, "f0.bin")) \
            else target
        assert snapshot(restored) == snapshot(tree)
    finally:
        skewed.stop()
        pruner.stop()


def test_a_marking_host_hours_behind_does_not_shorten_the_grace_period(weed, creds, rundir):
    """Two hosts prune with `gc_grace = "1h"` (what docs/disaster-recovery.md advises while a
    recovery daemon, which holds no lock, reads the bucket). The one whose clock is two hours
    behind forgets a set and marks its packs; the other's prune a moment later must find the
    marker a moment old, by the storage's clock, and leave the packs waiting for the hour."""
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("hosts share this passphrase\n")
    prefix = f"skew-{uuid.uuid4().hex[:8]}"
    repository = s3_repository(weed, creds, prefix, passphrase, gc_grace="1h")
    tree = os.path.join(rundir, "data")
    os.makedirs(tree)
    with open(os.path.join(tree, "f.bin"), "wb") as f:
        f.write(os.urandom(2 * MIB))
    behind = Host(rundir, "behind", repository, {"data": tree})
    behind.command = [sys.executable, SKEWED]
    behind.env = {"CAIRN_TEST_CLOCK_OFFSET": str(-OFF)}
    other = Host(rundir, "other", repository, {})
    behind.init()
    raw = weed.backend(prefix)
    try:
        behind.start()
        other.start()
        set_id = json.loads(behind.ok("--json", "backup", "--level", "full"))["id"]
        packs = set(raw.list("packs"))
        assert packs
        marked = json.loads(behind.ok("--json", "prune", "--forget", set_id))
        assert marked["forgotten"] == [set_id] and marked["packs_deleted"] == 0, marked
        assert list(raw.list("gc")), "the forgotten set's packs were not marked"
        report = json.loads(other.ok("--json", "prune"))
        assert report["packs_deleted"] == 0 and set(raw.list("packs")) == packs, report
        assert report["waiting"]["packs"] == len(packs), report
    finally:
        behind.stop()
        other.stop()


def test_sets_taken_while_the_clock_was_ahead_are_named_once_it_is_right(weed, creds, rundir):
    """A host whose clock was two hours ahead takes a set, then its clock is set right: that set
    is dated after every set the host takes now, so 'latest' and retention take it for the
    newest. Its status and log say so, naming the set; while the clock was ahead nothing was
    wrong to say."""
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("hosts share this passphrase\n")
    tree = os.path.join(rundir, "tree")
    os.makedirs(tree)
    with open(os.path.join(tree, "f.txt"), "w") as f:
        f.write("first\n")
    host = Host(rundir, "ahead", s3_repository(weed, creds, f"ahead-{uuid.uuid4().hex[:8]}", passphrase),
                {"data": tree})
    host.command = [sys.executable, SKEWED]
    host.env = {"CAIRN_TEST_CLOCK_OFFSET": str(OFF)}
    host.init()
    try:
        host.start()
        early = json.loads(host.ok("--json", "backup", "--level", "full"))["id"]
        assert json.loads(host.ok("--json", "status"))["daemon"]["warnings"] == []
        host.stop()
        host.command, host.env = [CAIRND], {}  # the clock set right
        host.start()
        (warning,) = json.loads(host.ok("--json", "status"))["daemon"]["warnings"]
        assert warning.startswith(f"1 set of host 'ahead' is dated ahead of this host's clock (set {early[:12]} by "
                                  "2.0 h"), warning
        with open(os.path.join(tree, "f.txt"), "w") as f:
            f.write("second\n")
        host.ok("backup", "--level", "incremental")
        with open(host.log, encoding="utf-8", errors="replace") as f:
            assert f"dated ahead of this host's clock (set {early[:12]}" in f.read()
    finally:
        host.stop()
