"""What `cairn status` shows: the daemon, and each source's sets, job, journal, schedule and
quiesce window (the one open now, and one a previous daemon left open that this start thawed).

The shape is typed (`ServiceStatus`: `DaemonState`, `SourceState` with its `JournalView`, the
archive's `ArchiveSnapshot`, `RetentionState`); the gRPC adapter maps it to the wire, field by
field, and nothing reads it by string keys. A scheduled run that waits for its busy source, or
is being taken late, is one of the daemon's warnings (`waiting_text`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from cairn import __version__
from cairn.daemon.databases.postgres import archwatch, walarchive
from cairn.daemon.operations import hostname
from cairn.daemon.operations.part import ServicePart
from cairn.daemon.runtime.config import SourceConfig
from cairn.daemon.runtime.health import Failure
from cairn.daemon.scheduling.jobs import BackupJob
from cairn.daemon.scheduling.scheduler import WaitingRun
from cairn.daemon.windows.quiesce import OpenWindow, WindowRecovery, open_windows
from cairn.store.errors import BackendError
from cairn.store.model import BackupSet

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DaemonState:
    version: str
    pid: int
    started: float
    repository: str
    read_only: bool
    config_path: str
    hostname: str
    warnings: tuple[str, ...] = ()  # what the operator should know or fix (a host name shared, a late set)


@dataclass(frozen=True)
class JournalView:
    """The change journal's state of a source, as status shows it."""

    text: str  # for people: complete, rescan pending: why (summarised), or not tracked (why)
    state: str = ""  # complete, rescan, or empty when the source is not tracked
    reasons: tuple[str, ...] = ()  # every reason (--json's journal_reasons)
    oldest_unprotected_age: float | None = None
    pending_paths: int = 0
    watches: int = 0


@dataclass(frozen=True)
class SourceState:
    name: str
    paths: tuple[str, ...]
    configured: bool
    watch: bool
    journal: JournalView
    last: dict[str, BackupSet]
    running: BackupJob | None
    next_runs: dict[str, float]
    sets: int
    last_failure: Failure | None = None  # daemon/runtime/health.py
    rpo: float | None = None
    last_success: float = 0.0
    host: str = ""  # a source not configured here: the host whose sets these are
    window: OpenWindow | None = None  # its quiesce window open now (daemon/windows/quiesce.py)
    recovered: WindowRecovery | None = None  # a window a previous daemon left open, thawed at this start
    # The RPO against what waits: tracked when the journal follows a source with an rpo; then
    # when the oldest change no committed set holds was seen (None: nothing waits).
    unprotected_tracked: bool = False
    unprotected_since: float | None = None


@dataclass(frozen=True)
class RetentionState:
    """The gc schedule, its next and last run (last_run 0: not run since the daemon started)."""

    schedule: str
    next_run: float
    last_run: float
    last_result: str  # for people: what the last run forgot and freed, or its error
    host: str  # the host whose sets the daemon's retention handles


@dataclass(frozen=True)
class ServiceStatus:
    """Everything `cairn status` shows: the daemon, each source, WAL archiving, retention."""

    daemon: DaemonState
    sources: list[SourceState]
    archive: walarchive.ArchiveSnapshot
    retention: RetentionState | None  # None when gc is not scheduled


def waiting_text(run: WaitingRun) -> str:
    """A scheduled run that waits for its source, or is taken late, for people (one line)."""
    due = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.due))
    head = f"source '{run.source}': the scheduled {run.level} set due {due}"
    if run.started:
        why = "missed while the daemon was down" if run.missed else "it waited for a busy source"
        return f"{head} is being taken late ({why})"
    running = f"the running {run.blocked_by or 'backup'}"
    if run.missed:
        then = f"it is caught up when {running} ends" if run.blocked_by else "it is being caught up"
        return f"{head} was missed while the daemon was down; {then}"
    return f"{head} waits for {running}; it starts when that ends"

T = TypeVar("T")
STORE_WAIT = 10.0  # seconds `cairn status` waits for one read of the object store before showing without it
_reads_lock = threading.Lock()
_reads: dict[tuple[int, str], tuple[Future, float]] = {}  # the store reads of status still in flight, per part and what


