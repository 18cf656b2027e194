"""Databases and WAL: restore-db (to a data directory or into a live database), the WAL
archive (push, fetch, health) and `cairn check-db`: a base-backup database (kind 'postgres')
gets checkdb's connection and archiving checks, a dump (kinds 'pg_dump', 'command') what its
sets need instead — its tools on PATH, a command database's `check` command and, for pg_dump,
a connection with its DSN — and WAL archiving is reported as not applying to it.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Callable, Iterator

from cairn import walnames
from cairn.daemon.databases.dump import CommandEngine, PgDumpEngine, find_tool
from cairn.daemon.databases.engine import KIND_COMMAND, KIND_POSTGRES
from cairn.daemon.databases.postgres import archwatch, checkdb, deltadb, restoredb, walarchive
from cairn.daemon.databases.restore import DumpRestoreResult, dump_files, dump_of, restorable_dumps, restore_dump
from cairn.daemon.operations.part import ProgressFn, ServicePart
from cairn.daemon.runtime.config import DatabaseConfig
from cairn.fsio import claims
from cairn.fsio.delta import DeltaPlan, DeltaStats
from cairn.fsio.records import LaneGauge, Record
from cairn.store.errors import AlreadyExistsError, CairnError, InvalidArgumentError
from cairn.store.model import BackupSet


class DatabasePart(ServicePart):
    """Restoring databases, archiving and serving WAL, checking a database is ready."""

    def restore_db_totals(self, s: BackupSet, database: str) -> tuple[int, int]:
        """(files, bytes) of the data directory (and tablespaces), or of the dump, a restore-db of
        `database` writes."""
        dump = dump_of(s, database)
        if dump is not None:
            att = s.attachments.get(dump.attachment) or {}
            return int(att.get("files") or 0), int(att.get("bytes_total") or 0)
        return restoredb.restore_db_totals(s, database)

    def restore_db(self, ref: str, source: str, database: str, target_time: str, target_lsn: str,
                   target_path: str = "", restore_command: str = "",
                   lanes: LaneGauge | None = None, target_timeline: str = "current", host: str = "",
                   fetch_with: str = "", target_end: bool = False,
                   accept_wal_gap: bool = False) -> tuple[BackupSet, Iterator[Record]]:
        """A set's database as records of a data directory that recovers to the target (the end
        of the WAL archive with `target_end`, or up to a gap in it with `accept_wal_gap`; on
        `target_timeline`), then promotes; a dump's files as stored."""
        s = self.resolve(ref, source, host)
        dump = dump_of(s, database)
        if dump is not None:  # its files as stored: no tool, no configuration needed (disaster recovery)
            if target_end:
                raise InvalidArgumentError(f"database '{database}' of set '{s.id[:8]}' is a dump: --target-end "
                                           "applies to a base backup only")
            return s, self._counted(dump_files(self.repo, s, dump, target_time, target_lsn, restore_command,
                                               target_timeline, lanes=lanes))
        records = restoredb.restore_db_records(self.repo, s, database, target_time, target_lsn,
                                               self._config.daemon.socket, target_path, restore_command,
                                               lanes=lanes, target_timeline=target_timeline, fetch_with=fetch_with,
                                               target_end=target_end, accept_wal_gap=accept_wal_gap)
        return s, self._counted(records)

    def check_restore_db(self, ref: str, source: str, database: str, target_time: str, target_lsn: str,
                         target_path: str = "", restore_command: str = "", target_timeline: str = "current",
                         host: str = "", fetch_with: str = "", target_end: bool = False,
                         accept_wal_gap: bool = False) -> BackupSet:
        """Every check restore_db (or restore_db_delta) of a base backup makes before it writes
        (restoredb.check_restore_db), and nothing else: `restore --databases` asks for each
        database before it writes anything. A dump is refused: it is not laid down here."""
        s = self.resolve(ref, source, host)
        if dump_of(s, database) is not None:
            raise InvalidArgumentError(f"database '{database}' of set '{s.id[:8]}' is a dump: only a base backup "
                                       "(kind 'postgres') is laid down as a data directory")
        restoredb.check_restore_db(self.repo, s, database, target_time, target_lsn, target_path, restore_command,
                                   target_timeline, fetch_with, target_end, accept_wal_gap)
        return s

    def restore_db_delta(self, ref: str, source: str, database: str, target_time: str, target_lsn: str,
                         target_path: str, nonce: str, restore_command: str = "", target_timeline: str = "current",
                         host: str = "", fetch_with: str = "", quick: bool = False,
                         cancelled: Callable[[], bool] | None = None, target_end: bool = False,
                         accept_wal_gap: bool = False) -> tuple[BackupSet, DeltaPlan, DeltaStats, list[str]]:
        """restore-db --delta: the client's claimed data directory on this host mended into the
        set's database, ready for recovery to the target (deltadb.py). Returns (set, plan, what
        changed, problems)."""
        s = self.resolve(ref, source, host)
        if dump_of(s, database) is not None:
            raise InvalidArgumentError(f"database '{database}' of set '{s.id[:8]}' is a dump: --delta mends a "
                                       "PostgreSQL data directory")
        p, st, problems = deltadb.mend_data_directory(
            self.repo, s, database, target_time, target_lsn, self._config.daemon.socket, target_path, nonce,
            restore_command, target_timeline=target_timeline, fetch_with=fetch_with, quick=quick,
            cancelled=cancelled, target_end=target_end, accept_wal_gap=accept_wal_gap)
        return s, p, st, problems

    def dsn_restorable(self, s: BackupSet) -> list[str]:
        """The set's dumps this daemon can restore into a database (restore-db --target-dsn)."""
        return restorable_dumps(self._config, s)

    def restore_db_to_dsn(self, ref: str, source: str, database: str, target_dsn: str,
                          progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                          host: str = "") -> tuple[BackupSet, DumpRestoreResult]:
        """A set's dump of `database` restored into the database `target_dsn` names, on this host
        (pg_restore, or the configured restore command: daemon/databases/restore.py)."""
        s = self.resolve(ref, source, host)
        return s, restore_dump(self.repo, self._config, s, database, target_dsn, progress, cancel)

    def check_db(self, name: str, timeout: float | None = None) -> checkdb.CheckResult:
        """`cairn check-db`: connection, archive_command and a forced segment switch (checkdb);
        for a dump, check_dump."""
        db = self._config.database(name)
        if db.kind != KIND_POSTGRES:
            return check_dump(db, self._config.daemon.state_dir)
        return checkdb.check_database(db, lambda ns: self.repo.list_wal(ns, flat=False),
                                      lambda: self.archive.snapshot([]).last_failure, timeout,
                                      observe=self.archiver_clocks.observe,
                                      here=archwatch.Listening.of(self._config.daemon))

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
            walarchive.check_complete_segment(name, data)
            namespace = walarchive.push_namespace(name, data, namespace)
            try:
                stored = self.repo.put_wal(name, data, namespace)
            except AlreadyExistsError as exc:
                exc.hint = exc.hint or walarchive.OTHER_CONTENT_HINT
                raise
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

    def write_wal_local(self, name: str, namespace: str, path: str, nonce: str) -> int:
        """Write WAL file `name` into the client's claim file `path` (cairn.fsio.claims.open_claimed_file)
        and return its size: the prefetcher's spool on this host gets the segment without it
        crossing gRPC. On any error the file is left empty."""
        _check_wal_name(name)
        fd = claims.open_claimed_file(path, nonce)
        try:
            return walarchive.write_wal_into(self.repo, name, walnames.namespace_of(namespace) if namespace else "",
                                             fd)
        finally:
            os.close(fd)


