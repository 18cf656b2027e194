"""Scheduled retention and garbage collection, and the daemon's reading of retention options.

- `keep_policy(table)` turns a source's `keep = { last = 7, daily = 7, within = "2d", ... }`
  into a store PrunePolicy (durations become seconds here: the store never parses them);
- `parse_option_duration` does the same for a client's `--keep-within` / `--wal-keep`;
- `RetentionRunner` is the thread that runs retention + garbage collection whenever the
  `[repository] gc` cron falls due: `run()` is the service's `run_retention` (each source's
  policy, only this host's sets, then WAL retention and freeing unreferenced data).

What always holds: a due run happens once, however long the daemon slept, and a wall clock
set back moves the next run back with it (as the scheduler's timed sets); a run that finds
the repository locked by a backup waits and tries again until the lock is free or the next
run is due; a failed run is logged, shown in status, and the thread goes on. A run the daemon's
stop ends (the store's prune stops before its next step once the daemon stops, or the stop's
deadline cuts it) is not a failure: it is logged as interrupted by the stop, with the state of
the repository (consistent: garbage collection is crash-safe) and when the next run does the
rest. The last run (time, result) is kept in the health record (`health`), so status shows it
after a restart, and so is the run in progress, so the next start reports one that never ended
(`settle`). The clock is injectable (`clock`), and `run_now()` runs at once (tests, operators).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from typing import Any

from cairn.daemon.runtime.durations import format_duration, parse_duration
from cairn.daemon.runtime.health import GcRun, HealthRecord
from cairn.daemon.runtime.threads import ServiceThread
from cairn.daemon.scheduling.cron import CronExpr
from cairn.daemon.scheduling.scheduler import MAX_SLEEP, epoch_next_run
from cairn.store.errors import CairnError, InvalidArgumentError, LockedError
from cairn.store.maintenance.retention import keeps_nothing
from cairn.store.model import PrunePolicy, PruneReport

log = logging.getLogger(__name__)

KEEP_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "full", "differential", "incremental")
KEEP_KEYS = (*KEEP_COUNTS, "within", "tags")
LOCK_RETRY = 30.0  # seconds between attempts while a backup holds the repository
# What an interrupted run left: said in the log and in status.
CONSISTENT = ("the repository is consistent (garbage collection is crash-safe: what the run did stays done) "
              "and the next run does the rest")


def parse_option_duration(option: str, text: str) -> float:
    """Seconds of a duration given on the command line; InvalidArgumentError naming the option."""
    try:
        return parse_duration(text)
    except InvalidArgumentError:
        raise InvalidArgumentError(f"invalid {option} '{text}': expected a duration like '2d' or '36h'") from None


def keep_policy(table: Mapping[str, Any]) -> PrunePolicy:
    """A source's `keep` table as a PrunePolicy; InvalidArgumentError("<key>: <detail>") if malformed."""
    for key in table:
        if key not in KEEP_KEYS:
            raise InvalidArgumentError(f"{key}: unknown key (expected one of {', '.join(KEEP_KEYS)})")
    fields: dict[str, Any] = {}
    for key in KEEP_COUNTS:
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{key}: expected a number >= 0, got {value!r}")
            fields[f"keep_{key}"] = value
    if "within" in table:
        try:
            fields["keep_within"] = parse_duration(table["within"])
        except InvalidArgumentError:
            raise InvalidArgumentError(f"within: expected a duration like '2d', got {table['within']!r}") from None
    if "tags" in table:
        tags = table["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and t and not any(c.isspace() for c in t)
                                                 for t in tags):
            raise InvalidArgumentError(f"tags: expected a list of tags without spaces, got {tags!r}")
        fields["keep_tags"] = tuple(tags)
    if not fields:
        raise InvalidArgumentError("expected at least one rule (last, daily, within, ...)")
    policy = PrunePolicy(**fields)
    if keeps_nothing(policy):
        raise InvalidArgumentError("every rule is 0: this policy would forget every set of the source "
                                   "(forget sets by name with 'cairn prune --forget ID')")
    return policy


def describe(report: PruneReport) -> str:
    """One line for people about a retention run."""
    text = (f"forgot {len(report.forgotten)} sets, kept {len(report.kept)}; freed "
            f"{report.bytes_freed / 2**20:.1f} MiB ({report.packs_deleted} packs deleted, {report.packs_rewritten} "
            "rewritten)")
    if report.waiting_packs:
        text += f"; {report.waiting_packs} packs ({report.waiting_bytes / 2**20:.1f} MiB) wait for running operations"
    if report.wal_forgotten:
        text += f"; forgot {len(report.wal_forgotten)} WAL files"
    return text


