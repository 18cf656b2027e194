"""The daemon's service core: the domain operations that the RPC layer exposes.

`CairnService` holds the current `Config`, the open `Repository` and the `JobManager`, and
speaks only domain types (BackupSet, TreeEntry, Progress, ...); it knows nothing of gRPC.
What always holds: a backup runs as a job (one per source, in its own thread); reads run in
the caller's thread alongside it; a read-only daemon refuses every write with
FAILED_PRECONDITION; the configuration is swapped whole on reload, never edited in place.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cairn import __version__, walnames
from cairn.daemon import capture, checkdb, restoredb, retention, skip, walarchive
from cairn.daemon.config import Config, SourceConfig
from cairn.daemon.databases.restore import DumpRestoreResult, restore_dump
from cairn.daemon.health import Failure, HealthRecord
from cairn.daemon.jobs import BackupJob, JobManager
from cairn.fsio.records import Data, EntryMeta, Record
from cairn.store.crypto import Secret
from cairn.store.errors import (
    AbortedError,
    BusyError,
    CairnError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from cairn.store.model import (
    BackupRequest,
    BackupSet,
    ChangeHint,
    CheckReport,
    Progress,
    PrunePolicy,
    PruneReport,
    SetDiff,
    TreeEntry,
    check_level,
)
from cairn.store.repository import Repository
from cairn.store.restore import RestoreFilter

log = logging.getLogger(__name__)

DEFAULT_LEVEL = "incremental"
ProgressFn = Callable[[Progress], None]
NextRunsFn = Callable[[], Any]


@dataclass(frozen=True)
class DaemonState:
    version: str
    pid: int
    started: float
    repository: str
    read_only: bool
    config_path: str
    hostname: str


@dataclass(frozen=True)
class SourceState:
    name: str
    paths: tuple[str, ...]
    configured: bool
    watch: bool
    journal: str
    last: dict[str, BackupSet]
    running: BackupJob | None
    next_runs: dict[str, float]
    sets: int
    journal_state: str = ""  # complete, rescan, or empty when the source is not tracked
    journal_reasons: tuple[str, ...] = ()
    oldest_unprotected_age: float | None = None
    pending_paths: int = 0
    watches: int = 0
    last_failure: Failure | None = None  # daemon/health.py
    rpo: float | None = None
    last_success: float = 0.0


def set_status(s: BackupSet) -> str:
    """The one-word status of a committed set: what it records, else 'fuzzy' or 'ok'."""
    status = s.extra.get("status") if isinstance(s.extra, dict) else None
    if isinstance(status, str) and status:
        return status
    return "fuzzy" if s.stats.fuzzy_paths else "ok"


class CairnService:
    """Domain operations of the daemon over one repository and the current configuration."""

    def __init__(
        self,
        config: Config,
        repo: Repository,
        *,
        next_runs: NextRunsFn | None = None,
        metrics: Any = None,
    ) -> None:
        self._config = config
        self.repo = repo
        self.jobs = JobManager(on_done=self._job_done)
        self._next_runs = next_runs
        self._metrics = metrics  # a cairn.daemon.metrics.Metrics, or None
        self._started = time.time()
        self._machine = socket.gethostname()
        self.retention: Any = None  # the daemon's RetentionRunner (cairn.daemon.retention) when gc is scheduled
        self._lock = threading.Lock()
        self.archive = walarchive.ArchiveHealth()  # WAL pushes seen by this daemon, for status
        self.tracker: Any = None  # the daemon's ChangeTracker (cairn.daemon.changes) when it watches
        self.health = HealthRecord(None if config.daemon.read_only else config.daemon.state_dir)

    # ---- configuration ----

    @property
    def config(self) -> Config:
        return self._config

    def reload(self, config: Config) -> None:
        """Use `config` from now on; running jobs keep the request they started with."""
        with self._lock:
            self._config = config

    def set_next_runs(self, next_runs: NextRunsFn | None) -> None:
        self._next_runs = next_runs

    @property
    def _hostname(self) -> str:
        """The host name sets record: [daemon] host, else the machine's."""
        return self._config.daemon.host or self._machine

    # ---- status ----

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
        sets = self.repo.list_sets()
        running = self.jobs.running()
        next_runs = self._collect_next_runs()
        names = [s.name for s in config.sources]
        names += sorted({s.source for s in sets} - set(names))
        configured = {s.name: s for s in config.sources}
        states = []
        for name in names:
            # a configured source is this host's: other hosts sharing the repository may use its name
            own = [s for s in sets if s.source == name and (name not in configured or s.hostname == self._hostname)]
            src = configured.get(name)
            states.append(
                SourceState(
                    name=name,
                    paths=src.paths if src else (own[-1].paths if own else ()),
                    configured=src is not None,
                    watch=bool(src and src.watch),
                    **self._journal_view(src),
                    last={s.level: s for s in own},  # oldest first, so the latest per level wins
                    running=running.get(name),
                    next_runs=next_runs.get(name, {}),
                    sets=len(own),
                    last_failure=self.health.failure(name),
                    rpo=src.rpo if src else None,
                    last_success=max((s.time_end for s in own if set_status(s) != "failed"), default=0.0),
                )
            )
        return daemon, states

    def _journal_view(self, src: SourceConfig | None) -> dict[str, Any]:
        """The change journal's state of a configured source, as SourceState fields."""
        if src is None:
            return {"journal": ""}
        if self.tracker is None or not src.watch:
            why = "read-only daemon" if self._config.daemon.read_only else "watch = false"
            return {"journal": f"not tracked ({why}): sets walk and compare with the base"}
        try:
            st = self.tracker.status(src.name)
        except Exception:
            log.exception("unable to read the change journal state of source '%s'", src.name)
            return {"journal": "unknown (the change journal could not be read)"}
        reasons = tuple(st["reasons"])
        text = "complete" if st["state"] == "complete" else "rescan pending: " + "; ".join(reasons)
        return {
            "journal": text,
            "journal_state": st["state"],
            "journal_reasons": reasons,
            "oldest_unprotected_age": st["oldest_unprotected_age"],
            "pending_paths": int(st["pending_paths"]),
            "watches": int(st["watches"]),
        }

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

    # ---- backups ----

    def start_backup(self, source: str, level: str, tags: tuple[str, ...] = (), reason: str = "request") -> BackupJob:
        """Start a backup job of `source` (or of the only source when empty)."""
        config = self._config
        self._require_writable("a backup")
        level = check_level(level or DEFAULT_LEVEL)
        src = config.source(source) if source else self._only_source(config)
        for tag in tags:
            if not tag or any(c.isspace() for c in tag):
                raise InvalidArgumentError(f"invalid tag '{tag}': tags are non-empty and without spaces")
        common, anchored = src.path_excludes()
        request = BackupRequest(
            source=src.name,
            paths=tuple(src.paths),
            level=level,
            excludes=common,
            root_excludes=anchored,
            one_file_system=src.one_file_system,
            tags=tuple(tags),
            extra={"reason": reason},
            hostname=self._hostname,
        )

        def run(progress: ProgressFn, cancel: threading.Event) -> BackupSet:
            return self._take_set(src, request, progress, cancel)

        return self.jobs.start_backup(src.name, level, reason, run)

    def _take_set(self, src: SourceConfig, request: BackupRequest, progress: ProgressFn,
                  cancel: threading.Event) -> BackupSet:
        """One set of a source: capture it (plain, or inside a quiesce window with its databases),
        then tell the journal. The base and the change hint are decided once, by the planner,
        at the moment the capture begins — inside the window, after every freeze hook."""
        planner = _JournalPlanner(self.repo, self.tracker, src.name, request.level, request.hostname or None)
        s = self._capture(src, request, progress, cancel, planner)
        self._set_committed(src, s, planner.token)
        return s

    def _capture(self, src: SourceConfig, request: BackupRequest, progress: ProgressFn,
                 cancel: threading.Event, planner: capture.Planner) -> BackupSet:
        """Capture the set: a plain backup of the source paths, or a consistent set of files and
        databases inside the source's quiesce window (daemon/capture.py)."""
        if not capture.needs_capture(src):
            plan = planner.plan()
            req = replace(request, changes=plan.hint,
                          extra={**request.extra, "changes": "journal" if plan.hint is not None else "walk"})
            with self.repo.session(req, progress, cancel, decision=plan.decision) as sess:
                sess.walk_all()
                return sess.commit()
        dbs = [self._config.database(name) for name in capture.source_databases(src)]
        return capture.capture_set(self.repo, self._config.daemon.state_dir, src, dbs, request, progress, cancel,
                                   planner=planner)

    def _set_committed(self, src: SourceConfig, s: BackupSet, token: Any) -> None:
        """Tell the change journal that `s` is committed, so it consumes what the set covers."""
        tracker = self.tracker
        if tracker is None or not isinstance(token, _JournalToken):
            return
        try:
            if token.hinted and s.base != token.base_id:
                # The store chose another base than the hint was made for (pruned meanwhile):
                # what lies between is not in this set, so the next set walks the whole source.
                tracker.mark_rescan(src.name, None, f"set '{s.id[:12]}' was taken against another base "
                                                    "than its change hint")
            tracker.committed(src.name, s.level, s.id, token.token)
        except Exception:
            log.exception("unable to record set '%s' in the change journal of source '%s'", s.id, src.name)

    def submit(self, source: str, level: str, reason: str) -> None:
        """Scheduler entry point: start a backup unless one of that source runs already.

        A set the schedule takes carries the source's `tags` for its level, strftime fields
        filled in with the local time of the run; a scheduled set of an unchanged source is
        skipped (daemon/skip.py)."""
        if reason == "schedule":
            newest = skip.unchanged_since(self._config, self.tracker, self.repo, source, level)
            if newest is not None:
                log.info("skipped scheduled %s set of source '%s': nothing changed since set %s", level, source,
                         newest[:12])
                return
        try:
            tags: tuple[str, ...] = ()
            if reason == "schedule":
                src = next((s for s in self._config.sources if s.name == source), None)
                tags = src.scheduled_tags(level, time.time()) if src is not None else ()
            self.start_backup(source, level, tags, reason=reason)
        except BusyError as exc:
            log.info("skipped %s backup of source '%s' (%s): %s", level, source, reason, exc.message)
        except CairnError as exc:
            log.error("unable to start %s backup of source '%s' (%s): %s", level, source, reason, exc.message)

    def _only_source(self, config: Config):
        if len(config.sources) == 1:
            return config.sources[0]
        if not config.sources:
            raise FailedPreconditionError("no source is configured: there is nothing to back up")
        names = ", ".join(s.name for s in config.sources)
        raise InvalidArgumentError(f"several sources are configured ({names}): name one with --source")

    def _job_done(self, job: BackupJob) -> None:
        if job.result is None:
            status = "aborted" if job.cancel.is_set() else "failed"
            message = job.error.message if isinstance(job.error, CairnError) else str(job.error or status)
            self.health.set_failed(job.source, job.level, message, status)
        elif set_status(job.result) == "failed":  # committed, but records that it failed
            self.health.set_failed(job.source, job.result.level, job.result.note or "the set records a failure")
        if self._metrics is None:
            return
        if job.result is not None:
            status, added, level = "success", job.result.stats.bytes_added, job.result.level
        else:
            status, added, level = ("aborted" if job.cancel.is_set() else "failed"), 0, job.level
        finished = job.result.time_end if job.result is not None else None  # as restored at start
        self._metrics.record_set(job.source, level, status, added, job.age(), finished_at=finished)

    # ---- reading ----

    def list_sets(self, source: str = "", host: str = "") -> list[BackupSet]:
        sets = self.repo.list_sets(source or None)
        if source and not sets:
            self._require_known_source(source)
        return [s for s in sets if s.hostname == host] if host else sets

    def resolve(self, ref: str, source: str = "") -> BackupSet:
        """The set named by a full id, a unique prefix or 'latest' (per source)."""
        if not ref:
            raise InvalidArgumentError("no set given: name a set id, a unique prefix or 'latest'")
        if source:
            self._require_known_source(source)
        return self.repo.get_set(ref, source or None)

    def list_tree(self, ref: str, source: str, path: str, recursive: bool) -> tuple[BackupSet, list[TreeEntry]]:
        s = self.resolve(ref, source)
        return s, self.repo.list_tree(s, _rel(path), recursive=recursive)

    def diff(self, a: str, b: str, source: str = "") -> tuple[BackupSet, BackupSet, SetDiff]:
        sa, sb = self.resolve(a, source), self.resolve(b, source)
        return sa, sb, self.repo.diff(sa, sb)

    def restore_stream(self, ref: str, source: str, paths: list[str], include: tuple[str, ...] = (),
                       exclude: tuple[str, ...] = (), manifest: bool = False) -> tuple[BackupSet, Iterator[Record]]:
        s = self.resolve(ref, source)
        rels = [_rel(p) for p in paths]
        if any(not p for p in rels):
            rels = []
        select = RestoreFilter(include, exclude)
        return s, self._counted(self.repo.restore_stream(s, rels or None, select=select, manifest=manifest))

    def restore_totals(self, s: BackupSet, paths: list[str], include: tuple[str, ...] = (),
                       exclude: tuple[str, ...] = ()) -> tuple[int, int]:
        """(files, bytes) a restore of `s` (or of chosen paths or patterns of it) writes.

        The whole set: its recorded totals, unless it is a journal-driven set from before those
        counted the whole tree. Otherwise the selection is listed from the stored trees (a
        manifest: chunk sizes from the index, no content read)."""
        rels = [_rel(p) for p in paths]
        if any(not p for p in rels):
            rels = []
        whole = not rels and not include and not exclude
        trusted = s.stats.files_walked is not None or s.extra.get("changes") != "journal"
        if whole and trusted:
            return s.stats.files, s.stats.bytes_total
        files = size = 0
        select = RestoreFilter(include, exclude)
        stream = self.repo.restore_stream(s, rels or None, select=select, manifest=True)
        try:
            for rec in stream:
                if isinstance(rec, EntryMeta) and rec.kind == "file":
                    files += 1
                    size += rec.size
        finally:
            stream.close()
        return files, size

    def restore_db_totals(self, s: BackupSet, database: str) -> tuple[int, int]:
        """(files, bytes) of the data directory (and tablespaces) a restore-db of `database` writes."""
        return restoredb.restore_db_totals(s, database)

    def restore_chunks(self, ref: str, source: str, ids: list[bytes]) -> Iterator[bytes]:
        """The content of chunks of a set's files, in the order asked (delta restores)."""
        s = self.resolve(ref, source)
        return self.repo.read_chunks(s, ids)

    def _counted(self, records: Iterator[Record]) -> Iterator[Record]:
        """Pass records through, counting the file bytes sent for the metrics."""
        sent = 0
        try:
            for rec in records:
                if isinstance(rec, Data):
                    sent += len(rec.data)
                yield rec
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
            if self._metrics is not None and sent:
                self._metrics.record_restore(sent)

    def restore_db(self, ref: str, source: str, database: str, target_time: str, target_lsn: str,
                   target_path: str = "", restore_command: str = "") -> tuple[BackupSet, Iterator[Record]]:
        """A set's database as records of a data directory that recovers to the target, then promotes."""
        s = self.resolve(ref, source)
        records = restoredb.restore_db_records(self.repo, s, database, target_time, target_lsn,
                                               self._config.daemon.socket, target_path, restore_command)
        return s, self._counted(records)

    def restore_db_to_dsn(self, ref: str, source: str, database: str, target_dsn: str,
                          progress: ProgressFn | None = None, cancel: threading.Event | None = None
                          ) -> tuple[BackupSet, DumpRestoreResult]:
        """A set's dump of `database` restored into the database `target_dsn` names, on this host
        (pg_restore, or the configured restore command: daemon/databases/restore.py)."""
        s = self.resolve(ref, source)
        return s, restore_dump(self.repo, self._config, s, database, target_dsn, progress, cancel)

    def verify(self, set_ref: str, source: str, read_data: bool, progress: ProgressFn | None) -> CheckReport:
        """Check the repository (or one set). A `progress` that raises AbortedError stops it."""
        chosen = self.resolve(set_ref, source) if set_ref else None
        if self._metrics is not None:
            self._metrics.record_verify_start()
        outcome = "failed"
        try:
            report = self.repo.check(read_data=read_data, set_ref=chosen.id if chosen else None,
                                     progress=progress)
            # WAL continuity per timeline from each database set's start onward (daemon/walarchive.py)
            gaps = walarchive.continuity_problems(self.repo, [chosen] if chosen else self.repo.list_sets())
            report = replace(report, errors=report.errors + tuple(gaps)) if gaps else report
            outcome = "ok" if report.ok else "damaged"
            return report
        except AbortedError as exc:
            outcome = "cancelled"
            log.info("verify stopped: %s", exc.message)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.record_verify(outcome)

    def archive_status(self) -> walarchive.ArchiveSnapshot:
        """WAL archiving health: this daemon's pushes, the repository, and each server's archiver."""
        entries = self.repo.wal_entries()
        snap = self.archive.snapshot([name for _, name in entries])
        snap.namespaces = len({ns for ns, _ in entries if ns})
        if not snap.last_time and snap.last_segment and snap.last_segment == self.health.wal_segment:
            snap.last_time = self.health.wal_time  # archived before this daemon started
        for db in self._config.databases:
            if db.kind != "postgres":
                continue  # dump engines archive no WAL
            info = {"name": db.name, **walarchive.database_archiver(db)}
            if info.get("system_id"):
                info["namespace_segments"] = sum(1 for ns, n in entries
                                                 if ns == info["system_id"] and walarchive.SEGMENT_RE.match(n))
            snap.databases.append(info)
        return snap

    def check_db(self, name: str, timeout: float | None = None) -> checkdb.CheckResult:
        """`cairn check-db`: connection, archive_command and a forced segment switch (daemon/checkdb.py)."""
        db = self._config.database(name)
        return checkdb.check_database(db, lambda ns: self.repo.list_wal(ns, flat=False),
                                      lambda: self.archive.snapshot([]).last_failure, timeout)

    # ---- writing outside backups ----

    def prune(self, policy: PrunePolicy, dry_run: bool, source: str = "", wal_keep: str = "") -> PruneReport:
        """Forget sets by `policy` (no rule: only free unreferenced data). WAL retention uses
        `wal_keep` if given, else the configured [repository] wal_keep."""
        if not dry_run:
            self._require_writable("pruning")
        if source:
            self._require_known_source(source)
        window = (retention.parse_option_duration("--wal-keep", wal_keep) if wal_keep
                  else self._config.repository.wal_keep)
        return self.repo.prune(replace(policy, wal_keep=window), dry_run=dry_run, source=source or None)

    def retention_policy(self) -> PrunePolicy:
        """What scheduled retention applies: each source's `keep`, only to this host's sets."""
        config = self._config
        return PrunePolicy(host=self._hostname, sources={s.name: s.keep for s in config.sources if s.keep},
                           wal_keep=config.repository.wal_keep)

    def run_retention(self) -> PruneReport:
        """Scheduled retention + garbage collection (the RetentionRunner's job)."""
        self._require_writable("retention")
        return self.repo.prune(self.retention_policy())

    def retention_status(self) -> dict[str, Any] | None:
        """The gc schedule, its next and last run, for status (None when not scheduled)."""
        runner = self.retention
        if runner is None:
            return None
        return {"schedule": runner.schedule, "next_run": runner.next_run(), "last_run": runner.last_run,
                "last_result": runner.last_result, "host": self._hostname}

    # -- repository keys (format 2) --

    def list_keys(self) -> list[dict[str, Any]]:
        """Every key object of the encrypted repository, the one in use marked `current`."""
        return [{"id": key_id, "type": info.type if info else "", "created": info.created if info else 0.0,
                 "kdf": info.kdf if info else "", "current": key_id == self.repo.key_id, "problem": problem}
                for info, key_id, problem in self.repo.list_keys()]

    def add_key(self, secret: Secret) -> str:
        self._require_writable("adding a key")
        key_id = self.repo.add_key(secret)
        log.info("repository key %s added (%s)", key_id, secret.kind)
        return key_id

    def remove_key(self, ref: str) -> str:
        self._require_writable("removing a key")
        key_id = self.repo.remove_key(ref)
        log.info("repository key %s removed", key_id)
        return key_id

    def require_wal_writable(self) -> None:
        """Raise unless WAL pushes are accepted (checked before a push is received)."""
        self._require_writable("archiving WAL")

    def put_wal(self, name: str, data: bytes, namespace: str = "") -> bool:
        """Archive WAL file `name` in its cluster's name space (walarchive.push_namespace)."""
        return self.put_wal_in(name, data, namespace)[0]

    def put_wal_in(self, name: str, data: bytes, namespace: str = "") -> tuple[bool, str]:
        """put_wal, and the name space the file went to."""
        self._require_writable("archiving WAL")
        _check_wal_name(name)
        try:
            namespace = walarchive.push_namespace(name, data, namespace)
            stored = self.repo.put_wal(name, data, namespace)
        except CairnError as exc:
            self.archive.failed(name, exc.message)
            if self._metrics is not None:
                self._metrics.record_wal(False)
            raise
        self.archive.stored(name)
        self.health.wal_stored(name)
        if self._metrics is not None:
            self._metrics.record_wal(True)
        return stored, namespace

    def get_wal(self, name: str, namespace: str = "") -> bytes:
        """WAL file `name` of a cluster's name space (its system identifier; "" the flat one)."""
        _check_wal_name(name)
        return walarchive.fetch_wal(self.repo, name, walnames.namespace_of(namespace) if namespace else "")

    # ---- lifecycle ----

    def shutdown(self) -> None:
        """Refuse new jobs and cancel the running ones."""
        self.jobs.shutdown()

    def wait_idle(self, timeout: float) -> bool:
        return self.jobs.wait_idle(timeout)

    def _require_writable(self, what: str) -> None:
        if self._config.daemon.read_only:
            raise FailedPreconditionError(
                f"the daemon serves the repository read-only: {what} is not possible",
                hint="restart cairnd without --read-only",
            )

    def _require_known_source(self, source: str) -> None:
        if any(s.name == source for s in self._config.sources):
            return
        if self.repo.list_sets(source):
            return
        raise NotFoundError(f"unknown source '{source}'")