def check_dump(db: DatabaseConfig, state_dir: str) -> checkdb.CheckResult:
    """check-db of a dump-kind database: what its next set needs, as the set's own preparation
    checks it (the engine's prepare: the tools are found, a command database's `check` runs,
    pg_dump connects with its DSN and reads the server's version), and the restore tool. No dump
    runs; WAL archiving does not apply."""
    result = checkdb.CheckResult()
    step = checkdb.CheckStep
    if db.kind == KIND_COMMAND:
        tools = [("dump tool", db.dump[0] if db.dump else "")] + [("restore tool", db.restore[0])] * bool(db.restore)
        for what, tool in tools:
            try:
                result.steps.append(step(what, True, find_tool(tool, db.name)))
            except CairnError as exc:
                result.steps.append(step(what, False, exc.message))
        if db.check:  # what a set runs before its window: the server answers
            try:
                CommandEngine(db, "", state_dir).check()
                result.steps.append(step("check", True, f"{shlex.join(db.check)} exited with status 0"))
            except CairnError as exc:
                result.steps.append(step("check", False, exc.message))
    else:
        engine = PgDumpEngine(db, "", state_dir)
        try:
            engine.prepare()
            result.steps.append(step("connection", True, f"PostgreSQL {engine.server_version} over the DSN; "
                                                         f"pg_dump and pg_restore found ({engine.jobs} jobs)"))
        except CairnError as exc:
            result.steps.append(step("connection", False, exc.message))
    result.steps.append(step("archiving", True, f"does not apply: a dump (kind '{db.kind}') needs no WAL "
                                                "archive"))
    return result


def _check_wal_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgumentError(
            f"invalid WAL segment name '{name}': expected a file name like 000000010000000000000001"
        )
