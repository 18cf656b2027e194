"""`cairn check-db NAME`: is a configured database ready for consistent sets, as pgBackRest's
`check` asks it.

Three steps, each reported with what it found: the connection (rights, data directory,
wal_level and archive_mode, the same checks a set makes before its window opens), the
archive_command (set at all), and the archiver working end to end: a WAL segment switch is
forced and the completed segment must arrive in the repository within a bound. A failing
archiver is reported as soon as PostgreSQL counts the forced segment as failed, with its
statistics and the last failure this daemon saw from `cairn wal-push`; otherwise after the
bound. `raise_if_archiver_failing` is what a set runs before its window opens: the same forced
switch, but only when PostgreSQL's archiver failed on its latest attempt, and it passes as soon
as an archive succeeds again (a backlog is the set's WAL wait's business). What always holds: the check writes nothing
but one WAL switch (and the transaction id that makes the switch complete a segment).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cairn import walnames
from cairn.daemon.databases.postgres import archwatch
from cairn.daemon.databases.postgres.walarchive import (
    DatabaseArchive,
    archive_settings,
    oldest_ready,
    server_archiver,
)
from cairn.store.errors import CairnError, FailedPreconditionError

DEFAULT_TIMEOUT = 60.0
PRE_WINDOW_TIMEOUT = 30.0  # a set's own check, when the archiver's latest attempt failed
ROUND = 3  # PostgreSQL's archiver tries a segment this often before it pauses
POLL = 0.2


@dataclass(frozen=True)
class CheckStep:
    name: str
    ok: bool
    detail: str


@dataclass
class CheckResult:
    steps: list[CheckStep] = field(default_factory=list)
    segment: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)


def check_database(db: Any, wal_names: Callable[[str], list[str]], last_push_failure: Callable[[], str],
                   timeout: float | None = None,
                   observe: Callable[[DatabaseArchive], DatabaseArchive] | None = None,
                   here: archwatch.Listening | None = None) -> CheckResult:
    """Run the steps against database config `db`; `wal_names(namespace)` lists the WAL files the
    repository holds in a cluster's own name space (its system identifier; store/snapshots/wal.py).
    When the archiver step fails, its line also says whether archive_command reaches this
    repository at all (`here`: where this daemon listens, archwatch.judge) and how long finished
    segments have waited (`observe`: the daemon's archwatch.PendingClocks)."""
    from cairn.daemon.databases.postgres.connection import PgConnection  # psycopg2 only when a database is configured

    bound = timeout if timeout and timeout > 0 else DEFAULT_TIMEOUT
    result = CheckResult()
    try:
        conn = PgConnection.from_config(db, connect_timeout=5)
    except CairnError as exc:
        result.steps.append(CheckStep("connection", False, exc.message))
        return result
    with conn:
        version = conn.query_one("SHOW server_version")[0]
        result.steps.append(CheckStep("connection", True, f"PostgreSQL {version}: rights, data directory, "
                                                          "wal_level and archive_mode fit a base backup"))
        command = conn.query_one("SELECT current_setting('archive_command')")[0]
        if not command.strip():
            result.steps.append(CheckStep("archive_command", False, "archive_command is empty: set it to "
                                                                    "'cairn wal-push %p'"))
            return result
        result.steps.append(CheckStep("archive_command", True, command))
        step = _archiver(conn, wal_names, last_push_failure, bound, result)
        if not step.ok:
            step = CheckStep(step.name, False, step.detail + _why_not_archived(conn, db.name, wal_names, observe, here))
        result.steps.append(step)
    return result


def _why_not_archived(conn: Any, name: str, wal_names: Callable[[str], list[str]],
                      observe: Callable[[DatabaseArchive], DatabaseArchive] | None,
                      here: archwatch.Listening | None = None) -> str:
    """The server's own view after a failed archiver step, for its line: archive_command not
    Cairn's, finished segments waiting and for how long (archwatch.problems); "" when unreadable."""
    try:
        view = DatabaseArchive(name=name, **server_archiver(conn), **archive_settings(conn), **oldest_ready(conn))
        view.system_id = walnames.namespace_of(conn.query_one("SELECT system_identifier FROM pg_control_system()")[0])
    except CairnError:
        return ""
    view = archwatch.judge(view, lambda ns, n: n in wal_names(ns), here)
    if observe is not None:
        view = observe(view)
    found = archwatch.problems(view, time.time())
    return "".join(f"; {text}" for text in found)


def _archiver(conn: Any, wal_names: Callable[[str], list[str]], last_push_failure: Callable[[], str],
              bound: float, result: CheckResult, recovered: bool = False) -> CheckStep:
    """Force a segment switch and wait for the completed segment in the server's WAL name space.
    With `recovered`, an archiver whose latest attempt succeeded after every failure it had counted
    passes at once: archive_command works again, and the segments still queued before the forced
    one (a backlog left while the daemon was down) are no sign of failure."""
    try:
        namespace = walnames.namespace_of(conn.query_one("SELECT system_identifier FROM pg_control_system()")[0])
    except CairnError as exc:
        return CheckStep("archiver", False, f"unable to read the server's system identifier: {exc.message}")
    try:
        conn.query_one("SELECT txid_current()")  # WAL to switch away from, even on an idle server
        segment = conn.query_one("SELECT pg_walfile_name(pg_switch_wal())")[0]
    except CairnError as exc:
        return CheckStep("archiver", False, f"unable to force a WAL segment switch: {exc.message}")
    result.segment = segment
    started = time.monotonic()
    before = server_archiver(conn)
    while True:
        if segment in wal_names(namespace):
            result.seconds = time.monotonic() - started
            return CheckStep("archiver", True, f"segment {segment} arrived in the repository in "
                                               f"{result.seconds:.1f}s")
        stats = server_archiver(conn)
        failures = stats["failed_count"] - before["failed_count"]
        if recovered and not archiver_failing(stats):  # a success after the last failure
            result.seconds = time.monotonic() - started
            return CheckStep("archiver", True, f"archiving works again: {stats['last_archived']} was archived "
                                               f"after the last failure; {segment} is still queued behind "
                                               f"{stats['lag_segments']} segments")
        failed_now = failures >= ROUND  # a whole round of attempts failed since the switch
        waited = time.monotonic() - started
        if failed_now or waited >= bound:
            result.seconds = waited
            why = (f"PostgreSQL's archiver failed {failures} times since the switch" if failed_now
                   else f"not within {bound:.0f}s")
            detail = f"segment {segment} did not arrive in the repository: {why}; " + _archiver_text(stats)
            push = last_push_failure()
            if push:
                detail += f"; the daemon's last wal-push failure: {push}"
            return CheckStep("archiver", False, detail)
        time.sleep(POLL)


def archiver_failing(stats: dict[str, Any]) -> bool:
    """PostgreSQL's archiver failed on its most recent attempt (pg_stat_archiver, server_archiver())."""
    return stats["failed_count"] > 0 and stats["last_failed_time"] >= stats["last_archived_time"]


def raise_if_archiver_failing(conn: Any, name: str, wal_names: Callable[[str], list[str]],
                              bound: float | None = None) -> None:
    """Before a set's window opens: when PostgreSQL's archiver failed on its latest attempt, force a
    segment switch (which also wakes a pausing archiver) and require, within `bound` (default
    PRE_WINDOW_TIMEOUT), that segment in the repository or an archive that succeeds again; else
    fail now rather than in pg_backup_stop, up to max_window later. A backlog still being
    archived is left to the set's own WAL wait (bounded by the database's wal_timeout)."""
    if not archiver_failing(server_archiver(conn)):
        return
    step = _archiver(conn, wal_names, lambda: "", PRE_WINDOW_TIMEOUT if bound is None else bound, CheckResult(),
                     recovered=True)
    if not step.ok:
        raise FailedPreconditionError(f"database '{name}': WAL archiving is failing: {step.detail}",
                                      hint=f"fix archive_command, then `cairn check-db {name}`")


def _archiver_text(stats: dict[str, Any]) -> str:
    text = f"pg_stat_archiver: {stats['failed_count']} failures"
    if stats["last_failed"]:
        text += f", last failed {stats['last_failed']}"
    text += f", last archived {stats['last_archived'] or 'none'}"
    text += " (see the PostgreSQL log for the archive_command's error)"
    return text
