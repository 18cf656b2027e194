"""Scheduled runs are never dropped: a run that finds its source busy waits (one per source,
the highest level winning) and starts when the source is free; a run missed while the daemon
was down is caught up once at start from `<state_dir>/schedule.json`. Pure decisions, then the
real thread on a fake clock with a fake "running backup" and a real state directory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cairn.daemon.operations.status import waiting_text
from cairn.daemon.scheduling.cron import CronExpr, previous_run
from cairn.daemon.scheduling.scheduler import (
    STATE_FILE,
    Scheduler,
    WaitingRun,
    merge_waiting,
    missed_runs,
    parse_schedules,
    soonest_runs,
)
from mounts import fill, mount_tmpfs

LOGGER = "cairn.daemon.scheduling.scheduler"


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_previous_run_is_the_latest_run_at_or_before():
    def prev(text: str, *moment: int) -> datetime | None:
        return previous_run(CronExpr.parse(text), datetime(*moment, tzinfo=UTC))

    assert prev("26 2 * * *", 2024, 6, 1, 2, 27) == datetime(2024, 6, 1, 2, 26, tzinfo=UTC)
    assert prev("26 2 * * *", 2024, 6, 1, 2, 26) == datetime(2024, 6, 1, 2, 26, tzinfo=UTC)
    assert prev("26 2 * * *", 2024, 6, 1, 2, 25, 59) == datetime(2024, 5, 31, 2, 26, tzinfo=UTC)
    assert prev("* * * * *", 2024, 6, 1, 10, 0, 30) == datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    assert prev("0 3 * * 0", 2024, 6, 5, 12, 0) == datetime(2024, 6, 2, 3, 0, tzinfo=UTC)  # last Sunday
    assert prev("@yearly", 2024, 6, 1) == datetime(2024, 1, 1, tzinfo=UTC)


def test_waiting_runs_collapse_and_the_highest_level_wins():
    run = merge_waiting(None, "app", {"incremental": 100.0}, now=100.0)
    assert (run.level, run.due, run.since) == ("incremental", 100.0, 100.0)
    run = merge_waiting(run, "app", {"incremental": 200.0}, now=200.0)  # the same level again: one run
    assert (run.level, run.due, run.since, run.covers) == ("incremental", 200.0, 100.0, (("incremental", 200.0),))
    run = merge_waiting(run, "app", {"full": 300.0, "incremental": 300.0}, now=300.0)
    assert (run.level, run.due, run.since) == ("full", 300.0, 100.0)
    assert run.covers == (("full", 300.0), ("incremental", 300.0))
    run = merge_waiting(run, "app", {"differential": 400.0}, now=400.0)  # a lower level does not demote it
    assert run.level == "full" and dict(run.covers)["differential"] == 400.0


def test_missed_runs_only_the_latest_and_only_when_recorded():
    crons = parse_schedules({"app": {"full": "0 3 * * 0", "incremental": "0 * * * *"},
                             "new": {"full": "0 3 * * 0"}})
    now = ts(2024, 6, 2, 3, 1)  # Sunday 03:01
    handled = {"app": {"full": ts(2024, 5, 5, 3, 0), "incremental": ts(2024, 6, 2, 2, 0)}}
    # four weekly fulls were missed: only the latest counts; "new" was never seen: nothing to catch up
    assert missed_runs(crons, handled, now, UTC) == {"app": {"full": ts(2024, 6, 2, 3, 0),
                                                             "incremental": ts(2024, 6, 2, 3, 0)}}
    # a full handled at 03:00 covers the incremental of the same minute
    handled = {"app": {"full": ts(2024, 6, 2, 3, 0), "incremental": ts(2024, 6, 2, 2, 0)}}
    assert missed_runs(crons, handled, now, UTC) == {}
    handled = {"app": {"full": ts(2024, 6, 2, 3, 0), "incremental": ts(2024, 6, 2, 3, 0)}}
    assert missed_runs(crons, handled, ts(2024, 6, 2, 3, 59), UTC) == {}


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Job:
    def __init__(self, level: str, reason: str) -> None:
        self.level, self.reason = level, reason

    def age(self) -> float:
        return 8.0


class FakeService:
    """submit() starts a scheduled job that stays running until finish(); a manual job can be
    started by the test (the source is then busy)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.on_submit = None

    def submit(self, source: str, level: str, reason: str) -> None:
        with self.lock:
            if self.on_submit is not None:
                self.on_submit(source)
            self.calls.append((source, level, reason))
            if source not in self.jobs:  # as BackupPart.submit: a busy source is skipped silently
                self.jobs[source] = Job(level, reason)
        self.event.set()

    def running(self, source: str) -> Job | None:
        with self.lock:
            return self.jobs.get(source)

    def finish(self, source: str) -> None:
        with self.lock:
            self.jobs.pop(source, None)


