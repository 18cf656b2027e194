"""The PostgreSQL adapter: connection checks, non-exclusive base backups, recovery preparation.

This is the only module of Cairn that imports psycopg2. It offers:

- `PgConnection.open(dsn, pgdata, name=...)` — connects (one connection, autocommit) and checks,
  before any quiesce window opens, that the role has the rights for a base backup (superuser,
  or EXECUTE on pg_backup_start/pg_backup_stop/pg_switch_wal/pg_create_restore_point and
  membership in pg_read_all_settings), that the configured pgdata is the server's
  data_directory (compared after realpath) and that WAL is archived (wal_level replica,
  archive_mode on). Each failure is one clear DatabaseUnavailableError (FailedPrecondition).
- `conn.info()` -> `PgInfo` (server version, system identifier, timeline, data directory,
  tablespaces, archive settings); `PgInfo.to_dict()` is JSON-ready for a set's `extra`.
- `conn.base_backup()` -> `BaseBackup`, a context manager on the same connection:
  `start(label, fast=True)` -> `BackupStart(lsn, timeline, ...)` calls pg_backup_start;
  `stop()` -> `BackupStop(lsn, labelfile, spcmapfile)` forces a WAL switch (an idle server then
  never waits for its last segment) and calls pg_backup_stop(wait_for_archive => true) under a
  statement timeout. labelfile and spcmapfile are bytes exactly as the server produced them.
  Leaving the context without stop() aborts the backup (pg_backup_stop without waiting, or
  closing the session, which makes the server abort it). A connection that dies mid-backup
  (pg_terminate_backend, server crash) raises `BackupAbortedError`; the server aborts a
  non-exclusive backup itself when its session ends, so nothing is left in backup mode.
- `conn.switch_wal()`, `conn.create_restore_point(name)` -> LSN text; `conn.cancel()` cancels
  the running statement from another thread (a window deadline uses it).
- `EXCLUDES` — the files PostgreSQL's documentation says to leave out of a base backup, as
  gitignore patterns relative to the data directory (for BackupRequest.excludes).
- `write_recovery(target_dir, labelfile, spcmapfile, restore_command, ...)` and
  `recovery_stream(...)` — re-exported from daemon/databases/postgres/recovery.py (no server needed): turn a
  restored copy of the data directory (on disk, or as a restore record stream) into one that
  PostgreSQL recovers from the WAL archive, to the backup's consistent point ('immediate',
  the default), a time or an LSN, then promotes. Also parse_label, lsn_to_int,
  wal_segment_name, is_wal_file_name.

What always holds: every error raised is a CairnError with a one-line message that names the
database; connecting is bounded by connect_timeout, pg_backup_stop by a statement timeout, and
any statement can be cancelled from another thread with cancel().
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
from cairn.daemon.databases.postgres.recovery import (  # noqa: F401 - part of this module's API
    RecoveryPlan,
    int_to_lsn,
    is_wal_file_name,
    lsn_to_int,
    parse_label,
    recovery_settings,
    recovery_stream,
    wal_segment_name,
    write_recovery,
)
from cairn.errors import (
    AbortedError,
    BackendError,
    DeadlineError,
    FailedPreconditionError,
    InvalidArgumentError,
)

# Paths of a data directory left out of a base backup, per the PostgreSQL documentation
# ("Making a Base Backup Using the Low Level API") and pg_basebackup's own exclusion list.
# gitignore patterns relative to the data directory; a leading '/' anchors at its top.
EXCLUDES: tuple[str, ...] = (
    "/pg_wal/*",                 # WAL comes from the archive; the directory itself is kept
    "/postmaster.pid",
    "/postmaster.opts",
    "/pg_replslot/*",
    "/pg_dynshmem/*",
    "/pg_notify/*",
    "/pg_serial/*",
    "/pg_snapshots/*",
    "/pg_stat_tmp/*",
    "/pg_subtrans/*",
    "pgsql_tmp*",                # temporary files and directories, also inside tablespaces
    "pg_internal.init",          # relation cache init files, rebuilt at start
    "/backup_label",             # of an older backup: the set stores its own labelfile
    "/tablespace_map",
    "/backup_manifest",
    "/postgresql.auto.conf.tmp",
    "/current_logfiles.tmp",
    "/base/*/t[0-9]*_[0-9]*",    # temporary relations of sessions (t<backend>_<relfilenode>)
)

BACKUP_FUNCTIONS = (
    "pg_backup_start(text, boolean)",
    "pg_backup_stop(boolean)",
    "pg_switch_wal()",
    "pg_create_restore_point(text)",
)


# -- errors ----------------------------------------------------------------------------------


class DatabaseUnavailableError(FailedPreconditionError):
    """The database cannot be used for a backup: no connection, no rights, wrong pgdata."""


class BackupAbortedError(AbortedError):
    """A base backup ended before pg_backup_stop returned (connection lost, cancelled)."""


class DatabaseError(BackendError):
    """A statement on the server failed for a reason other than a lost connection."""


def one_line(exc: BaseException | str) -> str:
    """The primary message of a psycopg2 error (or any text): its first line, without severity.

    libpq continues messages on indented lines ("Is the server running...") and the server
    adds DETAIL/HINT lines; the first line is the one that says what happened.
    """
    text = exc if isinstance(exc, str) else (getattr(exc, "pgerror", None) or str(exc))
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    line = parts[0] if parts else type(exc).__name__
    return re.sub(r"^(ERROR|FATAL):\s+", "", line)


# -- value types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tablespace:
    """A user tablespace: its oid (the name of its pg_tblspc symlink) and its directory."""

    oid: int
    name: str
    location: str


@dataclass(frozen=True)
class PgInfo:
    """What a set records about the server it captured."""

    server_version: str
    server_version_num: int
    system_identifier: int
    timeline: int
    data_directory: str
    tablespaces: tuple[Tablespace, ...]
    archive_mode: str
    archive_command: str
    wal_segment_size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the 64-bit system identifier as a string)."""
        return {
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "system_identifier": str(self.system_identifier),
            "timeline": self.timeline,
            "data_directory": self.data_directory,
            "tablespaces": [{"oid": t.oid, "name": t.name, "location": t.location} for t in self.tablespaces],
            "archive_mode": self.archive_mode,
            "archive_command": self.archive_command,
            "wal_segment_size": self.wal_segment_size,
        }


