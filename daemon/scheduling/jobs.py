"""Backup jobs: at most one running backup per source, each in its own thread.

A `BackupJob` carries its cancel Event, its latest progress and, once done, its set or its
error. `JobManager.start_backup` refuses a second backup of a source that is busy with a
`BusyError` naming when the running one started, and refuses everything once shutdown has
begun. Readers (restores, listings) are not jobs: they run alongside in the RPC threads.
Watchers follow a job through `BackupJob.wait_update`, which coalesces progress events, so a
slow client never slows a backup down. A job is done for its watchers only after the manager's
completion hook ran: a client told that its backup ended finds the source's health and metrics
already saying so.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cairn.store.errors import AbortedError, BusyError, CairnError
from cairn.store.model import BackupSet, Progress

log = logging.getLogger(__name__)

RunFn = Callable[[Callable[[Progress], None], threading.Event], BackupSet]
DoneFn = Callable[["BackupJob"], None]


@dataclass(frozen=True)
class JobSnapshot:
    """What a watcher sees of a job at one moment."""

    version: int
    progress: Progress | None
    done: bool


class BackupJob:
    """One backup of one source. Its fields are written by the job thread only."""

    def __init__(self, source: str, level: str, reason: str) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.source = source
        self.level = level
        self.reason = reason
        self.started = time.time()
        self._started_mono = time.monotonic()
        self.cancel = threading.Event()
        self.result: BackupSet | None = None
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._version = 0
        self._progress: Progress | None = None
        self._done = False

    @property
    def done(self) -> bool:
        with self._cond:
            return self._done

    @property
    def progress(self) -> Progress | None:
        with self._cond:
            return self._progress

    def age(self) -> float:
        """Seconds since the job started."""
        return time.monotonic() - self._started_mono

    def publish(self, progress: Progress) -> None:
        """Record the latest progress and wake the watchers."""
        with self._cond:
            self._progress = progress
            self._version += 1
            self._cond.notify_all()

    def finish(self, result: BackupSet | None, error: BaseException | None) -> None:
        with self._cond:
            self.result, self.error = result, error
            self._done = True
            self._version += 1
            self._cond.notify_all()

    def wait_update(self, seen_version: int, timeout: float) -> JobSnapshot:
        """Wait until the job changed after `seen_version` (or timeout) and return its state."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != seen_version, timeout=timeout)
            return JobSnapshot(self._version, self._progress, self._done)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job to end; True if it did."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done, timeout=timeout)


class JobManager:
    """Starts backup jobs, keeps one per source, and cancels them all at shutdown."""

    def __init__(self, on_done: DoneFn | None = None) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, BackupJob] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._on_done = on_done

    def start_backup(self, source: str, level: str, reason: str, run: RunFn) -> BackupJob:
        """Start `run(progress, cancel)` as the backup of `source`; BusyError if one runs."""
        with self._lock:
            if self._closed:
                raise AbortedError("the daemon is shutting down: no new backups are started")
            current = self._running.get(source)
            if current is not None:
                raise BusyError(
                    f"a backup of source '{source}' is already running (started {current.age():.0f}s ago)",
                    hint="wait for it to finish; `cairn status` shows its progress",
                )
            job = BackupJob(source, level, reason)
            self._running[source] = job
            thread = threading.Thread(target=self._run, args=(job, run), name=f"backup-{source}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return job

    def running(self) -> dict[str, BackupJob]:
        with self._lock:
            return dict(self._running)

    def shutdown(self) -> None:
        """Refuse new jobs and ask the running ones to stop."""
        with self._lock:
            self._closed = True
            jobs = list(self._running.values())
        for job in jobs:
            job.cancel.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job thread is alive; False if some still run after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _run(self, job: BackupJob, run: RunFn) -> None:
        result, error = None, None
        log.info("backup of source '%s' started (%s, %s)", job.source, job.level, job.reason)
        try:
            result = run(job.publish, job.cancel)
        except CairnError as exc:
            error = exc
            if isinstance(exc, AbortedError) and self._closed:  # cancelled by shutdown(): say so
                error = AbortedError(f"{exc.message}: the daemon is stopping",
                                     hint="nothing of this set was committed; take it again once cairnd runs")
                # a stop is no failure of the backup: what it left is what any abandoned set leaves
                log.warning("%s backup of source '%s' (%s) interrupted by the daemon's stop: nothing of it was "
                            "committed; the repository is consistent (its new data is freed by the next prune)",
                            job.level, job.source, job.reason)
            else:
                log.error("backup of source '%s' failed: %s", job.source, error.message)
        except BaseException as exc:  # a job thread must never die silently
            error = exc
            log.exception("backup of source '%s' failed unexpectedly", job.source)
        finally:
            with self._lock:
                if self._running.get(job.source) is job:
                    del self._running[job.source]
            job.result, job.error = result, error  # what the hook reads; the job ends after it
        try:
            if result is not None:
                log.info("backup of source '%s' done: set %s (%s)", job.source, result.id[:12], result.level)
            if self._on_done is not None:
                try:
                    self._on_done(job)
                except Exception:
                    log.exception("job completion hook failed")
        finally:
            # Only now do waiters (a client's call) learn that the job ended: what the hook
            # records (the source's health, its metrics) is there before anyone is told.
            job.finish(result, error)
