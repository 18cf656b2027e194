"""Timed backups: the thread that submits a source's scheduled levels when their cron falls due.

Each source has at most one cron expression per level. The scheduler keeps, for every
(source, level), the epoch of its next run; when the clock reaches it, every due entry moves
on to its next run after *now* and the source gets a run that stands for the latest due time
of each due level (`due_runs`). A missed period (suspend, a long stall) therefore runs once on
wake-up, never as a burst. A wall clock set back keeps the schedule: a next run later than
the cron's first run after *now* moves back to it (`rewound`, logged once per jump), and the
record of handled runs forgets times later than *now*, so a stop after the jump is caught up.

What always holds:
- A source has at most one run waiting (`WaitingRun`): runs that fall due while one waits join
  it, and it takes the highest level among them (a Sunday 03:00 full swallows the hourly
  incremental of the same minute; a lower level never demotes it, `merge_waiting`).
- A run that finds its source busy (any backup of it running: manual, RPO, an earlier
  scheduled one) is not dropped: it waits, with one warning in the log and a line in
  `cairn status`, and is submitted once the source is free. A run refused because another
  backup took the source between the look and the submit keeps waiting too.
- Every run submitted (or dropped by a failing `submit`, which is logged and does not stop the
  thread) is recorded as handled, per level, in `<state_dir>/schedule.json` (written
  atomically). At start, a run whose minute passed while the daemon was stopped is caught up
  once: only the latest missed run per (source, level), and only for levels the record knew
  (`missed_runs`); a source or level never seen before is recorded from now and has nothing
  to catch up. An unreadable record is logged and started afresh. A record that cannot be
  saved (a full state directory) is one warning naming the directory and the reason, again
  only when the reason changes or after UNSAVED_REPEAT seconds, and one line once a save works
  again; the schedule runs on meanwhile. A run still waiting when the
  daemon stops (or refused because it stops) is not recorded, so the next start catches it up;
  nor is one whose backup the stop cancelled (`interrupted`: its record goes back to what it
  was before that run started). A run's backup that has not ended is in the record too
  (`taken`: what the record held before that run), until the thread sees it end (it looks every
  WAIT_POLL seconds while one runs): a daemon killed meanwhile (SIGKILL, a crash, power loss)
  leaves it there, and the next start puts those values back, so the run is caught up like one
  the stop cancelled (a set that ended in the instant before the kill may so be taken twice,
  never not at all).
- A late run (one that waited, or a catch-up) stays visible as "being taken late" until the
  backup it started ends.

The decisions are pure functions (`due_runs`, `merge_waiting`, `missed_runs`,
`compute_next_runs`); the thread only sleeps, looks whether a source is busy and submits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Protocol

from cairn.daemon.runtime.health import UNSAVED_REPEAT
from cairn.daemon.runtime.threads import ServiceThread
from cairn.daemon.scheduling.cron import CronExpr, next_run, previous_run
from cairn.fsio.durable import write_atomic
from cairn.store.errors import InvalidArgumentError
from cairn.store.model import LEVELS

log = logging.getLogger(__name__)

Submit = Callable[[str, str, str], None]
# Highest first: the order in which a due level wins over the others.
LEVEL_PRIORITY = ("full", "differential", "incremental")
# Upper bound of one sleep, so clock jumps and suspends are noticed within a minute.
MAX_SLEEP = 60.0
# While a run waits for a busy source, how often the thread looks whether the source is free.
WAIT_POLL = 1.0
# How long `waiting()` waits for a submit in progress before it answers with what it knows.
LOOK_TIMEOUT = 5.0
REASON = "schedule"
# The record of handled runs, in the daemon's state directory.
STATE_FILE = "schedule.json"

Handled = dict[str, dict[str, float]]
Before = dict[str, float | None]  # level -> what the record held before a run (None: nothing)


class RunningJob(Protocol):
    """What the scheduler reads of a running backup (a BackupJob)."""

    level: str
    reason: str

    def age(self) -> float: ...


Running = Callable[[str], RunningJob | None]


@dataclass(frozen=True)
class WaitingRun:
    """A scheduled run of a source that has not started yet (or started late, `started`)."""

    source: str
    level: str  # the level it takes: the highest of `covers`
    due: float  # the epoch that level fell due (its latest cron minute)
    since: float  # when it began to wait
    covers: tuple[tuple[str, float], ...]  # (level, latest due epoch) of every level it stands for, highest first
    missed: bool = False  # it fell due while the daemon was down (a catch-up)
    blocked_by: str = ""  # the running backup it waits for, "incremental backup (client)"; "" before a look
    started: bool = False  # submitted: the late set is being taken


def parse_schedules(schedules: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, CronExpr]]:
    """Parse {source: {level: cron text}}; raise InvalidArgumentError for a bad level or cron."""
    parsed: dict[str, dict[str, CronExpr]] = {}
    for source, levels in schedules.items():
        parsed[source] = {}
        for level, text in levels.items():
            if level not in LEVELS:
                raise InvalidArgumentError(
                    f"unknown level '{level}' in the schedule of source '{source}': "
                    "expected one of full, differential, incremental"
                )
            parsed[source][level] = text if isinstance(text, CronExpr) else CronExpr.parse(text)
    return parsed


def epoch_next_run(expr: CronExpr, now: float, tz: tzinfo | None = None) -> float:
    """The epoch of the first run of `expr` strictly after epoch `now` (local time unless tz)."""
    return next_run(expr, datetime.fromtimestamp(now, tz)).timestamp()


def epoch_previous_run(expr: CronExpr, now: float, tz: tzinfo | None = None) -> float | None:
    """The epoch of the latest run of `expr` at or before epoch `now` (None: none found)."""
    found = previous_run(expr, datetime.fromtimestamp(now, tz))
    return found.timestamp() if found is not None else None


def compute_next_runs(
    crons: Mapping[str, Mapping[str, CronExpr]], now: float, tz: tzinfo | None = None
) -> dict[str, dict[str, float]]:
    """{source: {level: epoch of the next run after now}} for every scheduled level."""
    return {
        source: {level: epoch_next_run(expr, now, tz) for level, expr in levels.items()}
        for source, levels in crons.items()
    }


def due_levels(next_runs: Mapping[str, Mapping[str, float]], now: float) -> dict[str, str]:
    """{source: level} of the sources with a run due at `now`, keeping only the highest level."""
    due: dict[str, str] = {}
    for source, levels in next_runs.items():
        for level in LEVEL_PRIORITY:
            if level in levels and levels[level] <= now:
                due[source] = level
                break
    return due


def due_runs(
    crons: Mapping[str, Mapping[str, CronExpr]],
    next_runs: Mapping[str, Mapping[str, float]],
    now: float,
    tz: tzinfo | None = None,
) -> dict[str, dict[str, float]]:
    """{source: {level: epoch}} of every entry due at `now`, each at its latest run at or before
    `now` (however many of its periods passed since its next run)."""
    due: dict[str, dict[str, float]] = {}
    for source, levels in next_runs.items():
        for level, when in levels.items():
            if when <= now:
                latest = epoch_previous_run(crons[source][level], now, tz)
                due.setdefault(source, {})[level] = latest if latest is not None and latest >= when else when
    return due


def advance(
    crons: Mapping[str, Mapping[str, CronExpr]],
    next_runs: Mapping[str, Mapping[str, float]],
    now: float,
    tz: tzinfo | None = None,
) -> dict[str, dict[str, float]]:
    """Move every entry due at `now` to its next run after `now`; leave the others alone."""
    result: dict[str, dict[str, float]] = {}
    for source, levels in next_runs.items():
        result[source] = {
            level: epoch_next_run(crons[source][level], now, tz) if when <= now else when
            for level, when in levels.items()
        }
    return result


def rewound(
    crons: Mapping[str, Mapping[str, CronExpr]],
    next_runs: Mapping[str, Mapping[str, float]],
    now: float,
    tz: tzinfo | None = None,
) -> dict[str, dict[str, float]]:
    """{source: {level: epoch}} of the entries whose next run lies beyond the first run after
    `now`, each moved to that run. A next run computed before `now` is either due or the first
    run after `now`; one later than that was computed at a time after `now`: the wall clock went
    back (an NTP correction, a clock set by hand), and without this it would wait out the jump."""
    moved: dict[str, dict[str, float]] = {}
    for source, levels in next_runs.items():
        for level, when in levels.items():
            if when > now:
                fresh = epoch_next_run(crons[source][level], now, tz)
                if fresh < when:
                    moved.setdefault(source, {})[level] = fresh
    return moved


def next_wakeup(next_runs: Mapping[str, Mapping[str, float]]) -> float | None:
    """The earliest epoch in `next_runs`, or None when nothing is scheduled."""
    times = [when for levels in next_runs.values() for when in levels.values()]
    return min(times) if times else None


def soonest_runs(next_runs: Mapping[str, Mapping[str, float]]) -> tuple[float, dict[str, str]] | None:
    """(epoch, {source: level}) of the earliest scheduled run, the highest level per source due
    then; None when nothing is scheduled."""
    when = next_wakeup(next_runs)
    return None if when is None else (when, due_levels(next_runs, when))


def _highest(levels: Mapping[str, float]) -> str:
    return next(level for level in LEVEL_PRIORITY if level in levels)


def _ordered(levels: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple((level, levels[level]) for level in LEVEL_PRIORITY if level in levels)


def merge_waiting(
    run: WaitingRun | None, source: str, dues: Mapping[str, float], now: float, missed: bool = False
) -> WaitingRun:
    """The waiting run of `source` once the runs `dues` ({level: epoch}) fell due at `now`.

    One run per source: each level keeps its latest due time, and the run takes the highest
    level (a lower level joins without demoting it). `missed` marks runs found at start; it
    sticks only while the run's own level and due time are the missed ones."""
    covers = dict(run.covers) if run is not None else {}
    for level, when in dues.items():
        covers[level] = max(when, covers.get(level, when))
    level = _highest(covers)
    if run is None:
        return WaitingRun(source, level, covers[level], now, _ordered(covers), missed=missed)
    moved = level != run.level or covers[level] != run.due
    return replace(run, level=level, due=covers[level], covers=_ordered(covers),
                   missed=missed if moved else run.missed)


