"""Consistent sets: a source's files and its PostgreSQL database captured as one set.

`capture_set(repo, state_dir, src, db, request, progress, cancel)` takes one set of a source
that has a `database` and/or a `quiesce` window, step by step through a store BackupSession:

- preflight: with a database, connect and check it (DSN, rights, pgdata, archiving) BEFORE
  any window opens, so a misconfigured database fails the set with nothing frozen;
- cold: freeze hooks -> pg_backup_start -> the data directory as attachment 'db:<name>' (and
  each tablespace as 'db:<name>:tblspc:<oid>') -> every source path -> pg_backup_stop (bounded
  by the time left in the window) -> restore point -> thaw hooks -> commit;
- hot: auxiliary paths -> pg_backup_start -> attachments -> pg_backup_stop -> restore point
  -> the remaining (content) paths -> commit. Every row the database holds at its consistent
  point names a file that existed before the content walk began.

The set records `extra['database']` (name, LSNs, timeline, system identifier, server
version, labelfile and spcmapfile base64 byte-exact, restore point, WAL range, tablespaces)
and `extra['window']` (Window.record(): timings, hook results and exit codes, errors).

What always holds: thaw runs whenever freeze started (quiesce.Window guarantees it, also at
the max_window deadline, which cancels the session and the running statement); a set that
failed commits nothing; the database connection is closed when this returns or raises.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cairn.daemon.checkdb import raise_if_archiver_failing
from cairn.daemon.config import DatabaseConfig, SourceConfig
from cairn.daemon.postgres import EXCLUDES, BackupStop, PgConnection, PgInfo
from cairn.daemon.quiesce import Window
from cairn.store.errors import InvalidArgumentError
from cairn.store.model import BackupRequest, BackupSet, Progress
from cairn.store.repository import Repository
from cairn.store.session import BackupSession

log = logging.getLogger("cairn.capture")

ProgressFn = Callable[[Progress], None]
NO_WINDOW_STOP_TIMEOUT = 600.0  # pg_backup_stop's wait for archiving without a window deadline
MIN_STOP_TIMEOUT = 1.0


def attachment_name(database: str) -> str:
    """The set attachment holding a database's data directory."""
    return f"db:{database}"


def tablespace_attachment(database: str, oid: int) -> str:
    """The set attachment holding one tablespace directory of a database."""
    return f"db:{database}:tblspc:{oid}"


def capture_paths(src: SourceConfig) -> tuple[str, ...]:
    """The paths a set of `src` holds: its paths, then auxiliary paths not among them.

    aux_paths only order the capture (hot mode: before the database); they are part of the set
    like any path, so each must have a basename distinct from the others (one subtree each).
    """
    paths = tuple(src.paths) + tuple(p for p in src.aux_paths if p not in src.paths)
    seen: dict[str, str] = {}
    for p in paths:
        name = os.path.basename(os.path.normpath(p))
        if name in seen:
            raise InvalidArgumentError(
                f"source '{src.name}': paths '{seen[name]}' and '{p}' have the same basename '{name}'; "
                "a set holds one subtree per basename")
        seen[name] = p
    return paths


def needs_capture(src: SourceConfig) -> bool:
    """True when a source is captured here rather than by a plain repository backup."""
    return bool(src.database or src.quiesce)


def capture_set(repo: Repository, state_dir: str, src: SourceConfig, db: DatabaseConfig | None,
                request: BackupRequest, progress: ProgressFn | None, cancel: threading.Event, *,
                connect: Callable[[DatabaseConfig], PgConnection] = PgConnection.from_config) -> BackupSet:
    """Take one consistent set of `src` (see the module docstring); raises on any failure."""
    request = replace(request, paths=capture_paths(src))
    # Step 1: preflight — a database that cannot be backed up fails the set before any freeze.
    conn = connect(db) if db is not None else None
    with conn if conn is not None else contextlib.nullcontext():
        info = conn.info() if conn is not None else None
        if conn is not None:  # archiving that fails now would stall pg_backup_stop inside the window
            raise_if_archiver_failing(conn, db.name, repo.list_wal)
        window = (Window.from_config(state_dir, src.name, src.quiesce, cancel=cancel,
                                     on_expire=conn.cancel if conn is not None else None)
                  if src.quiesce is not None else None)
        run = _Capture(repo, src, db, conn, info, window, request, progress, cancel)
        return run.take()


