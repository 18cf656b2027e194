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

A VM cloned with its /etc/machine-id has this machine's id too, so the sets also record the
boot they were taken in (`extra.boot`: the kernel's boot id). A machine never returns to an
earlier boot, so once this machine took a set in its current boot, a set under this host name
and machine id from another boot, taken later, comes from another machine with the same id
(`cloned_machine`): nothing else can keep such clones apart, and the warning says how to.

What always holds: reading the machine id or the boot id never fails (an empty id when there is
none, and then nothing is ever flagged); sets without a machine or a boot (older ones) are
ignored.
"""

from __future__ import annotations

from cairn.store.model import BackupSet, set_machine

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


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


def boot_id() -> str:
    """The kernel's id of this boot, or '' when it cannot be read."""
    try:
        with open(BOOT_ID_FILE, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def set_boot(s: BackupSet) -> str:
    value = s.extra.get("boot") if isinstance(s.extra, dict) else None
    return value if isinstance(value, str) else ""


def cloned_machine(sets: list[BackupSet], host: str, machine: str, boot: str) -> bool:
    """True when another machine with this `machine` id took a set under `host` after this
    machine's first set in this `boot` (see the module doc)."""
    if not machine or not boot:
        return False
    ours = [s for s in sets if s.hostname == host and set_machine(s) == machine]
    now = [s.time_end for s in ours if set_boot(s) == boot]
    if not now:
        return False
    since = min(now)
    return any(set_boot(s) not in ("", boot) and s.time_end > since for s in ours)


def cloned_machine_warning(host: str, machine: str) -> str:
    return (f"the host name '{host}' is also used by another machine with this machine's id ({machine[:12]}), a "
            "clone that kept /etc/machine-id: their sets mix (incremental bases, retention, 'latest'); give the "
            "clone a new machine id (rm /etc/machine-id && systemd-machine-id-setup) and its own [daemon] host")


FUTURE_TOLERANCE = 600.0  # a set dated this far ahead of this host's clock was taken by a clock ahead


def future_sets_warning(sets: list[BackupSet], host: str, now: float) -> str | None:
    """When sets of `host` are dated ahead of this host's clock `now` (taken while it was hours
    ahead, and set right since): 'latest', retention and the base of the next set go by the
    sets' times, so until then the newest of them counts as newer than any set taken now."""
    ahead = [s for s in sets if s.hostname == host and s.time_end > now + FUTURE_TOLERANCE]
    if not ahead:
        return None
    newest = max(ahead, key=lambda s: s.time_end)
    hours = (newest.time_end - now) / 3600
    return (f"{len(ahead)} set{'s' if len(ahead) != 1 else ''} of host '{host}' {'are' if len(ahead) != 1 else 'is'} "
            f"dated ahead of this host's clock (set {newest.id[:12]} by {hours:.1f} h: taken while the clock was "
            "ahead): until the clock passes their dates, 'latest', retention and the base of the next set take them "
            "for newer than the sets taken now; name sets by id meanwhile")


def host_warnings(sets: list[BackupSet], host: str, machine: str, boot: str, now: float | None = None) -> list[str]:
    """What status and the log say when other machines take sets under this `host` name, or when
    this host's sets are dated ahead of its clock (`now`)."""
    out = []
    if now is not None:
        ahead = future_sets_warning(sets, host, now)
        if ahead:
            out.append(ahead)
    others = host_shared_with(sets, host, machine)
    if others:
        out.append(shared_host_warning(host, others))
    if cloned_machine(sets, host, machine, boot):
        out.append(cloned_machine_warning(host, machine))
    return out


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
