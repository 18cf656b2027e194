"""One host name, one machine: telling when two machines back up under the same host name.

Hosts sharing a repository are told apart by the host name their sets record (`[daemon] host`,
else the machine's name). Two machines under one name (a cloned VM, a configuration copied
with its `host`) mix their sets. Each set therefore records the machine it was taken on
(`extra.machine`: systemd's machine id), so that the store keeps them from taking each
other's sets as the base of an incremental or as 'latest', and retention counts them apart
(store/snapshots/sets.py); `host_shared_with` finds the other machines that took sets under
this host name *since this machine started to*, for the warning in status and the log. A machine
that takes over a lost host's name (docs/disaster-recovery.md) comes after that host's last
set, so it is not flagged; one that keeps interleaving sets with another is.

What always holds: reading the machine id never fails (an empty id when there is none, and then
nothing is ever flagged); sets without a machine (older ones) are ignored.
"""

from __future__ import annotations

from cairn.store.model import BackupSet, set_machine

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_id() -> str:
    """This machine's id (systemd's machine-id), or '' when it has none."""
    for path in MACHINE_ID_FILES:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value
    return ""


def host_shared_with(sets: list[BackupSet], host: str, machine: str) -> list[str]:
    """The other machines that took sets under `host` after this `machine`'s first one."""
    if not machine:
        return []
    mine = [s.time_end for s in sets if s.hostname == host and set_machine(s) == machine]
    if not mine:
        return []
    since = min(mine)
    return sorted({set_machine(s) for s in sets if s.hostname == host and set_machine(s) not in ("", machine)
                   and s.time_end > since})


def shared_host_warning(host: str, others: list[str]) -> str:
    shown = ", ".join(o[:12] for o in others[:3])
    return (f"the host name '{host}' is also used by another machine (machine id {shown}): their sets mix in "
            "listings and status (each machine builds on, keeps and restores as 'latest' its own); give each "
            "machine its own [daemon] host")
