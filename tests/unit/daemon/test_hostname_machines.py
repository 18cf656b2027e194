"""Two machines under one host name (daemon/operations/hostname.py): flagged when they keep
taking sets side by side, not when one took over a lost host's name after its last set, nor
for sets that recorded no machine."""

from __future__ import annotations

import os

import pytest
from cairn.daemon.operations.hostname import MACHINE_ID_FILES, host_shared_with, machine_id, shared_host_warning
from cairn.store.model import BackupSet, SetStats


def _set(i: int, host: str, machine: str, t: float) -> BackupSet:
    extra = {"machine": machine} if machine else {}
    return BackupSet(id=f"{i:064x}", source="app", level="full", requested_level="full", base=None, time_start=t,
                     time_end=t, hostname=host, paths=("/srv",), tree="00" * 32, stats=SetStats(), extra=extra)


def test_interleaving_machines_under_one_name_are_flagged():
    sets = [_set(1, "app", "m-old", 10), _set(2, "app", "m-new", 20), _set(3, "app", "m-old", 30),
            _set(4, "db", "m-other", 40)]
    assert host_shared_with(sets, "app", "m-new") == ["m-old"]
    assert host_shared_with(sets, "app", "m-old") == ["m-new"]
    assert host_shared_with(sets, "db", "m-new") == []  # this machine took no set as 'db'
    text = shared_host_warning("app", ["m-old"])
    assert "host name 'app' is also used by another machine" in text and "[daemon] host" in text


def test_a_machine_that_took_over_a_lost_hosts_name_is_not_flagged():
    sets = [_set(1, "app", "m-lost", 10), _set(2, "app", "m-lost", 20), _set(3, "app", "m-new", 30)]
    assert host_shared_with(sets, "app", "m-new") == []
    assert host_shared_with([_set(1, "app", "", 10), _set(2, "app", "m-new", 5)], "app", "m-new") == []
    assert host_shared_with(sets, "app", "") == []  # no machine id here: nothing can be told


def test_this_machine_has_an_id():
    if not any(os.path.exists(p) for p in MACHINE_ID_FILES):
        pytest.skip("this system has no machine id")
    assert len(machine_id()) >= 16


def _booted(i: int, machine: str, boot: str, t: float) -> BackupSet:
    s = _set(i, "web", machine, t)
    return BackupSet(**{**s.__dict__, "extra": {**s.extra, "boot": boot}})


def test_a_clone_that_kept_the_machine_id_is_told_by_its_boot():
    from cairn.daemon.operations.hostname import cloned_machine, host_warnings

    # this machine (boot b2) after a reboot (b1 before it): not a clone
    rebooted = [_booted(1, "m", "b1", 10), _booted(2, "m", "b1", 20), _booted(3, "m", "b2", 30)]
    assert not cloned_machine(rebooted, "web", "m", "b2")
    # another boot of the same machine id after this boot's first set: a clone beside it
    clones = [*rebooted, _booted(4, "m", "x9", 40)]
    assert cloned_machine(clones, "web", "m", "b2") and not cloned_machine(clones, "web", "m", "x9")
    assert cloned_machine([*clones, _booted(5, "m", "b2", 50)], "web", "m", "x9")  # and once this one goes on
    assert not cloned_machine(clones, "web", "m", "b3")  # no set in this boot yet
    assert not cloned_machine(clones, "web", "m", "")  # a boot id cannot be read: nothing is flagged
    (warning,) = host_warnings(clones, "web", "m", "b2")
    assert "another machine with this machine's id" in warning and "systemd-machine-id-setup" in warning