def bounded_read(owner: object, what: str, fn: Callable[[], T], wait: float | None = None) -> T:
    """`fn()` (a read of the store), but BackendError once `wait` seconds pass without its answer.

    A stalled store holds a read for as long as the S3 client's timeouts and retries allow (many
    minutes): status must answer before that. The read goes on in a daemon thread; a status
    asked meanwhile waits for that same read instead of starting another, so a stalled store
    costs one thread per kind of read, however many times status is asked. While any read of
    `owner` is already overdue, a read waits no more: one status waits `wait` once, not per read."""
    key = (id(owner), what)
    limit = STORE_WAIT if wait is None else wait
    now = time.monotonic()
    with _reads_lock:
        entry = _reads.get(key)
        if entry is None:
            fut: Future = Future()
            entry = _reads[key] = (fut, now)

            def run() -> None:
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    fut.set_exception(exc)
                finally:
                    with _reads_lock:
                        if _reads.get(key) is entry:
                            del _reads[key]

            threading.Thread(target=run, name=f"status-{what}", daemon=True).start()
        overdue = any(o == id(owner) and now - began >= limit for (o, _), (_, began) in _reads.items())
    try:
        return entry[0].result(timeout=0.0 if overdue else limit)
    except FutureTimeout:
        raise BackendError(f"the repository's object store did not answer within {limit:g}s") from None


def set_status(s: BackupSet) -> str:
    """The one-word status of a committed set: what it records, else 'fuzzy' or 'ok'."""
    status = s.extra.get("status") if isinstance(s.extra, dict) else None
    if isinstance(status, str) and status:
        return status
    return "fuzzy" if s.stats.fuzzy_paths else "ok"


