"""Files and database as one set, end to end: real PostgreSQL 15 archiving through `cairn wal-push`
into a real cairnd, sets taken with `cairn backup`, restored with `cairn restore` and
`cairn restore-db`, and a server started on the restored data directory."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from pgstack import WRITER, Stack, make_pg_dir

PY = sys.executable


def psql_argv(stack: Stack, sql: str) -> list[str]:
    return [stack.pg.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(stack.pg.sockdir),
            "-p", str(stack.pg.port), "-U", "postgres", "-d", "postgres", "-c", sql]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-e2e-")
    for d in ("hot/content", "hot/index", "cold/content", "pitr/files"):
        (root / d).mkdir(parents=True)
    (root / "hot/index/segments.idx").write_bytes(b"index built before the database\n")
    (root / "pitr/files/readme.txt").write_text("pitr\n")
    sources = {
        "hot": {"paths": [str(root / "hot/content")], "aux_paths": [str(root / "hot/index")],
                "database": "appdb", "quiesce": {"mode": "hot"}},
        "pitr": {"paths": [str(root / "pitr/files")], "database": "appdb"},
    }
    st = Stack(root, sources)
    cold_pid = str(root / "cold/writer.pid")
    st.sources["cold"] = {
        "paths": [str(root / "cold/content")], "database": "appdb",
        "quiesce": {"mode": "cold", "freeze": [[PY, WRITER, "stop", cold_pid]],
                    "thaw": [[PY, WRITER, "start", st.pg.dsn, str(root / "cold/content"), "portal", cold_pid]],
                    "timeout": "30s", "max_window": "120s"},
    }
    st.sources["pitr"]["quiesce"] = {
        "mode": "cold", "freeze": [psql_argv(st, "INSERT INTO markers (id, note) VALUES (2, 'frozen')")],
        "thaw": [psql_argv(st, "INSERT INTO markers (id, note) VALUES (3, 'thawed')")]}
    st.write_config()
    try:
        yield st.start()
    finally:
        for pid in (cold_pid, str(root / "hot/writer.pid")):
            subprocess.run([PY, WRITER, "stop", pid], check=False, timeout=30)
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def wait_rows(stack: Stack, table: str, at_least: int, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while True:
        n = int(stack.psql(f"SELECT count(*) FROM {table}"))
        if n >= at_least:
            return n
        assert time.monotonic() < end, f"{table} has only {n} rows"
        time.sleep(0.05)


def rows(srv, table: str) -> dict[str, str]:
    out = srv.psql(f"SELECT name || ' ' || sha256 FROM {table} ORDER BY n")
    return dict(line.split(" ") for line in out.splitlines() if line)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hot_set_every_restored_row_finds_its_file(stack: Stack) -> None:
    root = stack.root
    stack.psql("CREATE TABLE docs (n int PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL)")
    pidfile = str(root / "hot/writer.pid")
    subprocess.run([PY, WRITER, "start", stack.pg.dsn, str(root / "hot/content"), "docs", pidfile], check=True,
                   timeout=30)
    try:
        wait_rows(stack, "docs", 100)
        s = stack.backup("hot")
        during = int(stack.psql("SELECT count(*) FROM docs"))
        wait_rows(stack, "docs", during + 50)  # the writer goes on after the set
    finally:
        subprocess.run([PY, WRITER, "stop", pidfile], check=True, timeout=30)
    final = int(stack.psql("SELECT count(*) FROM docs"))

    extra = s["extra"]
    db = extra["database"]
    assert db["name"] == "appdb" and db["timeline"] == 1
    assert base64.b64decode(db["labelfile"]).startswith(b"START WAL LOCATION: " + db["start_lsn"].encode())
    assert db["restore_point"]["name"].startswith("cairn-")
    assert extra["window"]["mode"] == "hot" and extra["window"]["expired"] is False

    files = stack.restore_files(s["id"], "hot-files")
    assert (files / "index" / "segments.idx").read_bytes() == b"index built before the database\n"
    srv = stack.restore_db(s["id"])
    restored = rows(srv, "docs")
    assert 100 <= len(restored) < final
    missing = [n for n in restored if not (files / "content" / n).is_file()]
    assert missing == []
    assert all(sha(files / "content" / n) == h for n, h in restored.items())
    # the restored server is a promoted primary on a new timeline
    assert srv.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"


def test_cold_portal_set_rows_and_files_match_exactly(stack: Stack) -> None:
    root = stack.root
    stack.psql("CREATE TABLE portal (n int PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL)")
    pidfile = str(root / "cold/writer.pid")
    subprocess.run([PY, WRITER, "start", stack.pg.dsn, str(root / "cold/content"), "portal", pidfile],
                   check=True, timeout=30)
    try:
        wait_rows(stack, "portal", 100)
        s = stack.backup("cold")
        # thaw restarted the writer: rows keep coming after the set
        assert os.path.exists(pidfile)
        after = int(stack.psql("SELECT count(*) FROM portal"))
        wait_rows(stack, "portal", after + 20)
    finally:
        subprocess.run([PY, WRITER, "stop", pidfile], check=True, timeout=30)

    window = s["extra"]["window"]
    assert window["mode"] == "cold"
    assert [h["exit_code"] for h in window["freeze"]] == [0] and [h["exit_code"] for h in window["thaw"]] == [0]
    assert window["freeze"][0]["argv"][-2:] == ["stop", pidfile]
    assert window["held_s"] is not None and window["fuzzy_files"] == [] and "warning" not in window
    assert s["status"] == "ok"

    files = stack.restore_files(s["id"], "cold-files")
    srv = stack.restore_db(s["id"])
    restored = rows(srv, "portal")
    on_disk = {p.name: sha(p) for p in files.iterdir()}
    assert len(restored) >= 100
    assert restored == on_disk


def test_point_in_time_and_the_sets_own_point(stack: Stack) -> None:
    stack.psql("CREATE TABLE markers (id int PRIMARY KEY, note text, t timestamptz DEFAULT clock_timestamp())")
    stack.psql("INSERT INTO markers (id, note) VALUES (1, 'before the set')")
    bench = ["-h", str(stack.pg.sockdir), "-p", str(stack.pg.port), "-U", "postgres", "postgres"]
    subprocess.run([stack.pg.bin("pgbench"), "-i", "-s", "1", "-q", *bench], check=True, capture_output=True,
                   timeout=120)
    s = stack.backup("pitr")  # freeze inserts marker 2, thaw marker 3
    assert stack.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers") == "1,2,3"

    load = subprocess.Popen([stack.pg.bin("pgbench"), "-T", "4", "-c", "2", *bench], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    noted = noted_lsn = ""
    for i in range(10, 20):
        stack.psql(f"INSERT INTO markers (id, note) VALUES ({i}, 'under load')")
        time.sleep(0.15)
        if i == 14:  # noted as PostgreSQL's log lines print a time: in a named zone, not an offset
            noted_at_text, noted = stack.psql(
                "SELECT t, to_char(t AT TIME ZONE 'Asia/Kolkata', 'YYYY-MM-DD HH24:MI:SS.US') || ' Asia/Kolkata' "
                "FROM (SELECT clock_timestamp() AS t) x").split("|")
            time.sleep(0.15)
        if i == 16:
            noted_lsn = stack.psql("SELECT pg_current_wal_insert_lsn()")
    assert load.wait(60) == 0, load.stderr.read() if load.stderr else ""
    transactions = int(stack.psql("SELECT count(*) FROM pgbench_history"))
    assert transactions > 0
    stack.wait_archived()

    # exactly the markers committed before the noted time
    srv = stack.restore_db(s["id"], "--target-time", noted)
    assert srv.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers") == "1,2,3,10,11,12,13,14"
    assert 0 < int(srv.psql("SELECT count(*) FROM pgbench_history")) < transactions
    noted_at = datetime.fromisoformat(noted_at_text)
    assert srv.psql(f"SELECT count(*) FROM markers WHERE t > '{noted_at.isoformat()}'") == "0"

    # exactly the markers committed before the noted LSN (markers 10..16 were committed first)
    at_lsn = stack.restore_db(s["id"], "--target-lsn", noted_lsn)
    assert at_lsn.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers") == "1,2,3,10,11,12,13,14,15,16"

    # the set's own point: what was committed when the window closed (frozen, not thawed)
    own = stack.restore_db(s["id"])
    assert own.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers") == "1,2"
    assert own.psql("SELECT count(*) FROM pgbench_history") == "0"


def test_restore_db_errors_and_verify_and_status(stack: Stack, tmp_path: Path) -> None:
    s = stack.sets("pitr")[-1]
    target = str(tmp_path / "x")
    r = stack.cli("restore-db", "nosuchset", "--database", "appdb", "--target", target)
    assert r.returncode == 3 and "nosuchset" in r.stderr
    r = stack.cli("restore-db", s["id"], "--database", "otherdb", "--target", target)
    assert r.returncode == 3 and "holds no database 'otherdb'" in r.stderr
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", target, "--target-lsn", "zz")
    assert r.returncode == 2 and "invalid" in r.stderr and "zz" in r.stderr
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", target, "--target-time", "soon")
    assert r.returncode == 2 and "invalid target time 'soon'" in r.stderr
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", target, "--target-lsn", "0/1")
    assert r.returncode == 2 and "before the set's consistent point" in r.stderr
    assert not os.path.exists(target) or os.listdir(target) == []

    out = stack.ok("verify")
    assert out.startswith("repository ok")
    status = json.loads(stack.ok("--json", "status"))["archive"]
    assert status["segments"] > 0 and status["pushed"] > 0 and status["failures"] == 0
    (db,) = status["databases"]
    assert db["name"] == "appdb" and db["error"] is None and db["failed_count"] == 0
    assert db["last_archived"] and db["last_archived"] <= db["current_segment"]
    assert "WAL archive:" in stack.ok("status")

    # a segment missing from the archive is a verify error naming the gap
    first = s["extra"]["database"]["wal"]["first"]
    sysid = s["extra"]["database"]["system_identifier"]
    victim = Path(stack.repo) / "wal" / f"{sysid}@{first}"  # the server's WAL name space
    assert victim.exists()
    keep = victim.read_bytes()
    victim.unlink()
    try:
        r = stack.cli("verify")
        assert r.returncode == 1
        assert f"WAL is not continuous on timeline 1: {first} missing from the archive" in r.stdout
    finally:
        victim.write_bytes(keep)
