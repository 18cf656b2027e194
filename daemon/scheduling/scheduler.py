"""Timed backups: the thread that submits a source's scheduled levels when their cron falls due.

Each source has at most one cron expression per level. The scheduler keeps, for every
(source, level), the epoch of its next run; when the clock reaches it, the source's highest
due level is submitted once (a Sunday 03:00 full swallows the hourly incremental of the same
minute) and every due entry moves on to its next run after *now*. A missed period (suspend,
a long stall) therefore runs once on wake-up, never as a burst. A failing `submit` is logged
and does not stop the thread. The decisions are pure functions (`due_levels`,
`compute_next_runs`); the thread only sleeps and calls them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo

from cairn.daemon.runtime.threads import ServiceThread
from cairn.daemon.scheduling.cron import CronExpr, next_run
from cairn.store.errors import InvalidArgumentError
from cairn.store.model import LEVELS

log = logging.getLogger(__name__)

Submit = Callable[[str, str, str], None]
# Highest first: the order in which a due level wins over the others.
LEVEL_PRIORITY = ("full", "differential", "incremental")
# Upper bound of one sleep, so clock jumps and suspends are noticed within a minute.
MAX_SLEEP = 60.0
REASON = "schedule"


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


def next_wakeup(next_runs: Mapping[str, Mapping[str, float]]) -> float | None:
    """The earliest epoch in `next_runs`, or None when nothing is scheduled."""
    times = [when for levels in next_runs.values() for when in levels.values()]
    return min(times) if times else None


class Scheduler(ServiceThread):
    """Thread that calls submit(source, level, "schedule") whenever a source's cron falls due."""

    def __init__(
        self,
        sources: Mapping[str, Mapping[str, str]],
        submit: Submit,
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
    ) -> None:
        super().__init__(name="scheduler")
        self._submit = submit
        self._clock = clock
        self._tz = tz
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._crons = parse_schedules(sources)
        self._next = compute_next_runs(self._crons, clock(), tz)

    def next_runs(self) -> dict[str, dict[str, float]]:
        """{source: {level: epoch}} of every scheduled level's next run."""
        with self._lock:
            return {source: dict(levels) for source, levels in self._next.items()}

    def reload(self, sources: Mapping[str, Mapping[str, str]]) -> None:
        """Replace all schedules (validated first: on error nothing changes)."""
        crons = parse_schedules(sources)
        with self._lock:
            self._crons = crons
            self._next = compute_next_runs(crons, self._clock(), self._tz)
        self.poke()

    def poke(self) -> None:
        """Make the thread look at the clock now (after a reload, or a clock change in tests)."""
        self._wake.set()

    def request_stop(self) -> None:
        super().request_stop()
        self._wake.set()

    def run_safe(self) -> None:
        while not self.stopping:
            self._run_due()
            with self._lock:
                wakeup = next_wakeup(self._next)
            delay = MAX_SLEEP if wakeup is None else min(MAX_SLEEP, max(0.0, wakeup - self._clock()))
            self._wake.wait(delay)
            self._wake.clear()

    def _run_due(self) -> None:
        now = self._clock()
        with self._lock:
            due = due_levels(self._next, now)
            self._next = advance(self._crons, self._next, now, self._tz)
        for source, level in due.items():
            if self.stopping:
                return
            fields = {"source": source, "level": level}
            log.info("scheduled %s set due for source '%s'", level, source, extra=fields)
            try:
                self._submit(source, level, REASON)
            except Exception as exc:  # a refused submit (busy, shutting down) must not end the schedule
                message = "unable to submit scheduled %s set of source '%s': %s"
                log.error(message, level, source, exc, extra=fields)