def missed_runs(
    crons: Mapping[str, Mapping[str, CronExpr]], handled: Mapping[str, Mapping[str, float]], now: float,
    tz: tzinfo | None = None,
) -> dict[str, dict[str, float]]:
    """{source: {level: epoch}} of the runs missed before `now`: per (source, level) only its
    latest run at or before `now`, and only when `handled` records the level and that run is
    later than what was handled at this level or a higher one (a full handled at 03:00 covers
    the incremental of 03:00). A source or level `handled` does not know has nothing missed."""
    missed: dict[str, dict[str, float]] = {}
    for source, levels in crons.items():
        seen = handled.get(source, {})
        for level, expr in levels.items():
            if level not in seen:
                continue
            latest = epoch_previous_run(expr, now, tz)
            if latest is None:
                continue
            at_or_above = LEVEL_PRIORITY[: LEVEL_PRIORITY.index(level) + 1]
            if any(seen.get(other, -math.inf) >= latest for other in at_or_above):
                continue
            missed.setdefault(source, {})[level] = latest
    return missed


def _known(crons: Mapping[str, Mapping[str, CronExpr]], handled: Handled, now: float) -> Handled:
    """The record for the scheduled levels only: what `handled` knows, `now` for the others."""
    return {source: {level: handled.get(source, {}).get(level, now) for level in levels}
            for source, levels in crons.items() if levels}


