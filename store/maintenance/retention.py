"""Retention: which sets a policy keeps, and which archived WAL files are no longer needed.

Pure functions, no I/O: `decide(sets, policy)` returns one RetentionDecision per set in the
policy's scope, `split` the same as (keep, forget) for prune, and `wal_forget(...)` the WAL
file names that WAL retention lets go. Prune (store/maintenance/prune.py, store/repository.py) deletes
what these functions name; nothing here touches the repository.

What always holds:
- a policy applies to each (host, source) group apart: counts, calendar buckets and the
  keep-within window are taken among the sets of one host and one source, so one host's
  sets never displace another host's; sets outside `policy.host` are not decided at all;
- two machines taking sets side by side under one host name (a cloned VM, a copied
  configuration: each set records its machine, `extra.machine`) are kept apart as well: when
  the spans of the machines' sets in a group overlap, each machine's sets (and the sets that
  record none) are a group of their own, so one machine's frequent sets never push the other's
  out of the policy. Machines that follow each other (a new machine that took over a lost
  host's name) stay one group;
- a policy whose only rule is keeping tags that no set of a group carries would forget every
  set of that group; `untagged_groups` names such groups, and prune refuses them;
- the rules are a union: a set is kept when at least one rule keeps it, and every kept set
  names the rules that keep it; a policy without rules keeps every set (prune then only frees
  unreferenced data); a policy of per-level counts only (--keep-full/-differential/
  -incremental) keeps every set of a level it names no count for;
- calendar rules (hourly, daily, weekly, monthly, yearly) follow restic: walking the group
  from the newest set, the newest set of each bucket (local time, by the set's start) is kept
  until N buckets that hold sets were counted; keep-within keeps the sets that started no
  more than that many seconds before the newest set of the group (so a host that stopped
  backing up never loses its last sets to the passing of time);
- a forgotten set never breaks a kept one: sets are complete trees, so no kept set needs its
  base (the base id is history, not a dependency);
- archived segments (WAL): each name space apart, in the order and with the needs the
  engine's `SegmentRules` give (store/segments.py; the store knows no engine's names): a
  segment is forgotten only when it lies before the position every kept set needs in that
  name space AND it is older than the window (its catalog time, else the start of a set whose
  need lies after it); a file without a position is always kept; an age that cannot be told
  keeps the file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, tzinfo

from ..model import LEVELS, BackupSet, PrunePolicy, RetentionDecision
from ..segments import PlainSegments, SegmentRules
from ..snapshots.sets import machine_groups

CALENDAR: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("hourly", lambda t: t.strftime("%Y-%m-%d %H:00")),
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: f"{t.isocalendar()[0]}-W{t.isocalendar()[1]:02d}"),
    ("monthly", lambda t: t.strftime("%Y-%m")),
    ("yearly", lambda t: t.strftime("%Y")),
)
NO_POLICY = "no policy"
NO_SOURCE_POLICY = "no policy for this source"


def has_rules(policy: PrunePolicy) -> bool:
    """True when the policy has at least one rule of its own (per-source rules not counted)."""
    counts = (policy.keep_last, policy.keep_hourly, policy.keep_daily, policy.keep_weekly, policy.keep_monthly,
              policy.keep_yearly, policy.keep_full, policy.keep_differential, policy.keep_incremental)
    return any(n is not None for n in counts) or policy.keep_within is not None or bool(policy.keep_tags)


def keeps_nothing(policy: PrunePolicy) -> bool:
    """True when the policy has rules and every one of them keeps no set (all counts 0, no
    window, no tag): it would forget every set in its scope. restic reads such a policy as no
    policy at all; Cairn refuses it rather than guess (forgetting sets by name is `forget`)."""
    if not has_rules(policy) or policy.keep_within is not None or policy.keep_tags:
        return False
    calendar = (policy.keep_last, policy.keep_hourly, policy.keep_daily, policy.keep_weekly, policy.keep_monthly,
                policy.keep_yearly)
    levels = (policy.keep_full, policy.keep_differential, policy.keep_incremental)
    if any(n for n in (*calendar, *levels) if n is not None):
        return False
    if policy.keep_last is None:  # per-level counts alone (a calendar 0 is no rule): unnamed levels stay whole
        return all(n is not None for n in levels)
    return True


def _tags_only(policy: PrunePolicy) -> bool:
    """True when tags are the policy's only rule that can keep a set (every count unset or 0,
    no window)."""
    counts = (policy.keep_last, policy.keep_hourly, policy.keep_daily, policy.keep_weekly, policy.keep_monthly,
              policy.keep_yearly, policy.keep_full, policy.keep_differential, policy.keep_incremental)
    return bool(policy.keep_tags) and policy.keep_within is None and not any(counts)


def untagged_groups(sets: Iterable[BackupSet], policy: PrunePolicy) -> list[tuple[str, str, int]]:
    """The groups, as (host, source, number of sets), whose policy's only rule is keeping
    tags, none of which any of their sets carries: the policy would forget every set there,
    most likely for a mistyped tag (restic forgets them all; Cairn's prune refuses)."""
    groups: dict[tuple[str, str], list[BackupSet]] = defaultdict(list)
    for s in sets:
        if in_scope(s, policy):
            groups[(s.hostname, s.source)].append(s)
    out = []
    for (host, source), members in sorted(groups.items()):
        rules = policy.sources.get(source) if policy.sources else policy
        if rules is None or not _tags_only(rules):
            continue
        if not any(t in s.tags for s in members for t in rules.keep_tags):
            out.append((host, source, len(members)))
    return out


def in_scope(s: BackupSet, policy: PrunePolicy) -> bool:
    """True when the policy decides about `s` (its host matches, or no host is named)."""
    return not policy.host or s.hostname == policy.host


def decide(sets: Iterable[BackupSet], policy: PrunePolicy, tz: tzinfo | None = None) -> list[RetentionDecision]:
    """One decision per set in scope, newest first within each (host, source) group."""
    groups: dict[tuple[str, str], list[BackupSet]] = defaultdict(list)
    for s in sets:
        if in_scope(s, policy):
            groups[(s.hostname, s.source)].append(s)
    parts = [((host, source), part) for (host, source), members in sorted(groups.items())
             for part in machine_groups(members)]
    out: list[RetentionDecision] = []
    for (_host, source), members in parts:
        members.sort(key=lambda s: (s.time_start, s.id), reverse=True)
        rules = policy.sources.get(source) if policy.sources else policy
        if rules is None:
            reasons = {s.id: [NO_SOURCE_POLICY] for s in members}
        elif not has_rules(rules):
            reasons = {s.id: [NO_POLICY] for s in members}
        else:
            reasons = _group_reasons(members, rules, tz)
        for s in members:
            why = tuple(reasons.get(s.id, ()))
            out.append(RetentionDecision(set_id=s.id, host=s.hostname, source=s.source, level=s.level,
                                         time=s.time_start, keep=bool(why), reasons=why))
    return out


def split(sets: Iterable[BackupSet], policy: PrunePolicy) -> tuple[list[BackupSet], list[BackupSet]]:
    """(keep, forget) among the sets in the policy's scope (sets outside it are in neither)."""
    sets = list(sets)
    keep_ids = {d.set_id for d in decide(sets, policy) if d.keep}
    scoped = [s for s in sets if in_scope(s, policy)]
    return [s for s in scoped if s.id in keep_ids], [s for s in scoped if s.id not in keep_ids]


def _group_reasons(members: list[BackupSet], policy: PrunePolicy,
                   tz: tzinfo | None) -> dict[str, list[str]]:
    """Rules that keep each set of one group (`members` newest first)."""
    reasons: dict[str, list[str]] = defaultdict(list)
    if policy.keep_last is not None:
        for i, s in enumerate(members[: policy.keep_last]):
            reasons[s.id].append(f"last {i + 1} of {policy.keep_last}")
    for name, bucket in CALENDAR:
        n = getattr(policy, f"keep_{name}")
        if not n:
            continue
        last_key = None
        counted = 0
        for s in members:
            if counted >= n:
                break
            key = bucket(datetime.fromtimestamp(s.time_start, tz))
            if key != last_key:
                reasons[s.id].append(f"{name} {key}")
                last_key = key
                counted += 1
    if policy.keep_within is not None and members:
        since = members[0].time_start - policy.keep_within
        for s in members:
            if s.time_start >= since:
                reasons[s.id].append(f"within {_span(policy.keep_within)} of the newest set")
    if policy.keep_tags:
        for s in members:
            reasons[s.id] += [f"tag '{t}'" for t in policy.keep_tags if t in s.tags]
    only_levels = not (policy.keep_last is not None or policy.keep_within is not None or policy.keep_tags
                       or any(getattr(policy, f"keep_{name}") for name, _ in CALENDAR))
    for level in LEVELS:
        n = getattr(policy, f"keep_{level}")
        if n is None:
            if only_levels:  # per-level counts alone leave the other levels alone (as before)
                for s in members:
                    if s.level == level:
                        reasons[s.id].append(f"no rule for {level} sets")
            continue
        of_level = [s for s in members if s.level == level]
        for i, s in enumerate(of_level[:n]):
            reasons[s.id].append(f"{level} {i + 1} of {n}")
    return reasons


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# ---- archived segments (WAL) -------------------------------------------------------------


def wal_forget(names: Iterable[str], archived: Mapping[str, float | None], kept: Iterable[BackupSet],
               known: Iterable[BackupSet], now: float, window: float, namespace: str = "",
               rules: SegmentRules | None = None) -> list[str]:
    """The archived files of `namespace` retention forgets (see the module docstring), sorted.

    `archived` maps a name to the time its catalog entry records (None: not recorded);
    `kept` are the sets that remain after the prune, `known` every set before it (their
    starts bound the age of the files that precede their needs). `rules` order the names
    and tell what each set needs (default: none, so nothing is forgotten).
    """
    rules = rules or PlainSegments()
    kept_needs = [p for s in kept for p in rules.needs(s, namespace)]
    known_needs = [(p, s.time_start) for s in known for p in rules.needs(s, namespace)]
    cutoff = min(kept_needs, default=None)
    horizon = now - window
    out = []
    for name in names:
        position = rules.position(name)
        if position is None or (cutoff is not None and position >= cutoff):
            continue
        written = archived.get(name)
        if written is None:
            after = [start for p, start in known_needs if p > position]
            written = min(after) if after else None
        if written is not None and written <= horizon:
            out.append(name)
    return sorted(out)
