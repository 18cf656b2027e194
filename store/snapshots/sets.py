"""Backup set objects: one small JSON object per committed set, named by its blake3.

A set object is written last, after every pack and index it depends on, so a set that can be
listed is complete. Set objects are never modified; forgetting a set deletes its object.
Unreadable set objects (an interrupted write on a non-atomic store) are skipped when listing.

Two machines taking sets side by side under one host name (a cloned VM, a copied
configuration) are told apart by the machine each set records: 'latest' and the base of a new
set are the asking machine's own (`of_machine`), never the other machine's tree, and retention
counts each machine's sets apart (`machine_groups`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict

import blake3

from ..errors import CorruptionError, InvalidArgumentError, NotFoundError, short
from ..model import BackupSet, SetStats, set_machine

MAGIC = "cairn-set"
SET_VERSION = 1


def encode_set(fields: dict) -> tuple[str, bytes]:
    """Serialise set fields (everything but the id) and return (id, bytes)."""
    doc = {"magic": MAGIC, "version": SET_VERSION, **fields}
    data = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    return blake3.blake3(data).hexdigest(), data


def set_fields(s: BackupSet) -> dict:
    d = asdict(s)
    d.pop("id")
    return d


def decode_set(name: str, data: bytes) -> BackupSet:
    """Parse and verify a set object against its name."""
    if blake3.blake3(data).hexdigest() != name:
        raise CorruptionError(f"unable to read set '{short(name)}': checksum mismatch")
    try:
        doc = json.loads(data)
        if doc.pop("magic") != MAGIC or doc.pop("version") > SET_VERSION:
            raise ValueError("magic")
        stats = SetStats(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.pop("stats").items()})
        doc["paths"] = tuple(doc["paths"])
        doc["tags"] = tuple(doc.get("tags", ()))
        return BackupSet(id=name, stats=stats, **doc)
    except (ValueError, KeyError, TypeError):
        raise CorruptionError(f"unable to read set '{short(name)}': not a valid set object") from None


def machine_groups(sets: list[BackupSet]) -> list[list[BackupSet]]:
    """One host's sets by the machines that took them: all in one list, unless machines took
    them side by side (the spans of their sets, first start to last end, overlap): then one list
    per machine, the sets that record no machine being one more. Machines that follow each other
    (a new machine that took over a lost host's name after its last set) stay one list."""
    spans: dict[str, tuple[float, float]] = {}
    for s in sets:
        machine = set_machine(s)
        if machine:
            first, last = spans.get(machine, (s.time_start, s.time_end))
            spans[machine] = (min(first, s.time_start), max(last, s.time_end))
    reach: float | None = None
    for first, last in sorted(spans.values()):
        if reach is not None and first < reach:
            apart: dict[str, list[BackupSet]] = defaultdict(list)
            for s in sets:
                apart[set_machine(s)].append(s)
            return [apart[m] for m in sorted(apart)]
        reach = last if reach is None else max(reach, last)
    return [sets]


def of_machine(sets: list[BackupSet], machine: str) -> list[BackupSet]:
    """Among one host's `sets`, those `machine` took, when it took any; else all of them. A
    machine that took sets under a host name and still takes them builds on and restores its
    own: any other machine's set there came from a clone beside it, or from the host it took
    over, whose sets are all older than its own."""
    mine = [s for s in sets if machine and set_machine(s) == machine]
    return mine or sets


def set_trees(s: BackupSet) -> list[str]:
    """Every root tree a set references: its main tree and its attachments' trees."""
    return [s.tree] + [a["tree"] for a in s.attachments.values()]


def resolve(sets: list[BackupSet], ref: str, source: str | None = None, host: str | None = None,
            own_host: str | None = None, own_machine: str = "") -> BackupSet:
    """Find a set by full id, unique prefix or 'latest', among the sets of `source` and `host`
    when given.

    Hosts sharing a repository often share source names too, so 'latest' never silently means
    another machine's set: with no `host` it is the newest set of `own_host` (the asking
    daemon's host) when that host has one, else the newest set of the only host that has any;
    sets of several other hosts make it ambiguous (name one with --host). Where machines take
    sets under `own_host`, it is the newest set `own_machine` took, when it took any (`of_machine`).
    An id or prefix names one set whatever its host."""
    pool = [s for s in sets if (source is None or s.source == source) and (not host or s.hostname == host)]
    if ref == "latest":
        where = (f" of source '{source}'" if source else "") + (f" of host '{host}'" if host else "")
        if not pool:
            raise NotFoundError(f"no set{where} in the repository")
        if not host and own_host is not None:
            mine = [s for s in pool if s.hostname == own_host]
            hosts = sorted({s.hostname for s in pool})
            if mine:
                pool = of_machine(mine, own_machine)
            elif len(hosts) > 1:
                raise InvalidArgumentError(
                    f"'latest' is ambiguous: the sets{where} come from hosts {', '.join(hosts)}, none from "
                    f"this host ('{own_host}'); name one with --host")
        return max(pool, key=lambda s: (s.time_end, s.id))
    if not ref or any(c not in "0123456789abcdef" for c in ref.lower()):
        raise NotFoundError(f"unknown set '{ref}'")
    hits = [s for s in pool if s.id.startswith(ref.lower())]
    if not hits:
        asked = (f" of source '{source}'" if source else "") + (f" of host '{host}'" if host else "")
        hidden = [x for x in sets if x.id.startswith(ref.lower())]
        if len(hidden) == 1:  # the filters hid it: say whose it is
            x = hidden[0]
            raise NotFoundError(f"unknown set '{ref}'{asked}: it is a set of source '{x.source}' of host "
                                f"'{x.hostname}'")
        raise NotFoundError(f"unknown set '{ref}'{asked}")
    if len(hits) > 1:
        raise InvalidArgumentError(f"set prefix '{ref}' is ambiguous: it matches {len(hits)} sets")
    return hits[0]
