"""restore-db --delta mends an earlier copy of a data directory in place: a restored copy that
lived on (a new timeline, new rows, a new table) and was then damaged is brought back to the
set with a fraction of its bytes written, a real PostgreSQL 15 recovers on it and holds the
set's rows and nothing later. Refusals come before anything changes (not a data directory, a
server running on it, --stream), a delta cut short by a kill leaves a directory without
global/pg_control (PostgreSQL refuses it) that the next delta finishes, and `restore --databases
--delta` mends the files and the database of an application together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgstack import CAIRN, PG_BIN, ArchivingServer, Stack, app_stack, make_pg_dir

COUNT = "SELECT count(*) || ':' || md5(string_agg(pad, ',' ORDER BY id)) FROM t"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # encrypted, as a repository is by default: its chunk ids are keyed, and the delta compares with that key
    with app_stack("cairn-dbdelta-", tree="app/files", passphrase="db delta") as st:
        yield st


def du(root: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(root) for f in fs)


def start_on(stack: Stack, data: Path) -> ArchivingServer:
    srv = ArchivingServer(pgdata=data)
    stack.restored.append(srv)
    srv.start(timeout=120)
    srv.wait_promoted()
    return srv


def test_delta_mends_a_copy_that_lived_on_and_was_damaged(stack: Stack) -> None:
    stack.psql("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    stack.psql("INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g")
    want = stack.psql(COUNT)
    (stack.root / "app/files/doc.txt").write_text("v1\n")
    s = stack.backup("app")

    srv = stack.restore_db(s["id"])
    data = srv.pgdata
    t_file = data / srv.psql("SELECT pg_relation_filepath('t')")
    # the copy lives on: more rows, a table the set never held, a checkpoint, a new timeline
    srv.psql("INSERT INTO t SELECT g, 'later' FROM generate_series(60001, 60100) g")
    srv.psql("CREATE TABLE later AS SELECT g FROM generate_series(1, 200000) g")
    later_file = data / srv.psql("SELECT pg_relation_filepath('later')")
    srv.psql("CHECKPOINT")
    srv.stop()
    # ...and is damaged
    damaged = os.path.getsize(t_file) // 2
    with open(t_file, "r+b") as f:
        f.truncate(damaged)
    os.unlink(data / "PG_VERSION")  # put back below: the refusal first
    total = du(data)

    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(data), "--delta")
    assert r.returncode == 1 and "is not a PostgreSQL data directory (it holds no PG_VERSION)" in r.stderr, r.stderr
    assert later_file.exists() and not [n for n in os.listdir(data) if n.startswith(".cairn-claim-")]
    (data / "PG_VERSION").write_text("15\n")
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(data), "--delta", "--stream")
    assert r.returncode == 2 and "run by the daemon on its own host" in r.stderr, r.stderr
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(data))
    assert r.returncode == 1 and "--delta" in r.stderr and "--overwrite" not in r.stderr, r.stderr

    out = json.loads(stack.ok("--json", "restore-db", s["id"], "--database", "appdb", "--target", str(data),
                              "--delta", timeout=300))
    assert out["written_by"] == "daemon" and out["errors"] == [], out
    assert out["files_checked"] > 100 and out["deleted"] >= 1, out
    # what it wrote: the damage, the files the copy changed, and those of the set's own WAL segments
    # (placed in pg_wal/ as by any restore-db) the copy no longer held - not the tree
    assert damaged <= out["bytes_written"] < total // 2, (out, total)
    assert not later_file.exists()  # what the set does not hold is gone
    assert (data / "recovery.signal").exists() and (data / "global" / "pg_control").exists()
    assert os.stat(data).st_mode & 0o777 == 0o700

    # the same delta again finds nothing to do (the placed WAL included) but pg_control, which every
    # delta takes away first and writes last
    again = json.loads(stack.ok("--json", "restore-db", s["id"], "--database", "appdb", "--target", str(data),
                                "--delta", timeout=300))
    assert (again["files_written"], again["bytes_written"], again["deleted"], again["errors"]) == \
        (1, 8192, 0, []), again
    # a pg_wal that is a link is never written through (it may lead to a live server's WAL)
    os.rename(data / "pg_wal", data.parent / "wal-elsewhere")
    os.symlink(data.parent / "wal-elsewhere", data / "pg_wal")
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(data), "--delta")
    assert r.returncode == 1 and "is a symbolic link" in r.stderr, r.stderr
    os.unlink(data / "pg_wal")
    os.rename(data.parent / "wal-elsewhere", data / "pg_wal")

    srv2 = start_on(stack, data)
    assert srv2.psql(COUNT) == want
    assert srv2.psql("SELECT to_regclass('later') IS NULL") == "t"
    # a server running on it: refused, and the server is untouched
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(data), "--delta")
    assert r.returncode == 1 and "may be running" in r.stderr and "postmaster.pid" in r.stderr, r.stderr
    assert srv2.psql("SELECT 1") == "1"
    srv2.stop()


def test_a_delta_cut_short_leaves_no_startable_directory_and_the_next_finishes(stack: Stack) -> None:
    stack.psql("CREATE TABLE big (id int, pad text)")
    stack.psql("INSERT INTO big SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 120000) g")
    want = stack.psql("SELECT count(*) || ':' || md5(string_agg(pad, ',' ORDER BY id)) FROM big")
    s = stack.backup("app")
    srv = stack.restore_db(s["id"])
    data = srv.pgdata
    big = data / srv.psql("SELECT pg_relation_filepath('big')")
    srv.stop()
    control = data / "global" / "pg_control"
    marker = data / "pg_wal" / "cairn-restore-db.wal"

    placed = [data / "pg_wal" / n for n in marker.read_text().split()]

    def damage() -> None:
        for seg in [big, *sorted(big.parent.glob(big.name + ".*"))]:
            if seg.name.split(".")[-1].isdigit() or seg == big:
                seg.unlink()  # every segment of the big table: the delta writes it all again
        for f in (marker, *placed):
            f.unlink(missing_ok=True)  # and the placed WAL

    def delta() -> subprocess.Popen:
        return subprocess.Popen([CAIRN, "--socket", str(stack.sock), "restore-db", s["id"], "--database", "appdb",
                                 "--target", str(data), "--delta"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_for(cond, cli: subprocess.Popen) -> None:
        deadline = time.monotonic() + 60
        while not cond():
            assert time.monotonic() < deadline and cli.poll() is None, cli.communicate()
            time.sleep(0.001)

    # pg_control is removed first and comes back last: when it is there again, the table and the
    # placed WAL are already written (the daemon is stopped the moment it appears, and looked at)
    damage()
    cli = delta()
    wait_for(lambda: not control.exists(), cli)
    wait_for(control.exists, cli)
    pid = stack.daemon.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        assert marker.exists() and big.exists()
        assert all(f.exists() and f.stat().st_size == 16 << 20 for f in placed)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert cli.wait(timeout=120) == 0, cli.communicate()

    damage()
    cli = delta()
    wait_for(lambda: not control.exists(), cli)
    stack.kill_daemon()  # killed while it writes the table
    cli.communicate(timeout=60)
    assert not control.exists()
    r = subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "global/pg_control" in r.stderr, r.stderr  # PostgreSQL refuses this directory

    stack.start_daemon()
    out = json.loads(stack.ok("--json", "restore-db", s["id"], "--database", "appdb", "--target", str(data),
                              "--delta", timeout=300))
    assert out["errors"] == [] and control.exists()
    srv2 = start_on(stack, data)
    assert srv2.psql("SELECT count(*) || ':' || md5(string_agg(pad, ',' ORDER BY id)) FROM big") == want
    srv2.stop()


def test_restore_databases_delta_mends_files_and_database_together(stack: Stack) -> None:
    files = stack.root / "app/files"
    (files / "doc.txt").write_text("application v2\n")
    stack.psql("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text)")
    stack.psql("INSERT INTO notes VALUES (1, 'captured') ON CONFLICT DO NOTHING")
    s = stack.backup("app")
    holder = make_pg_dir("cairn-dbdelta-app-")
    stack.holders.append(holder)
    target, place = holder / "files", holder / "pg"
    stack.ok("restore", s["id"], "--target", str(target), "--databases", "--db-target", f"appdb={place}",
             timeout=300)
    (target / "doc.txt").write_text("damaged\n")
    (target / "extra.tmp").write_text("x")
    os.unlink(place / "PG_VERSION")
    (place / "PG_VERSION").write_text("15\n")  # content as before, metadata not
    os.chmod(place / "PG_VERSION", 0o644)
    dry = stack.ok("restore", s["id"], "--target", str(target), "--databases", "--db-target", f"appdb={place}",
                   "--delta", "--delete", "--dry-run")
    assert f"would mend database 'appdb' in {place}" in dry
    # a place that cannot be mended (a server may run on it) is refused before the files are touched
    (place / "postmaster.pid").write_text("4242\n")
    r = stack.cli("restore", s["id"], "--target", str(target), "--databases", "--db-target", f"appdb={place}",
                  "--delta", "--delete", timeout=300)
    assert r.returncode == 1 and "holds postmaster.pid" in r.stderr, (r.stdout, r.stderr)
    assert (target / "doc.txt").read_text() == "damaged\n" and (target / "extra.tmp").exists()
    os.unlink(place / "postmaster.pid")
    out = stack.ok("restore", s["id"], "--target", str(target), "--databases", "--db-target", f"appdb={place}",
                   "--delta", "--delete", timeout=300)
    assert f"mended database 'appdb' in {place}" in out and "start in this order:" in out, out
    assert (target / "doc.txt").read_text() == "application v2\n" and not (target / "extra.tmp").exists()
    assert os.stat(place / "PG_VERSION").st_mode & 0o777 == 0o600
    srv = start_on(stack, place)
    assert srv.psql("SELECT body FROM notes WHERE id = 1") == "captured"
    srv.stop()

