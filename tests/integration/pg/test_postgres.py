"""The PostgreSQL adapter against a real PostgreSQL 15 server: checks, base backups, faults, restore."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cairn.daemon.databases.postgres.connection import (
    EXCLUDES,
    BackupAbortedError,
    DatabaseError,
    DatabaseUnavailableError,
    PgConnection,
    lsn_to_int,
    parse_label,
    recovery_stream,
    wal_segment_name,
    write_recovery,
)
from cairn.errors import DeadlineError
from cairn.fsio.writer import TreeWriter
from pgserver import PgServer, make_pg_dir


def wait_archived(pg: PgServer, name: str, timeout: float = 30.0) -> Path:
    assert pg.archive_dir is not None
    path = pg.archive_dir / name
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            pytest.fail(f"WAL file {name} was not archived in {timeout}s")
        time.sleep(0.05)
    return path


# -- harness ---------------------------------------------------------------------------------


def test_harness_start_stop_restart_kill() -> None:
    with PgServer() as pg:
        pg.start()
        assert pg.running()
        assert pg.psql("SHOW wal_level") == "replica"
        assert pg.psql("SELECT current_setting('port')") == str(pg.port)
        pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        pg.stop()
        assert not pg.running() and pg.postmaster_pid() is None
        pg.start()
        assert pg.psql("SELECT count(*) FROM t") == "2"
        pg.kill()
        assert not pg.running()
        pg.start()  # crash recovery
        assert pg.psql("SELECT sum(x) FROM t") == "3"
        root = pg.root
    assert not root.exists()


def test_harness_psql_reports_errors(pg: PgServer) -> None:
    with pytest.raises(RuntimeError, match='relation "no_such_table" does not exist'):
        pg.psql("SELECT * FROM no_such_table")


# -- connection checks -----------------------------------------------------------------------


def test_open_accepts_matching_pgdata_also_through_a_symlink(pg: PgServer, tmp_path: Path) -> None:
    link = tmp_path / "pgdata-link"
    link.symlink_to(pg.pgdata)
    with PgConnection.open(pg.dsn, str(link), name="appdb") as conn:
        assert conn.query_one("SELECT 1") == (1,)


def test_open_rejects_wrong_pgdata_naming_both(pg: PgServer, tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError) as ei:
        PgConnection.open(pg.dsn, str(tmp_path), name="appdb")
    msg = str(ei.value)
    assert msg == (f"database 'appdb': configured pgdata '{tmp_path}' is not the server's "
                   f"data_directory '{pg.pgdata}'")


def test_open_reports_a_dsn_that_does_not_connect(pg: PgServer) -> None:
    dsn = f"host={pg.sockdir} port=1 user=postgres dbname=postgres"
    with pytest.raises(DatabaseUnavailableError) as ei:
        PgConnection.open(dsn, str(pg.pgdata), name="appdb")
    msg = str(ei.value)
    assert msg.startswith("unable to connect to database 'appdb': connection to server on socket")
    assert "\n" not in msg
    with pytest.raises(DatabaseUnavailableError, match='database "nosuchdb" does not exist'):
        PgConnection.open(pg.dsn_for(dbname="nosuchdb"), name="appdb")


def test_open_rejects_a_role_without_backup_rights_then_accepts_granted_one(pg: PgServer) -> None:
    pg.psql("DROP ROLE IF EXISTS cairn_plain; CREATE ROLE cairn_plain LOGIN")
    with pytest.raises(DatabaseUnavailableError) as ei:
        PgConnection.open(pg.dsn_for(user="cairn_plain"), str(pg.pgdata), name="appdb")
    assert str(ei.value) == (
        "role 'cairn_plain' lacks the rights for a base backup of database 'appdb': needs superuser or "
        "EXECUTE on pg_backup_start, EXECUTE on pg_backup_stop, EXECUTE on pg_switch_wal, "
        "EXECUTE on pg_create_restore_point, membership in pg_read_all_settings")
    pg.psql("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean), "
            "pg_switch_wal(), pg_create_restore_point(text) TO cairn_plain; "
            "GRANT pg_read_all_settings TO cairn_plain")
    with PgConnection.open(pg.dsn_for(user="cairn_plain"), str(pg.pgdata), name="appdb") as conn:
        with conn.base_backup() as bb:
            bb.start("cairn non-superuser")
            stop = bb.stop()
        assert stop.labelfile.startswith(b"START WAL LOCATION")


def test_open_requires_wal_archiving() -> None:
    with PgServer() as pg:
        pg.start()
        with pytest.raises(DatabaseUnavailableError) as ei:
            PgConnection.open(pg.dsn, str(pg.pgdata), name="appdb")
        assert str(ei.value) == ("database 'appdb': archive_mode is 'off'; WAL must be archived "
                                 "(archive_mode = on, archive_command = 'cairn wal-push %p')")
        pg.settings.update({"wal_level": "minimal", "max_wal_senders": "0"})
        pg.restart()
        with pytest.raises(DatabaseUnavailableError, match="wal_level is 'minimal'"):
            PgConnection.open(pg.dsn, str(pg.pgdata), name="appdb")
        PgConnection.open(pg.dsn, str(pg.pgdata), require_archiving=False).close()


def test_info_reports_server_facts_and_tablespaces(pg: PgServer) -> None:
    spc = make_pg_dir("cairn-spc-")
    try:
        pg.psql(f"CREATE TABLESPACE cairn_spc LOCATION '{spc}'")
        with PgConnection.open(pg.dsn, str(pg.pgdata)) as conn:
            info = conn.info()
        out = subprocess.run([pg.bin("pg_controldata"), str(pg.pgdata)], capture_output=True, text=True,
                             check=True).stdout
        sysid = next(ln.split(":")[1].strip() for ln in out.splitlines()
                     if ln.startswith("Database system identifier"))
        assert info.system_identifier == int(sysid)
        assert info.server_version.startswith("15.") and 150000 <= info.server_version_num < 160000
        assert info.timeline == 1
        assert info.data_directory == str(pg.pgdata)
        assert info.archive_mode == "on" and info.archive_command.startswith("cp %p ")
        assert info.wal_segment_size == 16 * 1024 * 1024
        oid = int(pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'cairn_spc'"))
        assert [(t.oid, t.name, t.location) for t in info.tablespaces] == [(oid, "cairn_spc", str(spc))]
        assert os.readlink(pg.pgdata / "pg_tblspc" / str(oid)) == str(spc)
        assert info.to_dict()["system_identifier"] == sysid
    finally:
        pg.psql("DROP TABLESPACE IF EXISTS cairn_spc")
        subprocess.run(["rm", "-rf", str(spc)], check=False)


# -- base backup -----------------------------------------------------------------------------


def test_base_backup_start_stop_returns_lsns_label_and_waits_for_archive(pg: PgServer) -> None:
    with PgConnection.open(pg.dsn, str(pg.pgdata)) as conn:
        with conn.base_backup() as bb:
            start = bb.start("cairn test label", fast=True)
            pg.psql("CREATE TABLE IF NOT EXISTS during (x int); INSERT INTO during VALUES (1)")
            stop = bb.stop()
        assert start.timeline == 1
        assert lsn_to_int(stop.lsn) > lsn_to_int(start.lsn)
        assert start.wal_file == wal_segment_name(1, start.lsn)
        label = parse_label(stop.labelfile)
        assert stop.labelfile.startswith(b"START WAL LOCATION")
        assert label["START WAL LOCATION"] == f"{start.lsn} (file {start.wal_file})"
        assert label["LABEL"] == "cairn test label" and label["START TIMELINE"] == "1"
        assert label["BACKUP METHOD"] == "streamed" and label["BACKUP FROM"] == "primary"
        assert stop.spcmapfile == b""
        # wait_for_archive: the stop segment and the backup history file are archived on return
        assert pg.archive_dir is not None
        assert (pg.archive_dir / stop.wal_file).exists()
        backup_files = [n for n in os.listdir(pg.archive_dir) if n.endswith(".backup")]
        assert any(n.startswith(start.wal_file) for n in backup_files)
        # the connection stays usable for the next one
        with conn.base_backup() as bb2:
            bb2.start("second")
            assert bb2.stop().labelfile.startswith(b"START WAL LOCATION")


def test_backup_on_idle_server_finishes_and_archives_its_last_segment(fresh_pg: PgServer) -> None:
    # nothing but the backup writes WAL on this server
    with PgConnection.open(fresh_pg.dsn, str(fresh_pg.pgdata)) as conn:
        before = conn.current_lsn()
        bb = conn.base_backup()
        start = bb.start("idle", fast=True)
        stop = bb.stop(timeout=60)
        assert lsn_to_int(stop.lsn) >= lsn_to_int(start.lsn) >= lsn_to_int(before)
        assert fresh_pg.archive_dir is not None and (fresh_pg.archive_dir / stop.wal_file).exists()
        # an explicit switch on the now idle server moves to the next segment and archives it
        pos = conn.current_lsn()
        fresh_pg.psql("SELECT txid_current()")  # one record so the switch has a segment to close
        switched = conn.switch_wal()
        assert lsn_to_int(switched) >= lsn_to_int(pos)
        wait_archived(fresh_pg, wal_segment_name(1, switched))


def test_terminated_backup_connection_aborts_cleanly(fresh_pg: PgServer) -> None:
    pg = fresh_pg
    conn = PgConnection.open(pg.dsn, str(pg.pgdata), name="appdb")
    bb = conn.base_backup()
    bb.start("to be terminated")
    pid = conn.backend_pid()
    assert pg.psql(f"SELECT pg_terminate_backend({pid})") == "t"
    with pytest.raises(BackupAbortedError) as ei:
        bb.stop()
    msg = str(ei.value)
    assert msg.startswith("base backup of database 'appdb' aborted: lost the connection to database 'appdb': ")
    # libpq reports either the server's FATAL or the closed socket, depending on timing
    assert ("terminating connection due to administrator command" in msg
            or "server closed the connection unexpectedly" in msg)
    assert "\n" not in msg and msg.endswith("the server ended the backup with the session")
    bb.abort()  # a no-op now, must not raise
    conn.close()
    # the server ended the backup with the session: no session, a warning in its log
    for _ in range(100):
        if pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "0":
            break
        time.sleep(0.05)
    assert pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "0"
    assert "aborting backup due to backend exiting before pg_backup_stop was called" in pg.log_text()
    # and a new backup works on a new connection
    with PgConnection.open(pg.dsn, str(pg.pgdata), name="appdb") as conn2:
        with conn2.base_backup() as bb2:
            bb2.start("after abort")
            assert bb2.stop().labelfile.startswith(b"START WAL LOCATION")


def test_ping_detects_a_lost_backup_session(fresh_pg: PgServer) -> None:
    with PgConnection.open(fresh_pg.dsn, name="appdb") as conn:
        bb = conn.base_backup()
        bb.start("ping")
        bb.ping()
        fresh_pg.psql(f"SELECT pg_terminate_backend({conn.backend_pid()})")
        with pytest.raises(BackupAbortedError, match="aborted"):
            bb.ping()


def test_a_server_that_crashes_during_the_backup_is_a_lost_connection(fresh_pg: PgServer) -> None:
    """An immediate shutdown (what a crash looks like to a client) during the backup: the
    backup is reported aborted with the connection lost, not as a failed statement."""
    conn = PgConnection.open(fresh_pg.dsn, name="appdb")
    bb = conn.base_backup()
    bb.start("crash")
    fresh_pg.stop("immediate")
    with pytest.raises(BackupAbortedError) as ei:
        bb.stop()
    assert str(ei.value).startswith("base backup of database 'appdb' aborted: lost the connection to database "
                                    "'appdb': "), str(ei.value)
    bb.abort()  # a no-op now, must not raise
    conn.close()


def test_leaving_the_context_without_stop_ends_the_backup(pg: PgServer) -> None:
    with PgConnection.open(pg.dsn) as conn:
        with conn.base_backup() as bb:
            bb.start("left")
        assert not bb.active
        # the session is no longer in backup mode: starting again on it works
        with conn.base_backup() as bb2:
            bb2.start("again")
            bb2.stop()


def test_stop_never_waits_forever_for_a_failing_archive() -> None:
    with PgServer(settings={"archive_mode": "on", "archive_command": "/bin/false"}) as pg:
        pg.start()
        with PgConnection.open(pg.dsn, name="appdb") as conn:
            bb = conn.base_backup()
            bb.start("stuck archive")
            t0 = time.monotonic()
            with pytest.raises(DeadlineError, match="did not finish within 1s waiting for WAL archiving"):
                bb.stop(timeout=1)
            assert time.monotonic() - t0 < 30
            # cancel() from another thread (a window deadline) interrupts the wait too
            bb = conn.base_backup()
            bb.start("cancelled")
            threading.Timer(0.5, conn.cancel).start()
            with pytest.raises(BackupAbortedError, match="cancelled while waiting for WAL archiving"):
                bb.stop(timeout=120)
            assert conn.query_one("SELECT 1") == (1,)
            # the session is out of backup mode and still open: a new backup starts on it
            # (pg_backup_start refuses while this session is still in backup mode)
            with conn.base_backup() as bb3:
                bb3.start("after cancel")
                with pytest.raises(DatabaseError, match="a backup is already in progress in this session"):
                    conn.base_backup().start("nested")


def test_restore_point_is_written_to_wal(pg: PgServer) -> None:
    with PgConnection.open(pg.dsn) as conn:
        before = conn.current_lsn()
        lsn = conn.create_restore_point("cairn-set-abc")
        assert lsn_to_int(lsn) >= lsn_to_int(before)
        seg = wal_segment_name(1, lsn)
        conn.switch_wal()
    path = wait_archived(pg, seg)
    dump = subprocess.run([pg.bin("pg_waldump"), str(path)], capture_output=True, text=True, check=False).stdout
    assert "RESTORE_POINT" in dump and "cairn-set-abc" in dump


# -- end to end through the store ------------------------------------------------------------


def _owner_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


@contextmanager
def restored_server(repo: Any, backup_set: Any, labelfile: bytes, spcmapfile: bytes, wal_dir: Path,
                    streamed: bool = False, **target: str) -> Iterator[PgServer]:
    """Restore a set into a fresh directory, prepare recovery from `wal_dir`, run it to promotion.

    streamed=False: repo.restore then write_recovery on the directory. streamed=True: the way
    restore-db reaches a client: the set's record stream through recovery_stream into TreeWriter.
    """
    root = make_pg_dir("cairn-restore-")
    target_dir = root / "data"
    restore_command = f"cp {wal_dir}/%f %p"
    server: PgServer | None = None
    try:
        if streamed:
            writer = TreeWriter(str(target_dir))
            for rec in recovery_stream(repo.restore_stream(backup_set), labelfile, spcmapfile,
                                       restore_command, **target):
                writer.apply(rec)
            assert writer.finish().errors == []
            # owners come from the set (the writer runs as root); only the root entry is ours
            target_dir.chmod(0o700)
            os.chown(target_dir, *_owner_of(target_dir / "PG_VERSION"))
        else:
            repo.restore(backup_set, str(target_dir))
            pw = pwd.getpwnam("postgres")
            write_recovery(str(target_dir), labelfile, spcmapfile, restore_command,
                           owner=(pw.pw_uid, pw.pw_gid), **target)
        server = PgServer(pgdata=target_dir)
        server.start(timeout=120)
        server.wait_promoted()
        yield server
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def test_full_base_backup_through_the_store_restores_and_recovers(pg: PgServer, tmp_path: Path) -> None:
    from cairn.store.model import BackupRequest
    from cairn.store.repository import Repository

    assert pg.archive_dir is not None
    pg.psql("DROP TABLE IF EXISTS items; CREATE TABLE items (id int primary key, note text)")
    pg.psql("INSERT INTO items SELECT g, 'before ' || g FROM generate_series(1, 1000) g")
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    try:
        with PgConnection.open(pg.dsn, str(pg.pgdata), name="db") as conn:
            info = conn.info()
            with conn.base_backup() as bb:
                start = bb.start("cairn e2e")
                pg.psql("INSERT INTO items VALUES (5001, 'during')")  # only in WAL, must be replayed
                bset = repo.backup(BackupRequest(source="db", paths=(str(pg.pgdata),), excludes=EXCLUDES,
                                                 extra={"postgres": {"start_lsn": start.lsn,
                                                                     **info.to_dict()}}))
                pg.psql("INSERT INTO items VALUES (5002, 'during, late')")
                stop = bb.stop()
        pg.psql("INSERT INTO items VALUES (9001, 'after stop')")
        t_mark = pg.psql("SELECT clock_timestamp()")
        time.sleep(0.2)
        pg.psql("INSERT INTO items VALUES (9002, 'after mark')")
        seg = wal_segment_name(1, pg.psql("SELECT pg_current_wal_lsn()"))
        pg.psql("SELECT pg_switch_wal()")
        wait_archived(pg, seg)

        names = {e.name for e in repo.list_tree(bset, "")}
        assert "PG_VERSION" in names and "postmaster.pid" not in names
        assert [e.name for e in repo.list_tree(bset, "pg_wal")] == []

        # the set's own consistent point: everything committed before pg_backup_stop, nothing after
        with restored_server(repo, bset, stop.labelfile, stop.spcmapfile, pg.archive_dir, streamed=True) as srv:
            assert srv.psql("SELECT count(*) FROM items WHERE id <= 1000") == "1000"
            assert srv.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM items WHERE id > 1000") \
                == "5001,5002"
            assert srv.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"  # promoted

        # point in time: up to the mark, so 9001 is there and 9002 is not
        with restored_server(repo, bset, stop.labelfile, stop.spcmapfile, pg.archive_dir,
                             target_time=t_mark) as srv:
            assert srv.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM items WHERE id > 1000") \
                == "5001,5002,9001"
    finally:
        repo.close()


def test_tablespace_is_captured_and_relocated_at_restore(fresh_pg: PgServer, tmp_path: Path) -> None:
    from cairn.store.model import BackupRequest
    from cairn.store.repository import Repository

    pg = fresh_pg
    assert pg.archive_dir is not None
    spc = make_pg_dir("cairn-spc-")
    new_root = make_pg_dir("cairn-restore-")
    new_spc = new_root / "spc"
    target_dir = new_root / "data"
    server: PgServer | None = None
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    try:
        pg.psql(f"CREATE TABLESPACE ts LOCATION '{spc}'")
        pg.psql("CREATE TABLE tt (x int) TABLESPACE ts; INSERT INTO tt SELECT generate_series(1, 500)")
        with PgConnection.open(pg.dsn, str(pg.pgdata)) as conn:
            (ts,) = conn.info().tablespaces
            with conn.base_backup() as bb:
                bb.start("with tablespace")
                pg.psql("INSERT INTO tt VALUES (1000)")
                data_set = repo.backup(BackupRequest(source="db", paths=(str(pg.pgdata),), excludes=EXCLUDES))
                spc_set = repo.backup(BackupRequest(source="db-ts", paths=(ts.location,), excludes=EXCLUDES))
                stop = bb.stop()
        assert stop.spcmapfile == f"{ts.oid} {spc}\n".encode()

        repo.restore(spc_set, str(new_spc))
        new_spc.chmod(0o700)
        os.chown(new_spc, *_owner_of(spc))
        writer = TreeWriter(str(target_dir))
        for rec in recovery_stream(repo.restore_stream(data_set), stop.labelfile, stop.spcmapfile,
                                   f"cp {pg.archive_dir}/%f %p", tablespace_remap={ts.oid: str(new_spc)}):
            writer.apply(rec)
        assert writer.finish().errors == []
        assert (target_dir / "tablespace_map").read_bytes() == f"{ts.oid} {new_spc}\n".encode()
        target_dir.chmod(0o700)
        os.chown(target_dir, *_owner_of(target_dir / "PG_VERSION"))

        server = PgServer(pgdata=target_dir)
        server.start(timeout=120)
        server.wait_promoted()
        assert os.readlink(target_dir / "pg_tblspc" / str(ts.oid)) == str(new_spc)
        assert server.psql("SELECT count(*), max(x) FROM tt") == "501|1000"
        assert server.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'") \
            == str(new_spc)
    finally:
        repo.close()
        if server is not None:
            server.cleanup()
        shutil.rmtree(new_root, ignore_errors=True)
        pg.stop(mode="immediate")
        shutil.rmtree(spc, ignore_errors=True)