@dataclass(frozen=True)
class BackupStart:
    """The result of pg_backup_start: the backup's start LSN and the timeline it is on."""

    lsn: str
    timeline: int
    wal_file: str
    time: float


@dataclass(frozen=True)
class BackupStop:
    """The result of pg_backup_stop: stop LSN and the two files to lay down at restore, byte-exact."""

    lsn: str
    labelfile: bytes
    spcmapfile: bytes
    wal_file: str
    time: float


# -- connection ------------------------------------------------------------------------------


class PgConnection:
    """One autocommit psycopg2 connection to the server of a configured database."""

    def __init__(self, raw: Any, name: str) -> None:
        self._raw = raw
        self.name = name
        self._lock = threading.Lock()

    @classmethod
    def open(cls, dsn: str, pgdata: str | None = None, *, name: str = "postgres",
             connect_timeout: int = 10, check_rights: bool = True,
             require_archiving: bool = True) -> PgConnection:
        """Connect and run the pre-window checks; see the module docstring.

        With `require_archiving` the server must also archive WAL (wal_level replica or
        logical, archive_mode on or always): a base backup without its WAL cannot be restored.
        """
        try:
            raw = psycopg2.connect(dsn, connect_timeout=connect_timeout, application_name="cairn")
        except psycopg2.Error as e:
            raise DatabaseUnavailableError(f"unable to connect to database '{name}': {one_line(e)}") from None
        raw.autocommit = True
        conn = cls(raw, name)
        try:
            if check_rights:
                conn._check_rights()
            if pgdata is not None:
                conn._check_pgdata(pgdata)
            if require_archiving:
                conn._check_archiving()
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def from_config(cls, db: Any, **kwargs: Any) -> PgConnection:
        """open() for a config object with .name, .dsn and .pgdata (DatabaseConfig)."""
        return cls.open(db.dsn, db.pgdata, name=db.name, **kwargs)

    # -- checks -----------------------------------------------------------------------------

    def _check_rights(self) -> None:
        row = self.query_one(
            "SELECT current_user, r.rolsuper, pg_has_role('pg_read_all_settings', 'MEMBER'), "
            + ", ".join(f"has_function_privilege('{f}', 'EXECUTE')" for f in BACKUP_FUNCTIONS)
            + " FROM pg_roles r WHERE r.rolname = current_user")
        role, superuser, settings_member, *executes = row
        if superuser:
            return
        missing = [f"EXECUTE on {f.split('(')[0]}" for f, ok in zip(BACKUP_FUNCTIONS, executes, strict=True)
                   if not ok]
        if not settings_member:
            missing.append("membership in pg_read_all_settings")
        if missing:
            raise DatabaseUnavailableError(
                f"role '{role}' lacks the rights for a base backup of database '{self.name}': "
                f"needs superuser or {', '.join(missing)}")

    def _check_archiving(self) -> None:
        wal_level, archive_mode = self.query_one(
            "SELECT current_setting('wal_level'), current_setting('archive_mode')")
        if wal_level not in ("replica", "logical"):
            raise DatabaseUnavailableError(
                f"database '{self.name}': wal_level is '{wal_level}'; a base backup needs 'replica'")
        if archive_mode not in ("on", "always"):
            raise DatabaseUnavailableError(
                f"database '{self.name}': archive_mode is '{archive_mode}'; WAL must be archived "
                "(archive_mode = on, archive_command = 'cairn wal-push %p')")

    def _check_pgdata(self, pgdata: str) -> None:
        server_dir = self.query_one("SELECT current_setting('data_directory')")[0]
        if os.path.realpath(pgdata) != os.path.realpath(server_dir):
            raise DatabaseUnavailableError(
                f"database '{self.name}': configured pgdata '{pgdata}' is not the server's "
                f"data_directory '{server_dir}'")

    # -- queries ----------------------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows; errors become CairnErrors naming the database."""
        with self._lock:
            try:
                with self._raw.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall() if cur.description is not None else []
            except psycopg2.extensions.QueryCanceledError as e:
                raise DeadlineError(
                    f"statement on database '{self.name}' was cancelled: {one_line(e)}") from None
            except psycopg2.Error as e:
                # psycopg2 marks the connection closed when the session is gone, but not when the
                # server died under a statement ("server closed the connection unexpectedly": a
                # bare DatabaseError or OperationalError that no server sent, so no SQLSTATE); an
                # error on a live session (disk full, ...) carries one and is a statement failure
                if self._raw.closed or isinstance(e, psycopg2.InterfaceError) or (
                        e.pgcode is None and type(e) in (psycopg2.DatabaseError, psycopg2.OperationalError)):
                    raise BackupAbortedError(
                        f"lost the connection to database '{self.name}': {one_line(e)}") from None
                raise DatabaseError(f"statement failed on database '{self.name}': {one_line(e)}") from None

    def query_one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """Run a statement that returns exactly one row."""
        rows = self.query(sql, params)
        if len(rows) != 1:
            raise DatabaseError(f"statement on database '{self.name}' returned {len(rows)} rows, expected 1")
        return rows[0]

    def info(self) -> PgInfo:
        """Server facts a set records (see PgInfo)."""
        version, version_num, data_dir, mode, command, segsize = self.query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
            "current_setting('data_directory'), current_setting('archive_mode'), "
            "current_setting('archive_command'), "
            "(SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024 WHEN 'MB' THEN 1048576 "
            "ELSE 1 END FROM pg_settings WHERE name = 'wal_segment_size')")
        sysid = self.query_one("SELECT system_identifier FROM pg_control_system()")[0]
        timeline = self.query_one("SELECT timeline_id FROM pg_control_checkpoint()")[0]
        spcs = self.query(
            "SELECT oid, spcname, pg_tablespace_location(oid) FROM pg_tablespace "
            "WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid")
        return PgInfo(
            server_version=version, server_version_num=version_num, system_identifier=int(sysid),
            timeline=int(timeline), data_directory=data_dir,
            tablespaces=tuple(Tablespace(int(o), n, loc) for o, n, loc in spcs),
            archive_mode=mode, archive_command=command, wal_segment_size=int(segsize),
        )

    def switch_wal(self) -> str:
        """Force a switch to a new WAL segment (pg_switch_wal) and return its LSN."""
        return str(self.query_one("SELECT pg_switch_wal()::text")[0])

    def create_restore_point(self, name: str) -> str:
        """Create a named restore point (pg_create_restore_point) and return its LSN."""
        return str(self.query_one("SELECT pg_create_restore_point(%s)::text", (name,))[0])

    def current_lsn(self) -> str:
        """The current WAL write position."""
        return str(self.query_one("SELECT pg_current_wal_lsn()::text")[0])

    def backend_pid(self) -> int:
        """The server process id of this connection (for pg_terminate_backend in tests/ops)."""
        return int(self._raw.get_backend_pid())

    def base_backup(self) -> BaseBackup:
        """A BaseBackup on this connection (call start() on it, or use start() as a shortcut)."""
        return BaseBackup(self)

    def cancel(self) -> None:
        """Cancel the statement running on this connection; safe from any thread."""
        try:
            self._raw.cancel()
        except psycopg2.Error:
            pass

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

    def close(self) -> None:
        """Close the connection (the server aborts an unfinished base backup of this session)."""
        try:
            self._raw.close()
        except psycopg2.Error:
            pass

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- base backup -----------------------------------------------------------------------------