class StatusPart(ServicePart):
    """The daemon's, its sources', WAL archiving's and retention's state, read without side effects."""

    # The scheduler's waiting and late runs ({source: WaitingRun}), set by the daemon when it schedules.
    waiting_runs: Callable[[], Mapping[str, WaitingRun]] | None = None
    # The windows a previous daemon left open that this start thawed ({source: WindowRecovery}).
    recovered_windows: Mapping[str, WindowRecovery] = {}

    def full_status(self) -> ServiceStatus:
        """What `cairn status` shows, in one typed record."""
        daemon, sources = self.status()
        return ServiceStatus(daemon, sources, self.archive_status(), self.retention_status())

    def status(self) -> tuple[DaemonState, list[SourceState]]:
        """The daemon and every source: configured ones first, then those only known from sets."""
        config = self._config
        daemon = DaemonState(
            version=__version__,
            pid=os.getpid(),
            started=self._started,
            repository=config.repository.path,
            read_only=config.daemon.read_only,
            config_path=config.path or "",
            hostname=self._hostname,
        )
        warnings: list[str] = []
        try:
            sets = bounded_read(self, "sets", self.repo.list_sets)
        except BackendError as exc:  # the store is down: what the daemon knows itself is still shown
            sets = []
            warnings.append(f"{exc.message}: the repository's sets are not shown")
        warnings += hostname.host_warnings(sets, self._hostname, self._machine_id, self._boot_id, time.time())
        warnings += self._waiting_texts()
        problem = self.state_room.problem() if self.state_room is not None else None
        if problem is not None:
            warnings.append(f"{problem}: the change journal, quiesce windows, dumps into a directory and "
                            "index repairs wait until there is room; sets walk their sources, restores and reads work")
        if warnings:
            daemon = replace(daemon, warnings=tuple(warnings))
        running = self.jobs.running()
        next_runs = self._collect_next_runs()
        configured = {s.name: s for s in config.sources}
        windows = open_windows(config.daemon.state_dir)
        # a configured source is this host's (other hosts sharing the repository may use its
        # name); a source only known from sets is shown once per host that took them
        groups: list[tuple[str, str]] = [(s.name, self._hostname) for s in config.sources]
        groups += sorted({(s.source, s.hostname) for s in sets if s.source not in configured},
                         key=lambda g: (g[0], g[1] != self._hostname, g[1]))
        states = []
        for name, host in groups:
            own = [s for s in sets if s.source == name and s.hostname == host]
            src = configured.get(name)
            states.append(
                SourceState(
                    name=name,
                    paths=src.paths if src else (own[-1].paths if own else ()),
                    configured=src is not None,
                    watch=bool(src and src.watch),
                    journal=self._journal_view(src),
                    last={s.level: s for s in own},  # oldest first, so the latest per level wins
                    running=running.get(name) if src else None,
                    next_runs=next_runs.get(name, {}) if src else {},
                    sets=len(own),
                    last_failure=self.health.failure(name) if src or host == self._hostname else None,
                    rpo=src.rpo if src else None,
                    last_success=max((s.time_end for s in own if set_status(s) != "failed"), default=0.0),
                    host="" if src else host,
                    window=windows.get(name) if src else None,
                    recovered=self.recovered_windows.get(name) if src else None,
                    **self._unprotected(src),
                )
            )
        return daemon, states

    def _unprotected(self, src: SourceConfig | None) -> dict[str, Any]:
        """What the RPO of a configured source is measured against: the change journal's oldest
        change that no committed set holds (the one the RPO keeper takes sets for), when the
        journal follows the source; nothing otherwise (status then measures the last success)."""
        if src is None or not src.rpo or not src.watch or self.tracker is None:
            return {}
        try:
            since = self.tracker.oldest_unprotected(src.name)
        except Exception:
            log.exception("unable to read the change journal state of source '%s'", src.name)
            return {}
        return {"unprotected_tracked": True, "unprotected_since": since}

    def archive_status(self) -> walarchive.ArchiveSnapshot:
        """WAL archiving health: this daemon's pushes, the repository, and each server's archiver."""
        try:
            entries = bounded_read(self, "wal", self.repo.wal_entries)
        except BackendError:  # the store is down (status warns of it): this daemon's own view only
            entries = []
        snap = self.archive.snapshot([name for _, name in entries])
        snap.namespaces = len({ns for ns, _ in entries if ns})
        if not snap.last_time and snap.last_segment and snap.last_segment == self.health.wal_segment:
            snap.last_time = self.health.wal_time  # archived before this daemon started
        for db in self._config.databases:
            if db.kind != "postgres":
                continue  # dump engines archive no WAL
            info = self.archiver_view(db, set(entries))
            if info.system_id:
                info.namespace_segments = sum(1 for ns, n in entries
                                              if ns == info.system_id and walarchive.SEGMENT_RE.match(n))
            snap.databases.append(info)
        return snap

    def archiver_view(self, db: Any, entries: set[tuple[str, str]] | None = None) -> walarchive.DatabaseArchive:
        """A PostgreSQL database's archiver as its server sees it (walarchive.database_archiver), whether
        its archive_command reaches this repository, and since when its oldest finished segment
        waits (archwatch.py); `entries` are the repository's WAL files when already listed."""
        info = walarchive.database_archiver(db)
        if info.error:
            return info

        def in_repository(namespace: str, name: str) -> bool:
            if entries is not None:
                return (namespace, name) in entries
            return self.archiver_clocks.found(namespace, name, lambda: name in bounded_read(
                self, f"wal-{namespace}", lambda: self.repo.list_wal(namespace, flat=False)))

        info = archwatch.judge(info, in_repository, archwatch.Listening.of(self._config.daemon))
        return self.archiver_clocks.observe(info)

    def retention_status(self) -> RetentionState | None:
        """The gc schedule, its next and last run, for status (None when not scheduled)."""
        runner = self.retention
        if runner is None:
            return None
        return RetentionState(schedule=runner.schedule, next_run=runner.next_run(), last_run=runner.last_run,
                              last_result=runner.last_result, host=self._hostname)

    def _journal_view(self, src: SourceConfig | None) -> JournalView:
        """The change journal's state of a configured source."""
        if src is None:
            return JournalView("")
        if self.tracker is None and src.watch and self.journal_waiting is not None:
            why = f"change journal not started: {self.journal_waiting}"
            return JournalView(f"rescan pending ({why}): sets walk and compare with the base", "rescan", (why,))
        if self.tracker is None or not src.watch:
            why = "read-only daemon" if self._config.daemon.read_only else "watch = false"
            return JournalView(f"not tracked ({why}): sets walk and compare with the base")
        try:
            st = self.tracker.status(src.name)
        except Exception:
            log.exception("unable to read the change journal state of source '%s'", src.name)
            return JournalView("unknown (the change journal could not be read)")
        # The summary (a cause of many directories names a few); the reasons carry every one.
        text = "complete" if st.state == "complete" else "rescan pending: " + "; ".join(st.summary)
        return JournalView(text, st.state, st.reasons, st.oldest_unprotected_age, st.pending_paths, st.watches)

    def _waiting_texts(self) -> list[str]:
        """One line per scheduled run that waits for its source or is being taken late."""
        if self.waiting_runs is None:
            return []
        try:
            runs = self.waiting_runs()
        except Exception:
            log.exception("unable to read the waiting scheduled runs")
            return []
        return [waiting_text(run) for _, run in sorted(runs.items())]

    def _collect_next_runs(self) -> dict[str, dict[str, float]]:
        """The scheduler's next runs as {source: {level: epoch seconds}}."""
        if self._next_runs is None:
            return {}
        try:
            raw = self._next_runs() or {}
        except Exception:
            log.exception("unable to compute next scheduled runs")
            return {}
        out: dict[str, dict[str, float]] = {}
        for source, levels in raw.items():
            for level, when in (levels or {}).items():
                if isinstance(when, datetime):
                    out.setdefault(source, {})[level] = when.timestamp()
                elif isinstance(when, int | float):
                    out.setdefault(source, {})[level] = float(when)
        return out