def _clock_text(epoch: float, tz: tzinfo | None) -> str:
    return datetime.fromtimestamp(epoch, tz).strftime("%Y-%m-%d %H:%M")


def _waited_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f}h"


def _no_job(source: str) -> RunningJob | None:
    return None


@dataclass(frozen=True)
class _Unsaved:
    """Saves of the record failing since the last one that worked (for one line, not one each)."""

    reason: str  # why the last line said they fail: "no space left on device"
    said: float  # monotonic time of that line
    since: int  # failures since that line
    total: int  # failures since the last save that worked


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Scheduler(ServiceThread):
    """Thread that calls submit(source, level, "schedule") whenever a source's cron falls due,
    once the source is free (`running(source)`: its running backup, or None)."""

    def __init__(
        self,
        sources: Mapping[str, Mapping[str, str]],
        submit: Submit,
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
        running: Running | None = None,
        state_dir: str | None = None,
    ) -> None:
        super().__init__(name="scheduler")
        self._submit = submit
        self._clock = clock
        self._tz = tz
        self._running: Running = running or _no_job
        self._path = os.path.join(state_dir, STATE_FILE) if state_dir else None
        self._lock = threading.Lock()  # guards the fields below; never held across a call out
        self._turn = threading.Lock()  # one start attempt (look, submit, record) or reload at a time
        self._wake = threading.Event()
        self._crons = parse_schedules(sources)
        now = clock()
        self._next = compute_next_runs(self._crons, now, tz)
        self._waiting: dict[str, WaitingRun] = {}
        self._jobs: dict[str, RunningJob] = {}  # source -> the backup a late run started
        # source -> (the backup its last scheduled run started, the handled times that run replaced)
        self._taken: dict[str, tuple[RunningJob, Before]] = {}
        self._unsaved_end = False  # a taken run ended since the record was last written
        self._announced: dict[str, str] = {}  # source -> the level whose wait was logged
        self._saving = threading.Lock()  # one save of the record at a time, with its log lines
        self._failed: _Unsaved | None = None  # the saves failing since the last one that worked
        handled, taken = self._load()
        for source, before in sorted(taken.items()):  # runs whose backup a dead daemon was taking
            levels = handled.setdefault(source, {})
            for level, when in before.items():
                if when is None:
                    levels.pop(level, None)
                else:
                    levels[level] = when
            log.info("scheduled set of source '%s' was being taken when the previous daemon died: it counts as "
                     "missed", source, extra={"source": source})
        for source, dues in sorted(missed_runs(self._crons, handled, now, tz).items()):
            run = merge_waiting(None, source, dues, now, missed=True)
            self._waiting[source] = run
            log.warning("scheduled %s set of source '%s' due %s was missed while the daemon was down; "
                        "it is caught up now", run.level, source, _clock_text(run.due, tz),
                        extra={"source": source, "level": run.level})
        self._handled = _known(self._crons, handled, now)
        self._save()

    # ---- what others read ----

    def next_runs(self) -> dict[str, dict[str, float]]:
        """{source: {level: epoch}} of every scheduled level's next run."""
        with self._lock:
            return {source: dict(levels) for source, levels in self._next.items()}

    def waiting(self) -> dict[str, WaitingRun]:
        """{source: run} of the runs waiting for their source, and of the late runs whose backup
        still runs. A submit in progress is waited for (up to LOOK_TIMEOUT)."""
        got = self._turn.acquire(timeout=LOOK_TIMEOUT)
        try:
            self._forget_ended()
            with self._lock:
                return dict(self._waiting)
        finally:
            if got:
                self._turn.release()

    # ---- control ----

    def reload(self, sources: Mapping[str, Mapping[str, str]]) -> None:
        """Replace all schedules (validated first: on error nothing changes). A waiting run keeps
        the levels still scheduled (and goes when none is); a late run already taken stays."""
        crons = parse_schedules(sources)
        with self._turn:
            now = self._clock()
            with self._lock:
                self._crons = crons
                self._next = compute_next_runs(crons, now, self._tz)
                for source, run in list(self._waiting.items()):
                    if run.started:
                        continue
                    kept = {level: when for level, when in run.covers if level in crons.get(source, {})}
                    if not kept:
                        del self._waiting[source]
                        self._announced.pop(source, None)
                        continue
                    fresh = merge_waiting(None, source, kept, run.since)
                    self._waiting[source] = replace(fresh, missed=run.missed, blocked_by=run.blocked_by)
                    if source in self._announced:
                        self._announced[source] = fresh.level
                self._handled = _known(crons, self._handled, now)
            self._save()
        self.poke()

    def poke(self) -> None:
        """Make the thread look at the clock now (after a reload, or a clock change in tests)."""
        self._wake.set()

    def request_stop(self) -> None:
        super().request_stop()
        self._wake.set()

    # ---- the thread ----

    def run_safe(self) -> None:
        while not self.stopping:
            self._run_due()
            with self._lock:
                wakeup = next_wakeup(self._next)
                waits = any(not run.started for run in self._waiting.values())
                taking = bool(self._taken)
            delay = MAX_SLEEP if wakeup is None else min(MAX_SLEEP, max(0.0, wakeup - self._clock()))
            if waits or taking:  # a busy source is looked at again soon, a scheduled set's end noticed
                delay = min(delay, WAIT_POLL)
            self._wake.wait(delay)
            self._wake.clear()

    def _run_due(self) -> None:
        with self._turn:
            self._forget_ended()
        now = self._clock()
        with self._lock:
            back = rewound(self._crons, self._next, now, self._tz)
            for source, levels in back.items():
                self._next[source].update(levels)
            if back:  # runs handled "later than now" would hide the next start's catch-up for as long as the jump
                self._handled = {source: {level: min(when, now) for level, when in levels.items()}
                                 for source, levels in self._handled.items()}
            due = due_runs(self._crons, self._next, now, self._tz)
            self._next = advance(self._crons, self._next, now, self._tz)
            for source, dues in due.items():
                run = self._waiting.get(source)
                if run is not None and run.started:  # the late set is still being taken: a new run waits for it
                    run = None
                    self._jobs.pop(source, None)
                    self._announced.pop(source, None)
                self._waiting[source] = merge_waiting(run, source, dues, now)
            sources = sorted(source for source, run in self._waiting.items() if not run.started)
        if back:
            self._save()
            log.warning("the clock went back: next scheduled runs moved to %s",
                        ", ".join(f"{level} of '{source}' at {_clock_text(when, self._tz)}"
                                  for source, levels in sorted(back.items()) for level, when in sorted(levels.items())))
        for source in sources:
            if self.stopping:
                return
            self._start(source)
        with self._lock:
            unsaved = self._unsaved_end
        if unsaved:  # a scheduled set ended and no run since wrote the record
            self._save()

    def _start(self, source: str) -> None:
        """Submit the waiting run of `source` unless the source is busy; record it as handled."""
        with self._turn:
            with self._lock:
                run = self._waiting.get(source)
            if run is None or run.started or self.stopping:
                return
            job = self._running(source)
            if job is not None:
                self._blocked(run, job)
                return
            fields = {"source": source, "level": run.level}
            late = run.missed or bool(run.blocked_by)
            if run.blocked_by:
                log.warning("scheduled %s set of source '%s' due %s starts now: the source is free after %s of "
                            "waiting", run.level, source, _clock_text(run.due, self._tz),
                            _waited_text(self._clock() - run.since), extra=fields)
            else:
                log.info("scheduled %s set due for source '%s'", run.level, source, extra=fields)
            try:
                self._submit(source, run.level, REASON)
            except Exception as exc:  # a failing submit must not end the schedule: the run is dropped
                log.error("unable to submit scheduled %s set of source '%s': %s", run.level, source, exc,
                          extra=fields)
                job = None
            else:
                job = self._running(source)
                if job is not None and job.reason != REASON:  # another backup took the source first
                    self._blocked(run, job)
                    return
                if job is None and self.stopping:  # refused because the daemon stops: the next start catches it up
                    return
            with self._lock:
                self._waiting.pop(source, None)
                self._announced.pop(source, None)
                if late and job is not None:
                    self._waiting[source] = replace(run, started=True)
                    self._jobs[source] = job
                handled = self._handled.setdefault(source, {})
                before = {level: handled.get(level) for level, _ in run.covers if level in self._crons.get(source, {})}
                for level, when in run.covers:
                    if level in self._crons.get(source, {}):
                        handled[level] = max(when, handled.get(level, when))
                if job is not None:
                    self._taken[source] = (job, before)
            self._save()

    def interrupted(self, cancelled: Callable[[RunningJob], bool]) -> list[str]:
        """At stop, once the backups have ended: the scheduled runs whose backup the stop
        cancelled (`cancelled(job)`) are recorded as not handled again, so the next start
        catches them up (`missed_runs`); the others stay handled. Either way the record no longer
        holds them as being taken. Returns the sources of the cancelled ones."""
        out = []
        with self._lock:
            taken, self._taken = self._taken, {}
            for source, (job, before) in sorted(taken.items()):
                if not cancelled(job):
                    continue
                handled = self._handled.setdefault(source, {})
                for level, when in before.items():
                    if when is None:
                        handled.pop(level, None)
                    else:
                        handled[level] = when
                out.append(source)
        if taken:  # the record forgets them all: done, or handled again when the stop cut them
            self._save()
        for source in out:
            log.info("scheduled %s set of source '%s' was interrupted by the daemon's stop: the next start catches "
                     "it up", taken[source][0].level, source, extra={"source": source})
        return out

    def _blocked(self, run: WaitingRun, job: RunningJob) -> None:
        """`run` found its source busy with `job`: it waits (logged once per level it takes)."""
        what = f"{job.level} backup ({job.reason})"
        with self._lock:
            self._waiting[run.source] = replace(run, blocked_by=what)
            announce = self._announced.get(run.source) != run.level
            self._announced[run.source] = run.level
        if not announce:
            return
        when = _clock_text(run.due, self._tz)
        then = "it is caught up when that ends" if run.missed else "it starts when that ends"
        missed = " (missed while the daemon was down)" if run.missed else ""
        log.warning("scheduled %s set of source '%s' due %s%s waits for the running %s, started %.0fs ago; %s",
                    run.level, run.source, when, missed, what, job.age(), then,
                    extra={"source": run.source, "level": run.level})

    def _forget_ended(self) -> None:
        """Drop the late runs whose backup has ended (a run changed meanwhile is left alone), and
        the record's note of every scheduled backup that ended (not while the daemon stops:
        `interrupted` then decides what a cancelled one leaves)."""
        with self._lock:
            started = {source: self._jobs.get(source) for source, run in self._waiting.items() if run.started}
            taken = {source: job for source, (job, _) in self._taken.items()}
        over = [source for source, job in taken.items() if self._running(source) is not job]
        if over:
            with self._lock:
                gone = [source for source in over if not self.stopping and source in self._taken
                        and self._taken[source][0] is taken[source]]
                for source in gone:
                    del self._taken[source]
                self._unsaved_end = self._unsaved_end or bool(gone)
        ended = [source for source, job in started.items() if job is None or self._running(source) is not job]
        if not ended:
            return
        with self._lock:
            for source in ended:
                run = self._waiting.get(source)
                if run is not None and run.started and self._jobs.get(source) is started[source]:
                    del self._waiting[source]
                    self._jobs.pop(source, None)

    # ---- the record of handled runs ----

    def _load(self) -> tuple[Handled, dict[str, Before]]:
        """The handled runs `<state_dir>/schedule.json` records, and the runs whose backup had
        not ended when it was last written (`taken`); ({}, {}) when there is none or it is
        unreadable (a `taken` that is not one is left out alone)."""
        if self._path is None:
            return {}, {}
        try:
            with open(self._path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError) as exc:
            self._unreadable(str(exc))
            return {}, {}
        handled = data.get("handled") if isinstance(data, dict) else None
        if not isinstance(handled, dict) or not all(
            isinstance(levels, dict) and all(_is_time(when) for when in levels.values())
            for levels in handled.values()
        ):
            self._unreadable("not a record of handled runs")
            return {}, {}
        taken = data.get("taken") or {}
        if not isinstance(taken, dict) or not all(
            isinstance(levels, dict) and all(when is None or _is_time(when) for when in levels.values())
            for levels in taken.values()
        ):
            log.warning("the schedule record '%s' holds no readable list of the scheduled sets being taken; a set a "
                        "killed daemon was taking is not caught up this time", self._path)
            taken = {}
        return ({source: {level: float(when) for level, when in levels.items()} for source, levels in handled.items()},
                {source: {level: None if when is None else float(when) for level, when in levels.items()}
                 for source, levels in taken.items()})

    def _unreadable(self, why: str) -> None:
        log.warning("unable to read the schedule record '%s': %s; it starts afresh (runs missed while the daemon "
                    "was down are not caught up this time)", self._path, why)

    def _save(self) -> None:
        """Write the record atomically. A failure is logged (`_unsaved`) and the schedule goes on
        without it: a later save writes all of it, and until then a restart may catch up a run
        that was already taken."""
        if self._path is None:
            return
        with self._saving:
            with self._lock:
                taken = {source: before for source, (_, before) in self._taken.items()}
                self._unsaved_end = False
                data = json.dumps({"handled": self._handled, "taken": taken}, sort_keys=True, indent=1) + "\n"
            try:
                write_atomic(self._path, data.encode("utf-8"))
            except OSError as exc:
                self._unsaved(os.strerror(exc.errno).lower() if exc.errno else str(exc))
                return
            if self._failed is not None:
                log.info("the schedule state in '%s' is saved again (%d saves had failed)",
                         os.path.dirname(self._path), self._failed.total)
                self._failed = None

    def _unsaved(self, reason: str) -> None:
        """Log a failed save once, then again only when the reason changes or every
        UNSAVED_REPEAT seconds with the count since: with the state directory full every run
        handled fails to save, and a line for each buries the log."""
        now = time.monotonic()
        failed = self._failed
        if failed is not None and failed.reason == reason and now - failed.said < UNSAVED_REPEAT:
            self._failed = replace(failed, since=failed.since + 1, total=failed.total + 1)
            return
        again = ""
        if failed is not None and failed.since:
            again = f" ({failed.since} more failed saves since the last line)"
        log.warning("unable to save the schedule state in '%s': %s%s; said again in %d minutes or when the reason "
                    "changes", os.path.dirname(self._path or ""), reason, again, UNSAVED_REPEAT // 60)
        self._failed = _Unsaved(reason, now, 0, failed.total + 1 if failed is not None else 1)