class BaseBackup:
    """A non-exclusive low-level base backup held on one PgConnection (see module docstring)."""

    def __init__(self, conn: PgConnection) -> None:
        self.conn = conn
        self.started: BackupStart | None = None
        self.stopped: BackupStop | None = None

    @property
    def active(self) -> bool:
        return self.started is not None and self.stopped is None

    def start(self, label: str, fast: bool = True) -> BackupStart:
        """pg_backup_start(label, fast); returns the start LSN and timeline."""
        if self.started is not None:
            raise InvalidArgumentError("base backup already started on this connection")
        try:
            lsn, walfile = self.conn.query_one(
                "SELECT lsn::text, pg_walfile_name(lsn) FROM pg_backup_start(%s, %s) AS lsn", (label, fast))
            timeline = self.conn.query_one("SELECT timeline_id FROM pg_control_checkpoint()")[0]
        except BackupAbortedError as e:
            raise BackupAbortedError(f"base backup of database '{self.conn.name}' could not start: "
                                     f"{e.message}") from None
        self.started = BackupStart(lsn=str(lsn), timeline=int(timeline), wal_file=str(walfile),
                                   time=time.time())
        return self.started

    def ping(self) -> None:
        """Raise BackupAbortedError if the backup's session has gone away."""
        self._require_active()
        self._abortable(lambda: self.conn.query_one("SELECT 1"))

    def stop(self, timeout: float = 600.0, force_switch: bool = True, wait_for_archive: bool = True) -> BackupStop:
        """Finish the backup: switch WAL, pg_backup_stop(wait_for_archive) within `timeout`.

        Raises DeadlineError when archiving of the last segment takes longer than `timeout`
        (the backup is then over server-side but unusable) and BackupAbortedError when the
        session was lost. Without `wait_for_archive` it returns as soon as the backup-end record
        is written (the server still switches to a new segment, so the last one is archived
        soon): the caller must then make sure the WAL up to the stop LSN is archived before it
        relies on the backup (capture.py waits for it in the repository).
        """
        self._require_active()

        def run() -> BackupStop:
            # The server switches WAL in pg_backup_stop itself; the explicit switch first also
            # closes a start segment on an idle server so it is archived without waiting.
            if force_switch and wait_for_archive:
                self.conn.query("SELECT pg_switch_wal()")
            self.conn.query("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout * 1000)}",))
            try:
                enc = self.conn.query_one("SELECT current_setting('server_encoding')")[0]
                lsn, label, spcmap = self.conn.query_one(
                    "SELECT lsn::text, convert_to(labelfile, %s), convert_to(spcmapfile, %s) "
                    "FROM pg_backup_stop(%s)", (enc, enc, wait_for_archive))
            finally:
                if not self.conn.closed:
                    try:
                        self.conn.query("SELECT set_config('statement_timeout', '0', false)")
                    except BackupAbortedError:
                        pass
            walfile = self.conn.query_one("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,))[0]
            return BackupStop(lsn=str(lsn), labelfile=bytes(label), spcmapfile=bytes(spcmap or b""),
                              wal_file=str(walfile), time=time.time())

        try:
            self.stopped = self._abortable(run)
        except DeadlineError as e:
            self.stopped = None
            self.abort()  # cancelled before pg_backup_stop ran: end the backup now
            if "user request" in e.message:
                raise BackupAbortedError(f"base backup of database '{self.conn.name}' was cancelled "
                                         "while waiting for WAL archiving") from None
            raise DeadlineError(f"base backup of database '{self.conn.name}' did not finish within "
                                f"{timeout:g}s waiting for WAL archiving: {e.message}") from None
        return self.stopped

    def abort(self) -> None:
        """End an unfinished backup without waiting for archiving; the result is discarded."""
        if not self.active:
            return
        self.started = None
        if self.conn.closed:
            return
        try:
            self.conn.query("SELECT set_config('statement_timeout', '10000', false)")
            try:
                self.conn.query("SELECT pg_backup_stop(false)")
            except DatabaseError as e:
                if "is not in progress" not in e.message:  # already ended server-side is fine
                    raise
            self.conn.query("SELECT set_config('statement_timeout', '0', false)")
        except Exception:  # noqa: BLE001 - any failure: closing the session aborts the backup
            self.conn.close()

    def __enter__(self) -> BaseBackup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def _require_active(self) -> None:
        if self.started is None:
            raise InvalidArgumentError(f"no base backup running on database '{self.conn.name}'")
        if self.stopped is not None:
            raise InvalidArgumentError(f"base backup of database '{self.conn.name}' already stopped")

    def _abortable(self, fn: Any) -> Any:
        try:
            return fn()
        except BackupAbortedError as e:
            self.started = None
            raise BackupAbortedError(
                f"base backup of database '{self.conn.name}' aborted: {e.message}; "
                "the server ended the backup with the session") from None
