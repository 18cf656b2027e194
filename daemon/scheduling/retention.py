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
run is due; a failed run is logged, shown in status, and the thread goes on. The clock is
injectable (`clock`), and `run_now()` runs at once (tests, operators).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from typing import Any

from cairn.daemon.runtime.durations import format_duration, parse_duration
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
                 tz: tzinfo | None = None) -> None:
        super().__init__(name="retention")
        self._run = run
        self._clock = clock
        self._tz = tz
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._now = threading.Event()
        self._busy = threading.Lock()
        self._expr = CronExpr.parse(cron)
        self._next = epoch_next_run(self._expr, clock(), tz)
        self.last_run = 0.0
        self.last_result = ""
        self.runs = 0

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
            while True:
                started = self._clock()
                try:
                    report = self._run()
                except LockedError as exc:
                    if retry_until is not None and self._clock() + LOCK_RETRY < retry_until and \
                            not self.wait(LOCK_RETRY):
                        log.info("retention waits for the repository: %s", exc.message)
                        continue
                    self._record(started, f"failed: {exc.message}")
                    log.error("scheduled retention failed: %s", exc.message)
                    return
                except CairnError as exc:
                    self._record(started, f"failed: {exc.message}")
                    log.error("scheduled retention failed: %s", exc.message)
                    return
                except Exception as exc:  # the thread must outlive one bad run
                    self._record(started, f"failed: {exc}")
                    log.exception("scheduled retention failed")
                    return
                line = describe(report)
                self._record(started, line)
                log.info("retention and garbage collection done in %s: %s",
                         format_duration(max(0.0, self._clock() - started)), line)
                return

    def _record(self, started: float, result: str) -> None:
        with self._lock:
            self.last_run = started
            self.last_result = result
            self.runs += 1