class RetentionRunner(ServiceThread):
    """Thread that calls `run()` whenever the gc cron falls due (see the module docstring)."""

    def __init__(self, cron: str, run: Callable[[], PruneReport], clock: Callable[[], float] = time.time,
                 tz: tzinfo | None = None, health: HealthRecord | None = None) -> None:
        super().__init__(name="retention")
        self._run = run
        self._clock = clock
        self._tz = tz
        self._health = health
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._now = threading.Event()
        self._busy = threading.Lock()
        self._expr = CronExpr.parse(cron)
        self._next = epoch_next_run(self._expr, clock(), tz)
        last = health.gc_last if health is not None else None
        self.last_run = last.time if last is not None else 0.0
        self.last_result = last.result if last is not None else ""
        self.runs = 0
        self._run_started = 0.0  # the start of the run in progress (while _busy is held)
        self._cut = False  # the stop recorded the run in progress as cut short (cut)

    def settle(self) -> None:
        """At start: a last run that did not finish (interrupted by the previous daemon's stop, or
        never ended: killed, the host went down) is logged once, and is what status shows."""
        if self._health is None:
            return
        self._health.settle_gc()
        last = self._health.gc_last
        if last is None or not last.interrupted:
            return
        with self._lock:
            self.last_run, self.last_result = last.time, last.result
        when = datetime.fromtimestamp(last.time, self._tz).strftime("%Y-%m-%d %H:%M:%S")
        log.warning("the last retention and garbage collection run, started %s, did not finish: %s; next run at %s",
                    when, last.result, self._next_text())

    def _next_text(self) -> str:
        return datetime.fromtimestamp(self.next_run(), self._tz).strftime("%Y-%m-%d %H:%M")

    @property
    def schedule(self) -> str:
        return self._expr.text

    def next_run(self) -> float:
        with self._lock:
            return self._next

    def reload(self, cron: str) -> None:
        """Use another cron (validated first: on error nothing changes)."""
        expr = CronExpr.parse(cron)
        with self._lock:
            self._expr = expr
            self._next = epoch_next_run(expr, self._clock(), self._tz)
        self._wake.set()

    def run_now(self) -> str:
        """Run retention + garbage collection in the caller's thread; return the result line."""
        self._attempt(retry_until=None)
        return self.last_result

    def request_stop(self) -> None:
        super().request_stop()
        self._wake.set()

    def run_safe(self) -> None:
        while not self.stopping:
            now = self._clock()
            with self._lock:
                fresh = epoch_next_run(self._expr, now, self._tz)
                back = self._next > fresh  # the clock went back past the run it computed: follow it
                if back:
                    self._next = fresh
                due = self._next <= now
                if due:
                    self._next = epoch_next_run(self._expr, now, self._tz)
                wakeup = self._next
            if back:
                log.warning("the clock went back: next retention run moved to %s",
                            datetime.fromtimestamp(wakeup, self._tz).strftime("%Y-%m-%d %H:%M"))
            if due:
                self._attempt(retry_until=wakeup)
                continue
            self._wake.wait(min(MAX_SLEEP, max(0.0, wakeup - self._clock())))
            self._wake.clear()

    def _attempt(self, retry_until: float | None) -> None:
        """One run; while a backup holds the repository, retry until `retry_until` (None: once)."""
        with self._busy:
            started = self._run_started = self._clock()
            if self._health is not None:
                self._health.gc_begin(started)
            result, interrupted = self._until_done(started, retry_until)
            self._record(started, result, interrupted)

    def _until_done(self, started: float, retry_until: float | None) -> tuple[str, bool]:
        """(the run's result line, whether the daemon's stop interrupted it)."""
        while True:
            try:
                report = self._run()
            except Exception as exc:  # the thread must outlive one bad run
                message = exc.message if isinstance(exc, CairnError) else str(exc)
                if self.stopping:  # the stop ended it (the prune stopped, or the repository closed under it)
                    return self._interrupted(started, "interrupted by the daemon's stop"), True
                if isinstance(exc, LockedError) and retry_until is not None and \
                        self._clock() + LOCK_RETRY < retry_until:
                    log.info("retention waits for the repository: %s", message)
                    if not self.wait(LOCK_RETRY):
                        continue
                    return self._interrupted(started, "interrupted by the daemon's stop"), True
                if isinstance(exc, CairnError):
                    log.error("scheduled retention failed: %s", message)
                else:
                    log.exception("scheduled retention failed")
                return f"failed: {message}", False
            line = describe(report)
            log.info("retention and garbage collection done in %s: %s",
                     format_duration(max(0.0, self._clock() - started)), line)
            return line, False

    def _interrupted(self, started: float, how: str) -> str:
        """The result line of a run the stop ended, logged as a warning (not as a failure)."""
        line = f"{how} after {format_duration(max(0.0, self._clock() - started))}: {CONSISTENT}"
        log.warning("scheduled retention and garbage collection %s; next run at %s", line, self._next_text())
        return line

    def cut(self) -> None:
        """The stop could not wait for the run in progress (its deadline passed in the middle of a
        step, which the exit ends): record it as interrupted, as its own thread would have."""
        started = self.last_run_started
        if started is None:
            return
        self._record(started, self._interrupted(started, "cut short by the daemon's stop at its deadline"), True)
        self._cut = True

    @property
    def last_run_started(self) -> float | None:
        """The start of the run in progress (None: none runs)."""
        return self._run_started if self._busy.locked() else None

    def _record(self, started: float, result: str, interrupted: bool = False) -> None:
        with self._lock:
            if self._cut:  # already recorded by the stop, which did not wait for this run
                return
            self.last_run = started
            self.last_result = result
            self.runs += 1
        if self._health is not None:
            self._health.gc_end(GcRun(started, result, interrupted))
