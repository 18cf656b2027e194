"""Backups: starting a set (by request, schedule or RPO), taking it, and what follows it.

A backup runs as a job (one per source, in its own thread). The base and the change hint are
decided once, when the capture begins (inside a window: after every freeze hook).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from cairn import protocol
from cairn.daemon.changes import skip
from cairn.daemon.databases.dump import DIR_PLACEHOLDER
from cairn.daemon.operations import hostname
from cairn.daemon.operations.part import ProgressFn, ServicePart
from cairn.daemon.operations.status import set_status
from cairn.daemon.runtime.config import Config, DatabaseConfig, SourceConfig
from cairn.daemon.scheduling.jobs import BackupJob
from cairn.daemon.windows import capture
from cairn.store.errors import BusyError, CairnError, FailedPreconditionError, InvalidArgumentError
from cairn.store.model import BackupRequest, BackupSet, ChangeHint, check_level
from cairn.store.repository import Repository

log = logging.getLogger(__name__)

DEFAULT_LEVEL = protocol.DEFAULT_LEVEL


class BackupPart(ServicePart):
    """Starting and taking sets, and recording how they ended."""

    def start_backup(self, source: str, level: str, tags: tuple[str, ...] = (), reason: str = "request") -> BackupJob:
        """Start a backup job of `source` (or of the only source when empty)."""
        config = self._config
        self._require_writable("a backup")
        level = check_level(level or DEFAULT_LEVEL)
        src = config.source(source) if source else self._only_source(config)
        if src.quiesce is not None:  # its window's record must be durable before anything freezes
            self._require_state_room(f"open the quiesce window of source '{src.name}'")
        if self.repo.write_only:  # the host records its own sets and trees there before storing them
            self._require_state_room(f"back up source '{src.name}' with a write-only key")
        dumps = [n for n in src.databases if _dumps_to_a_directory(config.database(n))]
        if dumps:  # it writes the dump into a work directory there (daemon/databases/dump.py)
            self._require_state_room(f"dump database '{dumps[0]}' of source '{src.name}'")
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
            extra={"reason": reason, **({"machine": self._machine_id} if self._machine_id else {}),
                   **({"boot": self._boot_id} if self._boot_id else {})},
            hostname=self._hostname,
        )

        def run(progress: ProgressFn, cancel: threading.Event) -> BackupSet:
            self.health.begin(src.name, level)
            try:
                return self._take_set(src, request, progress, cancel)
            finally:
                self.health.end(src.name)

        return self.jobs.start_backup(src.name, level, reason, run)

    def _take_set(self, src: SourceConfig, request: BackupRequest, progress: ProgressFn,
                  cancel: threading.Event) -> BackupSet:
        """One set of a source: capture it (plain, or inside a quiesce window with its databases),
        then tell the journal. The base and the change hint are decided once, by the planner,
        at the moment the capture begins — inside the window, after every freeze hook."""
        planner = _JournalPlanner(self.repo, self.tracker, src.name, request.level, request.hostname or None,
                                  self._machine_id)
        s = self._capture(src, request, progress, cancel, planner)
        self._set_committed(src, s, planner.token)
        sets = self.repo.list_sets(src.name)
        for warning in hostname.host_warnings(sets, self._hostname, self._machine_id, self._boot_id, time.time()):
            log.warning("%s", warning, extra={"source": src.name})  # status shows it too
        return s

    def _capture(self, src: SourceConfig, request: BackupRequest, progress: ProgressFn,
                 cancel: threading.Event, planner: capture.Planner) -> BackupSet:
        """Capture the set: a plain backup of the source paths, or a consistent set of files and
        databases inside the source's quiesce window (daemon/windows/capture.py)."""
        if not capture.needs_capture(src):
            plan = planner.plan()
            extra = {**request.extra, "changes": "journal" if plan.hint is not None else "walk"}
            if plan.why:
                extra["walk_reasons"] = list(plan.why)
            req = replace(request, changes=plan.hint, extra=extra)
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
        skipped (daemon/changes/skip.py)."""
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
        else:
            thaw = capture.thaw_failures(job.result)
            if thaw:  # the set is whole, but the application may not be running again
                self.health.set_failed(job.source, job.result.level,
                                       f"set {job.result.id[:12]} was committed, but its {thaw[0]}: the "
                                       "application may still be stopped", status="thaw failed")
                if self._metrics is not None:
                    self._metrics.record_thaw_failure(job.source)
        if self._metrics is None:
            return
        if job.result is not None:
            status, added, level = "success", job.result.stats.bytes_added, job.result.level
        else:
            status, added, level = ("aborted" if job.cancel.is_set() else "failed"), 0, job.level
        finished = job.result.time_end if job.result is not None else None  # as restored at start
        self._metrics.record_set(job.source, level, status, added, job.age(), finished_at=finished)


def _dumps_to_a_directory(db: DatabaseConfig) -> bool:
    """Whether a set's dump of `db` is written as a directory in the state directory first
    (pg_dump's directory format, a command dump given `{dir}`), not streamed into the set."""
    return db.kind == "pg_dump" or (db.kind == "command" and any(DIR_PLACEHOLDER in arg for arg in db.dump))


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

    def __init__(self, repo: Repository, tracker: Any, source: str, level: str, host: str | None = None,
                 machine: str = "") -> None:
        self.repo, self.tracker, self.source, self.level, self.host = repo, tracker, source, level, host
        self.machine = machine
        self.token: _JournalToken | None = None
        self._plan: capture.SetPlan | None = None

    def plan(self) -> capture.SetPlan:
        # this host's sets only (this machine's, where machines share the host name)
        level, base, note = self.repo.choose_base(self.source, self.level, self.host, self.machine)
        hint = None
        if self.tracker is not None:
            hint, token = self.tracker.prepare(self.source, level, base.id if base else None,
                                               base.level if base else None)
            self.token = _JournalToken(token, base.id if base else None, hint is not None)
        why: tuple[str, ...] = ()
        if self.tracker is not None and hint is None and level != "full":  # said in the set: why it walks
            why = tuple(self.tracker.status(self.source).summary) or (
                "the change journal holds no record of the source's changes since the set's base",)
        self._plan = capture.SetPlan(level, base, note, hint, why)
        return self._plan

    def refresh(self) -> ChangeHint | None:
        p = self._plan
        if self.tracker is None or p is None or p.hint is None:
            return None
        hint, _token = self.tracker.prepare(self.source, p.level, p.base.id if p.base else None,
                                            p.base.level if p.base else None)
        return hint

    def changed_since_plan(self) -> list[str] | None:
        """What the change journal saw change in the source since `plan()` (None: it cannot tell)."""
        if self.tracker is None or self.token is None:
            return None
        return self.tracker.changed_after(self.source, self.token.token)
