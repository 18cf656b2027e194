"""The scheduler: pure due/advance decisions and the real thread driven by a fake clock."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import pytest
from cairn.daemon.scheduling.cron import CronExpr
from cairn.daemon.scheduling.scheduler import (
    Scheduler,
    advance,
    compute_next_runs,
    due_levels,
    next_wakeup,
    parse_schedules,
)
from cairn.store.errors import InvalidArgumentError


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


SCHEDULE = {"app": {"full": "0 3 * * 0", "differential": "0 3 * * 1-6", "incremental": "0 * * * *"}}


def test_next_runs_per_source_and_level():
    crons = parse_schedules(SCHEDULE)
    # 2024-06-01 is a Saturday.
    runs = compute_next_runs(crons, ts(2024, 6, 1, 2, 30), UTC)
    assert runs == {"app": {"full": ts(2024, 6, 2, 3, 0), "differential": ts(2024, 6, 1, 3, 0),
                            "incremental": ts(2024, 6, 1, 3, 0)}}
    assert next_wakeup(runs) == ts(2024, 6, 1, 3, 0)
    assert next_wakeup({}) is None


def test_only_the_highest_due_level_is_submitted():
    next_runs = {
        "app": {"full": 100.0, "differential": 100.0, "incremental": 100.0},
        "web": {"differential": 100.0, "incremental": 50.0},
        "db": {"incremental": 40.0},
        "later": {"full": 500.0, "incremental": 90.0},
    }
    assert due_levels(next_runs, 99.0) == {"web": "incremental", "db": "incremental", "later": "incremental"}
    assert due_levels(next_runs, 100.0) == {"app": "full", "web": "differential", "db": "incremental",
                                            "later": "incremental"}
    assert due_levels(next_runs, 10.0) == {}


def test_advance_moves_only_due_entries_past_now():
    crons = parse_schedules(SCHEDULE)
    now = ts(2024, 6, 2, 3, 0)  # Sunday 03:00: full and hourly incremental both due
    runs = compute_next_runs(crons, now - 1, UTC)
    assert due_levels(runs, now) == {"app": "full"}
    moved = advance(crons, runs, now, UTC)
    assert moved["app"] == {"full": ts(2024, 6, 9, 3, 0), "differential": ts(2024, 6, 3, 3, 0),
                            "incremental": ts(2024, 6, 2, 4, 0)}
    assert due_levels(moved, now) == {}


def test_missed_periods_run_once_after_a_stall():
    crons = parse_schedules({"app": {"incremental": "*/5 * * * *"}})
    runs = compute_next_runs(crons, ts(2024, 6, 1, 10, 0), UTC)
    woke = ts(2024, 6, 1, 11, 2)  # an hour late: twelve periods missed
    assert due_levels(runs, woke) == {"app": "incremental"}
    moved = advance(crons, runs, woke, UTC)
    assert moved == {"app": {"incremental": ts(2024, 6, 1, 11, 5)}}
    assert due_levels(moved, woke) == {}


def test_invalid_schedules_are_rejected():
    with pytest.raises(InvalidArgumentError, match="unknown level 'weekly'"):
        parse_schedules({"app": {"weekly": "0 0 * * 0"}})
    with pytest.raises(InvalidArgumentError, match="minute '61'"):
        Scheduler({"app": {"full": "61 * * * *"}}, submit=lambda *a: None)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail_first = fail_first
        self.event = threading.Event()

    def __call__(self, source: str, level: str, reason: str) -> None:
        self.calls.append((source, level, reason))
        self.event.set()
        if len(self.calls) <= self.fail_first:
            raise RuntimeError("backup of this source is already running")


def wait_for_calls(recorder: Recorder, count: int) -> None:
    for _ in range(200):
        if len(recorder.calls) >= count:
            return
        recorder.event.wait(0.01)
        recorder.event.clear()
    raise AssertionError(f"expected {count} submit calls, got {recorder.calls}")


def test_thread_submits_due_level_and_survives_submit_errors(caplog):
    clock = FakeClock(ts(2024, 6, 2, 2, 59, 30))
    recorder = Recorder(fail_first=1)
    scheduler = Scheduler(SCHEDULE, recorder, clock=clock, tz=UTC)
    assert scheduler.next_runs()["app"]["full"] == ts(2024, 6, 2, 3, 0)
    scheduler.start()
    try:
        clock.now = ts(2024, 6, 2, 3, 0, 5)
        with caplog.at_level(logging.ERROR, logger="cairn.daemon.scheduling.scheduler"):
            scheduler.poke()
            wait_for_calls(recorder, 1)
        assert recorder.calls == [("app", "full", "schedule")]
        assert scheduler.next_runs()["app"]["incremental"] == ts(2024, 6, 2, 4, 0)

        # The failed submit was logged and the thread lives on to submit the next run.
        clock.now = ts(2024, 6, 2, 4, 0)
        scheduler.poke()
        wait_for_calls(recorder, 2)
        assert recorder.calls[1] == ("app", "incremental", "schedule")
        assert scheduler.is_alive() and scheduler.healthy
        assert any("already running" in record.getMessage() for record in caplog.records)
    finally:
        assert scheduler.stop(2)
    assert scheduler.healthy


def test_reload_replaces_schedules_and_keeps_old_ones_on_error():
    clock = FakeClock(ts(2024, 6, 1, 10, 0))
    recorder = Recorder()
    scheduler = Scheduler({"app": {"incremental": "0 * * * *"}}, recorder, clock=clock, tz=UTC)
    scheduler.start()
    try:
        with pytest.raises(InvalidArgumentError):
            scheduler.reload({"app": {"incremental": "bogus"}})
        assert scheduler.next_runs() == {"app": {"incremental": ts(2024, 6, 1, 11, 0)}}
        scheduler.reload({"web": {"full": "30 10 * * *"}})
        assert scheduler.next_runs() == {"web": {"full": ts(2024, 6, 1, 10, 30)}}
        clock.now = ts(2024, 6, 1, 11, 0)
        scheduler.poke()
        wait_for_calls(recorder, 1)
        assert recorder.calls == [("web", "full", "schedule")]
    finally:
        assert scheduler.stop(2)


def test_real_clock_sleeps_until_the_due_time():
    # No pokes: the thread must wake by itself at the due time, 0.3 s after it starts.
    start = ts(2024, 6, 1, 10, 0, 59) + 0.7
    origin: list[float | None] = [None]

    def shifted_clock() -> float:
        if origin[0] is None:
            origin[0] = time.monotonic()
        return start + (time.monotonic() - origin[0])

    recorder = Recorder()
    scheduler = Scheduler({"app": {"incremental": "* * * * *"}}, recorder, clock=shifted_clock, tz=UTC)
    scheduler.start()
    try:
        wait_for_calls(recorder, 1)
        assert recorder.calls[0] == ("app", "incremental", "schedule")
    finally:
        assert scheduler.stop(2)


def test_stop_before_start_and_cron_objects_accepted():
    scheduler = Scheduler({"app": {"full": CronExpr.parse("@daily")}}, lambda *a: None)
    assert scheduler.stop(0.1)
    assert not scheduler.healthy
