"""Retention policies as a pure function: per (host, source) group, a union of rules, reasons."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from cairn.daemon.databases.archive import PostgresSegments
from cairn.store.maintenance.retention import decide, keeps_nothing, split, untagged_groups
from cairn.store.maintenance.retention import wal_forget as store_wal_forget
from cairn.store.model import BackupSet, PrunePolicy, SetStats

PG = PostgresSegments()  # the rules the daemon gives the store


def wal_forget(*args, **kw):
    return store_wal_forget(*args, rules=PG, **kw)

_ids = itertools.count()


def mk(when: datetime | float, *, host: str = "h1", source: str = "app", level: str = "full",
       tags: tuple[str, ...] = (), extra: dict | None = None) -> BackupSet:
    t = when.timestamp() if isinstance(when, datetime) else float(when)
    return BackupSet(id=f"{next(_ids):064x}", source=source, level=level, requested_level=level, base=None,
                     time_start=t, time_end=t + 10, hostname=host, paths=("/x",), tree="00" * 32,
                     stats=SetStats(), tags=tags, extra=extra or {})


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def kept(sets: list[BackupSet], policy: PrunePolicy) -> set[str]:
    return {d.set_id for d in decide(sets, policy, UTC) if d.keep}


def reasons(sets: list[BackupSet], policy: PrunePolicy) -> dict[str, tuple[str, ...]]:
    return {d.set_id: d.reasons for d in decide(sets, policy, UTC)}


def test_no_policy_keeps_everything_and_says_so():
    sets = [mk(at(2026, 1, d)) for d in range(1, 6)]
    ds = decide(sets, PrunePolicy(), UTC)
    assert all(d.keep and d.reasons == ("no policy",) for d in ds) and len(ds) == 5


def test_keep_last_applies_to_each_host_apart():
    a = [mk(at(2026, 1, d, 12), host="a") for d in range(1, 6)]
    b = [mk(at(2025, 6, d, 12), host="b") for d in range(1, 3)]  # older than every set of host a
    got = reasons(a + b, PrunePolicy(keep_last=2))
    assert {i for i, r in got.items() if r} == {a[4].id, a[3].id, b[1].id, b[0].id}
    assert got[a[4].id] == ("last 1 of 2",) and got[a[3].id] == ("last 2 of 2",)
    assert got[a[0].id] == ()


def test_groups_are_per_source_too():
    x = [mk(at(2026, 1, d), source="x") for d in range(1, 4)]
    y = [mk(at(2026, 2, d), source="y") for d in range(1, 4)]
    assert kept(x + y, PrunePolicy(keep_last=1)) == {x[2].id, y[2].id}


def test_daily_keeps_newest_per_day_and_counts_only_days_with_sets():
    sets = [
        mk(at(2026, 3, 1, 23, 59, 59)),  # day 1, newest of it
        mk(at(2026, 3, 1, 8)),
        mk(at(2026, 3, 2, 0, 0, 0)),  # day 2, a second later than the day-1 set
        mk(at(2026, 3, 5, 9)),  # days 3 and 4 have no sets: they do not count
        mk(at(2026, 3, 5, 18)),
    ]
    got = reasons(sets, PrunePolicy(keep_daily=3))
    assert {i for i, r in got.items() if r} == {sets[4].id, sets[2].id, sets[0].id}
    assert got[sets[0].id] == ("daily 2026-03-01",) and got[sets[4].id] == ("daily 2026-03-05",)
    assert kept(sets, PrunePolicy(keep_daily=2)) == {sets[4].id, sets[2].id}


@pytest.mark.parametrize("rule, before, after, label", [
    ("hourly", at(2026, 3, 1, 9, 59, 59), at(2026, 3, 1, 10, 0, 0), "hourly 2026-03-01 10:00"),
    # ISO weeks: Sunday 2026-03-08 ends week 10, Monday 2026-03-09 starts week 11
    ("weekly", at(2026, 3, 8, 23, 59, 59), at(2026, 3, 9, 0, 0, 0), "weekly 2026-W11"),
    ("monthly", at(2026, 2, 28, 23, 59, 59), at(2026, 3, 1, 0, 0, 0), "monthly 2026-03"),
    ("yearly", at(2025, 12, 31, 23, 59, 59), at(2026, 1, 1, 0, 0, 0), "yearly 2026"),
])
def test_calendar_bucket_edges(rule, before, after, label):
    older = mk(before.timestamp() - 1)  # same bucket as `before`
    sets = [older, mk(before), mk(after)]
    got = reasons(sets, PrunePolicy(**{f"keep_{rule}": 2}))
    assert got[sets[2].id] == (label,)
    assert got[sets[1].id] != () and got[older.id] == ()
    assert kept(sets, PrunePolicy(**{f"keep_{rule}": 1})) == {sets[2].id}


def test_within_is_measured_from_the_newest_set_of_the_group():
    newest = at(2026, 3, 10, 12).timestamp()
    inside = mk(newest - 2 * 86400)  # exactly on the edge: kept
    outside = mk(newest - 2 * 86400 - 1)
    latest = mk(newest)
    other_host = mk(newest - 30 * 86400, host="h2")  # alone in its group: it is its own newest
    got = reasons([outside, inside, latest, other_host], PrunePolicy(keep_within=2 * 86400))
    assert got[inside.id] == ("within 2d of the newest set",) and got[latest.id]
    assert got[outside.id] == () and got[other_host.id]


def test_tags_keep_old_sets():
    old = mk(at(2024, 1, 1), tags=("release", "x"))
    plain = mk(at(2025, 1, 1))
    new = mk(at(2026, 1, 1))
    got = reasons([old, plain, new], PrunePolicy(keep_last=1, keep_tags=("release",)))
    assert got[old.id] == ("tag 'release'",) and got[plain.id] == () and got[new.id] == ("last 1 of 1",)


def test_rules_are_a_union_with_levels():
    full1 = mk(at(2026, 1, 1), level="full")
    inc1 = mk(at(2026, 1, 2), level="incremental")
    full2 = mk(at(2026, 1, 3), level="full")
    inc2 = mk(at(2026, 1, 3, 6), level="incremental")
    inc3 = mk(at(2026, 1, 3, 7), level="incremental")
    sets = [full1, inc1, full2, inc2, inc3]
    got = reasons(sets, PrunePolicy(keep_full=2, keep_last=1, keep_daily=2))
    assert got[full1.id] == ("full 2 of 2",)
    assert got[inc1.id] == ("daily 2026-01-02",)
    assert got[inc3.id] == ("last 1 of 1", "daily 2026-01-03")
    assert got[full2.id] == ("full 1 of 2",) and got[inc2.id] == ()
    # a level rule of 0 keeps nothing by itself; other levels are not kept unless a rule keeps them
    assert kept(sets, PrunePolicy(keep_full=1, keep_incremental=0)) == {full2.id}


def test_host_scope_decides_only_that_hosts_sets():
    a = [mk(at(2026, 1, d), host="a") for d in range(1, 4)]
    b = [mk(at(2026, 1, d), host="b") for d in range(1, 4)]
    policy = PrunePolicy(keep_last=1, host="a")
    assert {d.host for d in decide(a + b, policy)} == {"a"}
    keep, forget = split(a + b, policy)
    assert [s.id for s in keep] == [a[2].id] and {s.id for s in forget} == {a[0].id, a[1].id}


def test_per_source_policies():
    x = [mk(at(2026, 1, d), source="x") for d in range(1, 4)]
    y = [mk(at(2026, 1, d), source="y") for d in range(1, 4)]
    got = reasons(x + y, PrunePolicy(sources={"x": PrunePolicy(keep_last=1)}))
    assert {i for i, r in got.items() if r} == {x[2].id} | {s.id for s in y}
    assert got[y[0].id] == ("no policy for this source",)


# ---- WAL ----

def seg(n: int, tli: int = 1) -> str:
    return f"{tli:08X}{n >> 8:08X}{n & 0xFF:08X}"


def db_set(when: float, first: int, last: int, **kw) -> BackupSet:
    rec = {"wal": {"first": seg(first), "last": seg(last)}, "wal_segment_size": 16 * 1024 * 1024}
    return mk(when, extra={"database": rec}, **kw)


def test_wal_before_the_oldest_kept_set_and_outside_the_window_is_forgotten():
    now = at(2026, 3, 10).timestamp()
    day = 86400.0
    old = db_set(now - 20 * day, 2, 3)
    mid = db_set(now - 10 * day, 10, 11)
    new = db_set(now - 1 * day, 20, 21)
    names = [seg(n) for n in range(1, 25)] + ["00000002.history", seg(5) + ".00000028.backup"]
    times: dict[str, float | None] = {n: None for n in names}
    # without archive times a file's age is bounded by the start of the first set after it:
    # segments 10-19 precede only `new` (1 day old), so their age is unknown and they stay
    forget = wal_forget(names, times, [new], [old, mid, new], now, 7 * day)
    assert forget == sorted([seg(n) for n in range(1, 10)] + [seg(5) + ".00000028.backup"])
    # forgetting `old` and `mid`; window 7 days: WAL before segment 20 older than 7 days goes
    times.update({seg(n): now - 8 * day for n in range(10, 20)})
    forget = wal_forget(names, times, [new], [old, mid, new], now, 7 * day)
    assert forget == sorted([seg(n) for n in range(1, 20)] + [seg(5) + ".00000028.backup"])
    # keeping `mid`: everything from its first segment onward stays
    assert wal_forget(names, times, [mid, new], [old, mid, new], now, 7 * day) == \
        sorted([seg(n) for n in range(1, 10)] + [seg(5) + ".00000028.backup"])
    # a recorded archive time inside the window keeps a file that precedes every kept set
    times[seg(1)] = now - day
    assert seg(1) not in wal_forget(names, times, [new], [old, mid, new], now, 7 * day)
    # a wider window than any set's age keeps it all, as does an age nothing tells
    assert wal_forget(names, times, [new], [old, mid, new], now, 30 * day) == []
    assert wal_forget([seg(1)], {seg(1): None}, [], [], now, 0.0) == []


def test_wal_with_no_kept_database_set_follows_the_window_alone():
    now = 1_000_000.0
    names = [seg(1), seg(2)]
    times = {seg(1): now - 100.0, seg(2): now - 10.0}
    assert wal_forget(names, times, [], [], now, 50.0) == [seg(1)]


def test_per_level_counts_alone_leave_other_levels_alone():
    full1 = mk(at(2026, 2, 1), level="full")
    diff1 = mk(at(2026, 2, 2), level="differential")
    full2 = mk(at(2026, 2, 3), level="full")
    inc1 = mk(at(2026, 2, 3, 6), level="incremental")
    sets = [full1, diff1, full2, inc1]
    # only --keep-full: differentials and incrementals have no rule and are kept, as before
    assert kept(sets, PrunePolicy(keep_full=1)) == {full2.id, diff1.id, inc1.id}
    assert reasons(sets, PrunePolicy(keep_full=1))[inc1.id] == ("no rule for incremental sets",)
    # with any other rule in the policy the union decides alone
    assert kept(sets, PrunePolicy(keep_full=1, keep_last=1)) == {full2.id, inc1.id}


@pytest.mark.parametrize("policy", [
    PrunePolicy(keep_last=0), PrunePolicy(keep_daily=0), PrunePolicy(keep_full=0),
    PrunePolicy(keep_full=0, keep_differential=0, keep_incremental=0), PrunePolicy(keep_last=0, keep_full=0),
    PrunePolicy(keep_daily=0, keep_full=0), PrunePolicy(keep_last=0, keep_within=60.0),
    PrunePolicy(keep_last=0, keep_tags=("t",)), PrunePolicy(keep_last=0, keep_weekly=0, keep_monthly=0),
    PrunePolicy(keep_last=1), PrunePolicy(),
])
def test_keeps_nothing_is_exactly_a_policy_that_keeps_no_set(policy):
    """The daemon refuses the policies keeps_nothing names (they would forget every set): it must
    name all of them and no other, whatever the levels and tags of the sets."""
    sets = [mk(at(2026, 1, d), level=lv, tags=("t",) if d == 3 else ())
            for d, lv in ((1, "full"), (2, "incremental"), (3, "differential"), (4, "incremental"))]
    assert keeps_nothing(policy) == (not kept(sets, policy))


def test_clones_under_one_host_name_are_counted_apart():
    """Two machines taking sets side by side under one host name (a cloned VM): each machine's
    sets are a group of their own, so the busier one never pushes the other's out."""
    busy = [mk(t, extra={"machine": "m-busy"}) for t in (100, 300, 400, 500)]
    quiet = [mk(200, extra={"machine": "m-quiet"})]
    older = [mk(50)]  # taken before sets recorded their machine
    assert kept(busy + quiet + older, PrunePolicy(keep_last=1)) == {busy[-1].id, quiet[0].id, older[0].id}