@dataclass(frozen=True)
class _JournalToken:
    """What the planner hands to `_set_committed`: the tracker's token and the hint's base."""

    token: Any
    base_id: str | None
    hinted: bool


class _JournalPlanner:
    """Decides a set's base once and asks the change journal for the hint against it.

    `plan()` runs when the capture begins (inside a window: after every freeze hook), so the
    hint holds what the application wrote while it was being stopped. `refresh()` asks again
    against the same base (hot mode, before the content walk); the token stays the first one,
    so what arrived after it stays pending for the next set even if this set saw it too.
    """

    def __init__(self, repo: Repository, tracker: Any, source: str, level: str, host: str | None = None) -> None:
        self.repo, self.tracker, self.source, self.level, self.host = repo, tracker, source, level, host
        self.token: _JournalToken | None = None
        self._plan: capture.SetPlan | None = None

    def plan(self) -> capture.SetPlan:
        level, base, note = self.repo.choose_base(self.source, self.level, self.host)  # this host's sets only
        hint = None
        if self.tracker is not None:
            hint, token = self.tracker.prepare(self.source, level, base.id if base else None,
                                               base.level if base else None)
            self.token = _JournalToken(token, base.id if base else None, hint is not None)
        self._plan = capture.SetPlan(level, base, note, hint)
        return self._plan

    def refresh(self) -> ChangeHint | None:
        p = self._plan
        if self.tracker is None or p is None or p.hint is None:
            return None
        hint, _token = self.tracker.prepare(self.source, p.level, p.base.id if p.base else None,
                                            p.base.level if p.base else None)
        return hint


def _rel(path: str) -> str:
    """A set path from user input: '/'-separated, relative to the set root."""
    return path.strip("/")


def _check_wal_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgumentError(
            f"invalid WAL segment name '{name}': expected a file name like 000000010000000000000001"
        )