def wait_until(predicate, what: str, timeout: float = 3.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


SCHEDULE = {"bulk": {"full": "0 3 * * 0", "incremental": "0 * * * *"}}


def test_a_run_due_on_a_busy_source_waits_and_runs_once_when_it_is_free(tmp_path, caplog):
    clock = FakeClock(ts(2024, 6, 2, 2, 59, 30))  # Sunday: the full is due at 03:00
    service = FakeService()
    scheduler = Scheduler(SCHEDULE, service.submit, clock=clock, tz=UTC, running=service.running,
                          state_dir=str(tmp_path))
    service.jobs["bulk"] = Job("incremental", "request")  # a manual incremental runs over 03:00
    scheduler.start()
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            clock.now = ts(2024, 6, 2, 3, 0, 2)
            scheduler.poke()
            wait_until(lambda: scheduler.waiting().get("bulk", None) is not None
                       and scheduler.waiting()["bulk"].blocked_by, "the full to wait")
            run = scheduler.waiting()["bulk"]
            assert (run.level, run.due, run.missed, run.started) == ("full", ts(2024, 6, 2, 3, 0), False, False)
            assert run.blocked_by == "incremental backup (request)"
            assert "waits for the running incremental backup (request)" in waiting_text(run)
            # the hourly incremental falls due too, and 05:00's: still one run, the full
            clock.now = ts(2024, 6, 2, 5, 0, 1)
            scheduler.poke()
            wait_until(lambda: dict(scheduler.waiting()["bulk"].covers).get("incremental") == ts(2024, 6, 2, 5, 0),
                       "the incrementals to join the waiting full")
            assert service.calls == []
            service.finish("bulk")
            scheduler.poke()
            wait_until(lambda: service.calls, "the waiting full to start")
        assert service.calls == [("bulk", "full", "schedule")]
        waits = [r for r in caplog.records if "waits for the running" in r.getMessage()]
        assert len(waits) == 1 and waits[0].levelno == logging.WARNING, caplog.text
        assert "started 8s ago" in waits[0].getMessage()
        assert any(r.levelno == logging.WARNING and "starts now" in r.getMessage() for r in caplog.records)
        # while the late full is taken, status still says so; once it ended, nothing waits
        assert scheduler.waiting()["bulk"].started
        assert "is being taken late (it waited for a busy source)" in waiting_text(scheduler.waiting()["bulk"])
        service.finish("bulk")
        assert scheduler.waiting() == {}
        record = json.loads((tmp_path / STATE_FILE).read_text())["handled"]["bulk"]
        assert record == {"full": ts(2024, 6, 2, 3, 0), "incremental": ts(2024, 6, 2, 5, 0)}
        clock.now = ts(2024, 6, 2, 5, 30)
        scheduler.poke()
        event = threading.Event()
        event.wait(0.1)  # the thread has looked at least once more: nothing new is submitted
        assert service.calls == [("bulk", "full", "schedule")]
    finally:
        assert scheduler.stop(2)


def test_a_source_taken_between_the_look_and_the_submit_keeps_the_run_waiting(tmp_path):
    clock = FakeClock(ts(2024, 6, 2, 2, 59, 30))
    service = FakeService()

    def manual_first(source: str) -> None:  # a manual backup wins the race once
        service.jobs[source] = Job("incremental", "request")
        service.on_submit = None

    service.on_submit = manual_first
    scheduler = Scheduler(SCHEDULE, service.submit, clock=clock, tz=UTC, running=service.running,
                          state_dir=str(tmp_path))
    scheduler.start()
    try:
        clock.now = ts(2024, 6, 2, 3, 0, 1)
        scheduler.poke()
        wait_until(lambda: len(service.calls) == 1 and scheduler.waiting().get("bulk") is not None,
                   "the refused full to wait again")
        assert scheduler.waiting()["bulk"].level == "full"
        service.finish("bulk")
        scheduler.poke()
        wait_until(lambda: len(service.calls) == 2, "the full to be submitted again")
        assert service.calls[1] == ("bulk", "full", "schedule") and service.jobs["bulk"].reason == "schedule"
    finally:
        assert scheduler.stop(2)


def test_a_run_missed_while_the_daemon_was_down_is_caught_up_once(tmp_path, caplog):
    service = FakeService()
    schedule = {"bulk": {"full": "26 2 * * *", "incremental": "*/5 * * * *"}, "idle": {"full": "0 4 * * *"}}

    def scheduler_at(now: float) -> Scheduler:
        return Scheduler(schedule, service.submit, clock=FakeClock(now), tz=UTC, running=service.running,
                         state_dir=str(tmp_path))

    first = scheduler_at(ts(2024, 6, 1, 2, 20))  # first start: nothing to catch up, recorded from now
    assert first.waiting() == {}
    assert first.stop(0.1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        second = scheduler_at(ts(2024, 6, 1, 2, 27))  # stopped over 02:25 and 02:26, started at 02:27
    run = second.waiting()["bulk"]
    assert (run.level, run.due, run.missed) == ("full", ts(2024, 6, 1, 2, 26), True)
    assert set(second.waiting()) == {"bulk"}  # idle's 04:00 is not due yet
    assert "was missed while the daemon was down; it is being caught up" in waiting_text(run)
    assert "missed while the daemon was down" in caplog.text
    assert second.next_runs()["bulk"]["full"] == ts(2024, 6, 2, 2, 26)
    second.start()
    try:
        wait_until(lambda: service.calls, "the catch-up")
        assert service.calls == [("bulk", "full", "schedule")]
        assert "is being taken late (missed while the daemon was down)" in waiting_text(second.waiting()["bulk"])
    finally:
        assert second.stop(2)
    service.finish("bulk")
    assert second.interrupted(lambda job: False) == []  # the daemon's stop: the set ended, not cut
    third = scheduler_at(ts(2024, 6, 1, 2, 28))  # restarted again: it was caught up, nothing more
    assert third.waiting() == {}
    assert third.stop(0.1)
    # down for three weeks: one catch-up of the latest time only
    fourth = scheduler_at(ts(2024, 6, 22, 9, 1))
    assert {s: (r.level, r.due) for s, r in fourth.waiting().items()} == {
        "bulk": ("full", ts(2024, 6, 22, 2, 26)), "idle": ("full", ts(2024, 6, 22, 4, 0))}
    assert fourth.stop(0.1)


def test_a_run_whose_backup_a_killed_daemon_was_taking_is_caught_up(tmp_path, caplog):
    service = FakeService()
    schedule = {"bulk": {"full": "26 2 * * *"}}
    record = os.path.join(str(tmp_path), STATE_FILE)

    def scheduler_at(now: float | FakeClock) -> Scheduler:
        clock = now if isinstance(now, FakeClock) else FakeClock(now)
        return Scheduler(schedule, service.submit, clock=clock, tz=UTC, running=service.running,
                         state_dir=str(tmp_path))

    clock = FakeClock(ts(2024, 6, 1, 2, 25))
    first = scheduler_at(clock)
    clock.now = ts(2024, 6, 1, 2, 26)
    first.start()
    try:
        first.poke()
        wait_until(lambda: service.calls, "the 02:26 full")
        wait_until(lambda: "bulk" in json.loads(open(record).read())["taken"], "the record of the running set")
    finally:
        assert first.stop(2)  # the daemon dies here: nobody says whether its set ended
    with caplog.at_level(logging.INFO, logger=LOGGER):
        second = scheduler_at(ts(2024, 6, 1, 2, 27))
    run = second.waiting()["bulk"]
    assert (run.level, run.due, run.missed) == ("full", ts(2024, 6, 1, 2, 26), True)
    assert "was being taken when the previous daemon died" in caplog.text
    assert json.loads(open(record).read())["taken"] == {}
    assert second.stop(0.1)

    # a set that ended before the kill is forgotten by the record and not taken again
    service.jobs.clear()
    service.calls.clear()
    second = scheduler_at(ts(2024, 6, 1, 2, 27))
    second.start()
    try:
        second.poke()
        wait_until(lambda: "bulk" in json.loads(open(record).read())["taken"], "the record of the catch-up")
        service.finish("bulk")
        wait_until(lambda: json.loads(open(record).read())["taken"] == {}, "the record to forget the ended set")
    finally:
        assert second.stop(2)
    assert scheduler_at(ts(2024, 6, 1, 2, 28)).waiting() == {}

    # a record whose list of sets being taken is unreadable keeps its handled runs
    data = json.loads(open(record).read())
    data["taken"] = {"bulk": {"full": "soon"}}
    with open(record, "w") as f:
        json.dump(data, f)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        third = scheduler_at(ts(2024, 6, 1, 2, 29))
    assert third.waiting() == {}
    assert "holds no readable list of the scheduled sets being taken" in caplog.text


def test_a_catch_up_waits_for_a_busy_source_and_an_unreadable_record_starts_afresh(tmp_path, caplog):
    service = FakeService()
    (tmp_path / STATE_FILE).write_text(json.dumps({"handled": {"bulk": {"full": ts(2024, 6, 1, 2, 0)}}}))
    service.jobs["bulk"] = Job("incremental", "rpo")
    scheduler = Scheduler({"bulk": {"full": "26 2 * * *"}}, service.submit, clock=FakeClock(ts(2024, 6, 1, 2, 30)),
                          tz=UTC, running=service.running, state_dir=str(tmp_path))
    scheduler.start()
    try:
        wait_until(lambda: scheduler.waiting()["bulk"].blocked_by, "the catch-up to wait")
        assert "it is caught up when the running incremental backup (rpo) ends" in \
            waiting_text(scheduler.waiting()["bulk"])
        service.finish("bulk")
        scheduler.poke()
        wait_until(lambda: service.calls, "the catch-up")
        assert service.calls == [("bulk", "full", "schedule")]
    finally:
        assert scheduler.stop(2)
    (tmp_path / STATE_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = Scheduler({"bulk": {"full": "26 2 * * *"}}, service.submit, clock=FakeClock(ts(2024, 6, 2, 3, 0)),
                          tz=UTC, running=service.running, state_dir=str(tmp_path))
    assert again.waiting() == {} and "unable to read" in caplog.text
    assert json.loads((tmp_path / STATE_FILE).read_text())["handled"] == {"bulk": {"full": ts(2024, 6, 2, 3, 0)}}
    assert again.stop(0.1)


def test_reload_keeps_waiting_runs_of_levels_still_scheduled(tmp_path):
    clock = FakeClock(ts(2024, 6, 2, 2, 59, 30))
    service = FakeService()
    service.jobs["bulk"] = Job("full", "request")
    scheduler = Scheduler(SCHEDULE, service.submit, clock=clock, tz=UTC, running=service.running,
                          state_dir=str(tmp_path))
    scheduler.start()
    try:
        clock.now = ts(2024, 6, 2, 3, 0, 1)
        scheduler.poke()
        wait_until(lambda: "bulk" in scheduler.waiting(), "the full to wait")
        scheduler.reload({"bulk": {"incremental": "0 * * * *"}})  # the full is no longer scheduled
        assert scheduler.waiting()["bulk"].level == "incremental"
        scheduler.reload({})
        assert scheduler.waiting() == {}
    finally:
        assert scheduler.stop(2)


def test_waiting_text_variants():
    run = WaitingRun("app", "full", ts(2024, 6, 2, 3, 0), 0.0, (("full", ts(2024, 6, 2, 3, 0)),))
    assert waiting_text(run).startswith("source 'app': the scheduled full set due ")
    assert waiting_text(run).endswith("waits for the running backup; it starts when that ends")


def test_soonest_runs_names_the_highest_level_of_each_source_due_first():
    runs = {"app": {"full": 300.0, "incremental": 300.0}, "db": {"incremental": 300.0}, "web": {"full": 900.0}}
    assert soonest_runs(runs) == (300.0, {"app": "full", "db": "incremental"})
    assert soonest_runs({"web": {}}) is None


def test_a_stop_that_comes_while_due_runs_start_starts_no_further_run(tmp_path):
    """Three sources fall due at once; the daemon begins to stop as the first set is submitted:
    the scheduler submits nothing more (a set started then would only be cancelled again)."""
    clock = FakeClock(ts(2024, 6, 2, 2, 59, 30))
    service = FakeService()
    schedules = {name: {"incremental": "0 * * * *"} for name in ("a", "b", "c")}
    scheduler = Scheduler(schedules, service.submit, clock=clock, tz=UTC, running=service.running,
                          state_dir=str(tmp_path))
    service.on_submit = lambda source: scheduler.request_stop()
    scheduler.start()
    try:
        clock.now = ts(2024, 6, 2, 3, 0, 1)
        scheduler.poke()
        wait_until(lambda: not scheduler.is_alive(), "the scheduler to stop")
        assert service.calls == [("a", "incremental", "schedule")]
    finally:
        assert scheduler.stop(2)


def test_a_scheduled_set_the_stop_cancels_is_caught_up_at_the_next_start(tmp_path, caplog):
    """A scheduled set whose backup the daemon's stop cancelled was recorded as handled when it
    started, so the next start did not take it again (a nightly full cut by a reboot waited a
    week). The stop now gives its record back: the next start catches it up, once; a run whose
    backup ended otherwise (a set committed) stays handled."""
    service = FakeService()
    schedule = {"bulk": {"full": "26 2 * * *"}}

    def scheduler_at(clock: FakeClock) -> Scheduler:
        return Scheduler(schedule, service.submit, clock=clock, tz=UTC, running=service.running,
                         state_dir=str(tmp_path))

    clock = FakeClock(ts(2024, 6, 1, 2, 20))
    first = scheduler_at(clock)
    first.start()
    try:
        clock.now = ts(2024, 6, 1, 2, 26, 5)
        first.poke()
        wait_until(lambda: service.calls, "the scheduled full")
    finally:
        assert first.stop(2)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert first.interrupted(lambda job: job is service.jobs["bulk"]) == ["bulk"]
    assert "scheduled full set of source 'bulk' was interrupted by the daemon's stop: the next start catches it " \
           "up" in caplog.text
    service.finish("bulk")
    second = scheduler_at(FakeClock(ts(2024, 6, 1, 2, 40)))
    run = second.waiting()["bulk"]
    assert (run.level, run.due, run.missed) == ("full", ts(2024, 6, 1, 2, 26), True)
    second.start()
    try:
        wait_until(lambda: len(service.calls) == 2, "the catch-up")
    finally:
        assert second.stop(2)
    assert second.interrupted(lambda job: False) == []  # its set was taken: handled for good
    service.finish("bulk")
    third = scheduler_at(FakeClock(ts(2024, 6, 1, 2, 50)))
    assert third.waiting() == {}
    assert third.stop(0.1)


@pytest.fixture
def full_state_dir(tmp_path) -> Iterator[str]:
    """A state directory on a small file system with no room left (the filler is `<dir>/fill`)."""
    state = tmp_path / "state"
    state.mkdir()
    mount_tmpfs(str(state))
    try:
        fill(str(state / "fill"))
        yield str(state)
    finally:
        if subprocess.run(["umount", str(state)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(state)], capture_output=True)


def test_saves_failing_on_a_full_state_dir_are_one_line_until_the_reason_changes_or_they_work(
        full_state_dir, caplog, monkeypatch):
    """Every run taken saves the schedule record: with the state directory full, one clear line
    (not the OSError's text, once per run), again after UNSAVED_REPEAT seconds with the count,
    and one line once a save works again."""
    from cairn.daemon.scheduling import scheduler as scheduler_module

    clock = FakeClock(ts(2024, 6, 1, 10, 0, 30))
    service = FakeService()
    problem = f"unable to save the schedule state in '{full_state_dir}': no space left on device"

    def take_runs(n: int) -> None:
        for _ in range(n):
            taken = len(service.calls)
            clock.now += 60
            scheduler.poke()
            wait_until(lambda: len(service.calls) > taken, "the next run")  # noqa: B023
            service.finish("app")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        scheduler = Scheduler({"app": {"incremental": "* * * * *"}}, service.submit, clock=clock, tz=UTC,
                              running=service.running, state_dir=full_state_dir)
        scheduler.start()
        try:
            take_runs(20)
            lines = [r for r in caplog.records if "unable to" in r.getMessage()]
            assert [r.getMessage().split(";")[0] for r in lines] == [problem], caplog.text
            assert lines[0].levelno == logging.WARNING and "said again in 10 minutes" in lines[0].getMessage()
            real = time.monotonic
            monkeypatch.setattr(scheduler_module.time, "monotonic",
                                lambda: real() + scheduler_module.UNSAVED_REPEAT + 1)
            take_runs(1)
            lines = [r.getMessage() for r in caplog.records if "unable to" in r.getMessage()]
            assert len(lines) == 2 and f"{problem} (20 more failed saves since the last line)" in lines[1], lines
            os.unlink(os.path.join(full_state_dir, "fill"))
            take_runs(1)
            take_runs(1)
        finally:
            assert scheduler.stop(2)
    again = [r.getMessage() for r in caplog.records if "saved again" in r.getMessage()]
    assert again == [f"the schedule state in '{full_state_dir}' is saved again (22 saves had failed)"], again
    assert "Errno" not in caplog.text
    record = json.loads(open(os.path.join(full_state_dir, STATE_FILE)).read())
    assert record["handled"]["app"]["incremental"] == clock.now - 30
