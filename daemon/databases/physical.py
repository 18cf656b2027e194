"""The physical PostgreSQL engine (kind 'postgres'): a base backup of a local cluster plus WAL.

It delegates to daemon/databases/postgres/connection.py (connection checks, pg_backup_start/stop, restore points)
and behaves exactly as capture did before the engine boundary existed:

- prepare: connect and check (rights, pgdata is the server's data directory, WAL archiving)
  and read the server's facts (version, system identifier, tablespaces);
- start: pg_backup_start with an immediate checkpoint (`starts_early`: in cold mode before
  the freeze);
- capture: the data directory as attachment 'db:<name>' and each tablespace as
  'db:<name>:tblspc:<oid>', through the chunk store with PostgreSQL's base-backup excludes;
- stop: pg_backup_stop WITHOUT waiting for archiving (the wait comes after the thaw, in
  capture.py), then a named restore point and a WAL switch (`mark`, after every database of
  the set stopped);
- describe: a PhysicalRecord (LSNs, timeline, labelfile and spcmapfile byte-exact, WAL range).

What always holds: the connection is closed by close(); leaving without stop() aborts the
server's backup (the session ends it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from cairn.daemon.databases.engine import (
    KIND_POSTGRES,
    PhysicalRecord,
    TablespaceRecord,
    attachment_name,
    tablespace_attachment,
)
from cairn.daemon.databases.postgres.connection import (
    EXCLUDES,
    BackupStart,
    BackupStop,
    BaseBackup,
    PgConnection,
    PgInfo,
)
from cairn.daemon.runtime.config import DatabaseConfig
from cairn.store.snapshots.session import BackupSession

log = logging.getLogger("cairn.capture")


class PhysicalEngine:
    """A PostgreSQL cluster captured as a base backup (see the module docstring)."""

    kind = KIND_POSTGRES
    starts_early = True

    def __init__(self, cfg: DatabaseConfig, source: str,
                 connect: Callable[[DatabaseConfig], PgConnection] = PgConnection.from_config) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.source = source
        self._connect = connect
        self._stack = contextlib.ExitStack()
        self.conn: PgConnection | None = None
        self.info: PgInfo | None = None
        self.bb: BaseBackup | None = None
        self.start_: BackupStart | None = None
        self.stop_: BackupStop | None = None
        self.point: tuple[str, str] | None = None

    def prepare(self) -> None:
        self.conn = self._stack.enter_context(self._connect(self.cfg))
        self.info = self.conn.info()

    def start(self, label: str) -> None:
        assert self.conn is not None
        self.bb = self._stack.enter_context(self.conn.base_backup())
        # pg_backup_start — immediate checkpoint; start LSN and timeline recorded.
        self.start_ = self.bb.start(label, fast=True)
        log.info("source '%s': base backup of database '%s' started at %s", self.source, self.name, self.start_.lsn)

    def capture(self, sess: BackupSession, check: Callable[[], None]) -> None:
        # The data directory and each tablespace through the chunk store.
        assert self.info is not None
        check()
        sess.attach(attachment_name(self.name), self.cfg.pgdata, EXCLUDES)
        for ts in self.info.tablespaces:
            check()
            sess.attach(tablespace_attachment(self.name, ts.oid), ts.location, EXCLUDES)

    def stop(self, timeout: float) -> None:
        assert self.bb is not None
        self.stop_ = self.bb.stop(timeout=timeout, wait_for_archive=False)

    def mark(self, point_name: str) -> None:
        """A named restore point marks the database moment of the set; the switch sends the
        segment holding it to the archive without waiting for it."""
        assert self.conn is not None and self.stop_ is not None
        self.point = (point_name, self.conn.create_restore_point(point_name))
        self.conn.switch_wal()
        log.info("source '%s': base backup of database '%s' stopped at %s", self.source, self.name, self.stop_.lsn)

    def describe(self) -> PhysicalRecord:
        assert self.start_ is not None and self.stop_ is not None and self.point is not None
        assert self.info is not None
        return PhysicalRecord(
            name=self.name,
            attachment=attachment_name(self.name),
            start_lsn=self.start_.lsn,
            stop_lsn=self.stop_.lsn,
            timeline=self.start_.timeline,
            system_identifier=str(self.info.system_identifier),
            server_version=self.info.server_version,
            server_version_num=self.info.server_version_num,
            wal_segment_size=self.info.wal_segment_size,
            labelfile=self.stop_.labelfile,
            spcmapfile=self.stop_.spcmapfile,
            restore_point_name=self.point[0],
            restore_point_lsn=self.point[1],
            wal_first=self.start_.wal_file,
            wal_last=self.stop_.wal_file,
            started=self.start_.time,
            stopped=self.stop_.time,
            tablespaces=tuple(TablespaceRecord(t.oid, t.name, t.location, tablespace_attachment(self.name, t.oid))
                              for t in self.info.tablespaces),
        )

    def server_dirs(self) -> tuple[str, ...]:
        """The data directory and every tablespace's location: the server writes there on its
        own (checkpoints, the background writer, autovacuum) while the application is stopped."""
        locations = tuple(t.location for t in self.info.tablespaces) if self.info is not None else ()
        return (self.cfg.pgdata, *locations) if self.cfg.pgdata else locations

    def diagnose(self) -> str:
        """The server's own archiver view, for the error of a WAL wait that timed out."""
        from cairn.daemon.databases.postgres import walarchive

        if self.conn is None or self.conn.closed:
            return ""
        a: dict[str, Any] = walarchive.server_archiver(self.conn)
        if a.get("last_failed"):
            return f"the server's last failed archive was {a['last_failed']} ({a['failed_count']} failures)"
        return f"the server last archived {a.get('last_archived') or 'nothing'}"

    def cancel(self) -> None:
        if self.conn is not None:
            self.conn.cancel()

    def close(self) -> None:
        self._stack.close()