def test_a_machine_that_took_over_a_host_name_stays_in_its_group():
    """A new machine under a lost host's name, after that host's last set: one group, as before."""
    lost = [mk(t, extra={"machine": "m-lost"}) for t in (100, 200)]
    new = [mk(t, extra={"machine": "m-new"}) for t in (300, 400)]
    assert kept(lost + new, PrunePolicy(keep_last=2)) == {s.id for s in new}


def test_a_tag_no_set_of_a_group_carries_as_the_only_rule_names_that_group():
    sets = [mk(100, tags=("release",)), mk(200), mk(300, host="h2"), mk(400, host="h2"), mk(500, source="db")]
    # h1/app has the tag; h2/app and h1/db do not: those two would lose every set
    assert untagged_groups(sets, PrunePolicy(keep_tags=("release",))) == [("h1", "db", 1), ("h2", "app", 2)]
    assert untagged_groups(sets, PrunePolicy(keep_tags=("release",), host="h1")) == [("h1", "db", 1)]
    # any other rule beside the tag keeps sets of its own: nothing to name
    assert untagged_groups(sets, PrunePolicy(keep_tags=("release",), keep_last=1)) == []
    assert untagged_groups(sets, PrunePolicy(keep_tags=("release",), keep_within=60.0)) == []
    # a zero count is no rule: the tag stays the only one
    assert untagged_groups(sets, PrunePolicy(keep_tags=("rel",), keep_daily=0)) == [
        ("h1", "app", 2), ("h1", "db", 1), ("h2", "app", 2)]
    # per-source policies: only the source whose policy is tags alone
    per_source = PrunePolicy(sources={"app": PrunePolicy(keep_tags=("release",)), "db": PrunePolicy(keep_last=2)})
    assert untagged_groups(sets, per_source) == [("h2", "app", 2)]
    # and that is what the policy would do
    assert not {s.id for s in sets if s.hostname == "h2"} & kept(sets, per_source)
