"""One command brings an application back: `cairn restore SET --target DIR --databases` writes the
set's files and lays down each of its databases ready for recovery; a real PostgreSQL 15 started
on the result recovers, and the rows and files match what the set captured (a relation file large
enough to be written as a lane among them)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from pgstack import ArchivingServer, Stack, app_stack, file_tree, make_pg_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with app_stack("cairn-app-", tree="app/files") as st:
        (st.root / "app/files/blobs").mkdir()
        yield st


def test_restore_files_and_database_with_one_command(stack: Stack) -> None:
    files = stack.root / "app/files"
    stack.psql("CREATE TABLE docs (id int PRIMARY KEY, path text, digest text)")
    for i in range(20):
        body = os.urandom(1000 + i)
        (files / "blobs" / f"b{i}.bin").write_bytes(body)
        stack.psql(f"INSERT INTO docs VALUES ({i}, 'blobs/b{i}.bin', md5(decode('{body.hex()}', 'hex')))")
    captured_rows = stack.psql("SELECT string_agg(id || ':' || path || ':' || digest, ',' ORDER BY id) FROM docs")
    # a relation file large enough to be written as a lane by the daemon (restore.LANE_FROM)
    stack.psql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || repeat('y', 900) AS pad "
               "FROM generate_series(1, 24000) g")
    assert int(stack.psql("SELECT pg_relation_size('bulk')")) >= 17 << 20
    bulk = "SELECT count(*) || ':' || md5(string_agg(pad, ',' ORDER BY id)) FROM bulk"
    captured_bulk = stack.psql(bulk)
    captured_files = file_tree(str(files))
    s = stack.backup("app")
    # changes after the set must not come back
    stack.psql("INSERT INTO docs VALUES (100, 'blobs/later.bin', 'x')")
    (files / "blobs" / "later.bin").write_bytes(b"later")

    holder = make_pg_dir("cairn-app-target-")
    stack.holders.append(holder)
    target = holder / "app"
    dry = stack.ok("restore", s["id"], "--target", str(target), "--databases", "--dry-run")
    assert f"would lay down database 'appdb' in {target}-db-appdb" in dry and not target.exists()

    out = stack.ok("restore", s["id"], "--target", str(target), "--databases", "--verify", timeout=300)
    dbdir = holder / "app-db-appdb"
    lines = out.splitlines()
    order = lines.index("start in this order:")
    assert f"PostgreSQL for 'appdb' on {dbdir}" in lines[order + 1] and "the application" in lines[order + 2]
    assert "verified" in out
    assert file_tree(str(target)) == captured_files

    # recovery stops at the set's own point: a segment after the placed WAL is answered at once
    placed = (dbdir / "pg_wal" / "cairn-restore-db.wal").read_text().split()
    last = placed[-1]
    after = f"{last[:16]}{int(last[16:], 16) + 1:08X}"
    r = stack.cli("wal-fetch", after, str(dbdir / "pg_wal" / "RECOVERYXLOG"))
    assert r.returncode == 3 and "own point" in r.stderr
    assert (dbdir / "pg_wal" / "cairn-restore-db.own-point").exists()

    srv = ArchivingServer(pgdata=dbdir)
    stack.restored.append(srv)
    srv.start(timeout=120)
    srv.wait_promoted()
    assert not (dbdir / "pg_wal" / "cairn-restore-db.own-point").exists()  # recovery_end_command
    assert srv.psql("SELECT string_agg(id || ':' || path || ':' || digest, ',' ORDER BY id) FROM docs") == \
        captured_rows
    assert srv.psql(bulk) == captured_bulk
    # every row's file is there with the content the row describes
    for row in srv.psql("SELECT path || '|' || digest FROM docs ORDER BY id").splitlines():
        path, digest = row.split("|")
        body = (target / path).read_bytes()
        assert srv.psql(f"SELECT md5(decode('{body.hex()}', 'hex'))") == digest
    srv.stop()


def test_databases_at_a_chosen_place_and_refusals(stack: Stack) -> None:
    s = stack.sets("app")[-1]
    holder = make_pg_dir("cairn-app-target2-")
    stack.holders.append(holder)
    target, place = holder / "files", holder / "pg"
    r = stack.cli("restore", s["id"], "--target", str(target), "--databases", "--db-target", "nosuch=/tmp/x")
    assert r.returncode == 2 and "does not hold" in r.stderr and not target.exists()
    (holder / "files-db-appdb").mkdir()
    (holder / "files-db-appdb" / "keep").write_text("mine")
    r = stack.cli("restore", s["id"], "--target", str(target), "--databases")
    assert r.returncode == 1 and "not an empty directory" in r.stderr and not target.exists()
    r = stack.cli("restore-db", s["id"], "--database", "nosuch", "--target", str(holder / "x"))
    assert r.returncode == 3 and not (holder / "x").exists()  # refused: nothing left behind
    out = stack.ok("--json", "restore", s["id"], "--target", str(target), "--databases", "--db-target",
                   f"appdb={place}", timeout=300)
    assert (place / "PG_VERSION").is_file() and (place / "recovery.signal").is_file()
    doc = json.loads(out)
    assert doc["target"] == str(target) and doc["files"] >= 20
    assert doc["databases"][0]["written_by"] == "daemon"  # same host: the daemon wrote it
    assert [d["target"] for d in doc["databases"]] == [str(place)]
    assert doc["start_order"] == ["database appdb", "application"]
    assert (holder / "files-db-appdb" / "keep").read_text() == "mine"


def test_restore_db_written_by_the_daemon_equals_the_streamed_one(stack: Stack) -> None:
    s = stack.sets("app")[-1]
    holder = make_pg_dir("cairn-app-target3-")
    stack.holders.append(holder)
    local, streamed = holder / "local", holder / "streamed"
    out = stack.ok("restore-db", s["id"], "--database", "appdb", "--target", str(local), timeout=300)
    assert "written by the daemon" in out
    out = stack.ok("restore-db", s["id"], "--database", "appdb", "--target", str(streamed), "--stream", timeout=300)
    assert "written by the daemon" not in out
    a, b = file_tree(str(local)), file_tree(str(streamed))
    assert set(a) == set(b) and all(a[k] == b[k] for k in a)
    assert oct(os.stat(local).st_mode & 0o777) == oct(os.stat(streamed).st_mode & 0o777) == "0o700"
    assert os.stat(local / "PG_VERSION").st_uid == os.stat(streamed / "PG_VERSION").st_uid