class _Capture:
    """One run of capture_set; holds what the steps share."""

    def __init__(self, repo: Repository, src: SourceConfig, db: DatabaseConfig | None,
                 conn: PgConnection | None, info: PgInfo | None, window: Window | None,
                 request: BackupRequest, progress: ProgressFn | None, cancel: threading.Event) -> None:
        self.repo = repo
        self.src = src
        self.db = db
        self.conn = conn
        self.info = info
        self.window = window
        self.request = request
        self.progress = progress
        self.cancel = window.cancel if window is not None else cancel
        self.mode = src.quiesce.mode if src.quiesce is not None else "hot"
        self.extra: dict[str, Any] = {}

    def take(self) -> BackupSet:
        with self.repo.session(self.request, self.progress, self.cancel) as sess:
            with self.window if self.window is not None else contextlib.nullcontext():
                if self.mode == "cold":
                    self._cold(sess)
                else:
                    self._hot(sess)
            if self.window is not None:
                self.extra["window"] = self._window_record(sess)
            return sess.commit(self.extra)

    # -- orders ---------------------------------------------------------------------------

    def _cold(self, sess: BackupSession) -> None:
        # Everything stands still: database and files in one go between freeze and thaw.
        self._check()
        if self.conn is not None:
            self._database(sess, between=sess.walk_all)
        else:
            sess.walk_all()
        self._check()

    def _hot(self, sess: BackupSession) -> None:
        # Auxiliary paths first, then the database, then the content the rows name.
        for p in self.src.aux_paths:
            self._check()
            sess.walk(p)
        if self.conn is not None:
            self._check()
            self._database(sess)
        self._check()
        sess.walk_all()

    # -- database -------------------------------------------------------------------------

    def _database(self, sess: BackupSession, between: Callable[[], None] | None = None) -> None:
        assert self.conn is not None and self.db is not None and self.info is not None
        name = self.db.name
        stamp = datetime.fromtimestamp(sess.started, UTC).strftime("%Y%m%dT%H%M%SZ")
        with self.conn.base_backup() as bb:
            # Step 2: pg_backup_start — immediate checkpoint; start LSN and timeline recorded.
            start = bb.start(f"cairn {self.src.name} {stamp}", fast=True)
            log.info("source '%s': base backup of database '%s' started at %s", self.src.name, name, start.lsn)
            # Step 3: the data directory and each tablespace through the chunk store.
            self._check()
            sess.attach(attachment_name(name), self.db.pgdata, EXCLUDES)
            for ts in self.info.tablespaces:
                self._check()
                sess.attach(tablespace_attachment(name, ts.oid), ts.location, EXCLUDES)
            if between is not None:
                between()
            # Step 4: pg_backup_stop waits until the WAL the copy needs is archived.
            self._check()
            stop = bb.stop(timeout=self._stop_timeout())
        # Step 5: a named restore point marks the database moment of the set; the switch
        # sends the segment holding it to the archive without waiting for it.
        point_name = f"cairn-{stamp}"
        point_lsn = self.conn.create_restore_point(point_name)
        self.conn.switch_wal()
        log.info("source '%s': base backup of database '%s' stopped at %s", self.src.name, name, stop.lsn)
        self.extra["database"] = self._database_record(start, stop, point_name, point_lsn)

    def _database_record(self, start: Any, stop: BackupStop, point_name: str, point_lsn: str) -> dict[str, Any]:
        assert self.db is not None and self.info is not None
        info = self.info.to_dict()
        return {
            "name": self.db.name,
            "attachment": attachment_name(self.db.name),
            "start_lsn": start.lsn,
            "stop_lsn": stop.lsn,
            "timeline": start.timeline,
            "system_identifier": info["system_identifier"],
            "server_version": info["server_version"],
            "server_version_num": info["server_version_num"],
            "wal_segment_size": info["wal_segment_size"],
            "labelfile": base64.b64encode(stop.labelfile).decode("ascii"),
            "spcmapfile": base64.b64encode(stop.spcmapfile).decode("ascii"),
            "restore_point": {"name": point_name, "lsn": point_lsn},
            "wal": {"first": start.wal_file, "last": stop.wal_file},
            "started": start.time,
            "stopped": stop.time,
            "tablespaces": [{"oid": t.oid, "name": t.name, "location": t.location,
                             "attachment": tablespace_attachment(self.db.name, t.oid)}
                            for t in self.info.tablespaces],
        }

    # -- window ---------------------------------------------------------------------------

    def _check(self) -> None:
        if self.window is not None:
            self.window.check_deadline()

    def _stop_timeout(self) -> float:
        if self.window is None:
            return NO_WINDOW_STOP_TIMEOUT
        return max(MIN_STOP_TIMEOUT, self.window.remaining())

    def _window_record(self, sess: BackupSession) -> dict[str, Any]:
        assert self.window is not None
        record = self.window.record()
        fuzzy = list(sess.tally.fuzzy[:100])
        if self.mode == "cold" and fuzzy:
            record["warning"] = (f"{len(sess.tally.fuzzy)} files changed inside the cold window: "
                                 "the application was not quiet")
            log.warning("source '%s': %s", self.src.name, record["warning"])
        record["fuzzy_files"] = fuzzy
        return record


def decode_file(extra_db: dict[str, Any], key: str) -> bytes:
    """labelfile or spcmapfile of a set's extra['database'], byte-exact."""
    return base64.b64decode(extra_db.get(key) or "")
