"""Point-in-time recovery of a whole application in one command, end to end against real
PostgreSQL 15 clusters archiving through `cairn wal-push` into a real cairnd:

- `cairn restore SET --target DIR --databases --target-time T` lays down the set's files and its
  PostgreSQL database ready to recover to T: a server started on it holds exactly the rows
  committed up to T (one commit before T, none after), and the files equal the set; a dump of
  the set is said to hold the set's point, not T (in text and in --json);
- a target the archive cannot reach is refused with exit 1 naming the database and the last
  reachable transaction, and nothing is written, neither files nor database; with two
  PostgreSQL databases, a time one archive reaches and the other does not is refused too;
- `--target-end --stream` recovers every archived commit, and `--delta --target-time` mends the
  same places back to the time (the files to the set);
- --target-lsn is refused for a set of two PostgreSQL databases (an LSN is one cluster's), and
  every point-in-time option without --databases, before anything is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pgstack import ArchivingServer, Stack, file_tree, make_pg_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-apppitr-")
    (root / "app/files").mkdir(parents=True)
    (root / "app/files/readme.txt").write_text("the application\n")
    (root / "notes.txt").write_text("a dump of the notes database\n")
    st = Stack(root, {"app": {"paths": [str(root / "app/files")], "database": ["appdb", "notes"]},
                      "two": {"paths": [str(root / "app/files")], "database": ["appdb", "otherdb"]}})
    other = st.archiving_server()
    st.databases.update({
        "notes": {"kind": "command", "dump": ["cat", str(root / "notes.txt")],
                  "restore": ["sh", "-c", 'cat > "$0"', "{target}"]},
        "otherdb": {"dsn": other.dsn, "pgdata": str(other.pgdata)},
    })
    st.write_config()
    try:
        st.start()
        other.start()
        # no background transactions: the test knows the last one the archive holds
        for server in (st.pg, other):
            server.psql("ALTER SYSTEM SET autovacuum = off")
            server.psql("SELECT pg_reload_conf()")
        yield st
    finally:
        st.close()


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + " UTC"


def wait_past(t: float, timeout: float = 10.0) -> None:
    """Wait until this host's clock (the database's too) is past `t`."""
    deadline = time.monotonic() + timeout
    while time.time() <= t:
        assert time.monotonic() < deadline, "the clock did not pass the time waited for"
        time.sleep(0.02)


def holder(stack: Stack, prefix: str) -> Path:
    h = make_pg_dir(prefix)
    stack.holders.append(h)
    return h


@pytest.fixture(scope="module")
def app_set(stack: Stack) -> dict[str, Any]:
    """A set of the files, appdb and the notes dump; then one commit before `between` and one after
    it, archived; and a file written after the set."""
    files = stack.root / "app/files"
    stack.psql("CREATE TABLE orders (id int PRIMARY KEY)")
    stack.psql("INSERT INTO orders SELECT generate_series(1, 10)")
    captured = file_tree(files)
    s = stack.backup("app")
    (files / "later.txt").write_text("written after the set\n")
    stack.psql("INSERT INTO orders SELECT generate_series(11, 20)")  # before the target
    before = float(stack.psql("SELECT extract(epoch FROM clock_timestamp())"))  # after that commit
    wait_past(before + 1.0)
    stack.psql("INSERT INTO orders SELECT generate_series(21, 30)")  # after the target
    stack.wait_archived()
    return {"set": s, "files": captured, "between": utc(before + 0.5)}


def test_restore_databases_to_a_time_between_two_commits(stack: Stack, app_set: dict[str, Any]) -> None:
    s, between = app_set["set"], app_set["between"]
    h = holder(stack, "cairn-apppitr-t-")
    target, dbdir = h / "app", h / "app-db-appdb"

    doc = json.loads(stack.ok("--json", "restore", s["id"], "--target", str(target), "--databases",
                              "--target-time", between, "--dry-run"))
    assert doc["databases"] == [{"name": "appdb", "target": str(dbdir), "recovery_target": f"time {between}",
                                 "recovery_target_timeline": "current"}]
    assert [(d["name"], d["recovery_target"]) for d in doc["dumps"]] == [("notes", "set")]
    assert "not the recovery target" in doc["dumps"][0]["note"]
    assert not target.exists() and not dbdir.exists()

    out = stack.ok("restore", s["id"], "--target", str(target), "--databases", "--target-time", between,
                   timeout=120)
    assert ("note: database 'notes' is a dump (kind command): it was not laid down; restore it into a database "
            "with ") in out
    assert "it holds the set's point, not the recovery target: a dump cannot be moved in time" in out, out
    assert f"through cairn wal-fetch to time '{between}' (every commit up to it) on the set's own timeline" in out
    assert file_tree(target) == app_set["files"]  # the files are the set's: later.txt is not there

    srv = ArchivingServer(pgdata=dbdir, settings={"archive_mode": "off"})
    stack.restored.append(srv)
    srv.start(timeout=60)
    srv.wait_promoted()
    assert srv.psql("SELECT count(*), min(id), max(id) FROM orders") == "20|1|20"
    srv.stop()


def test_an_unreachable_target_is_refused_before_anything_is_written(stack: Stack,
                                                                       app_set: dict[str, Any]) -> None:
    s = app_set["set"]
    h = holder(stack, "cairn-apppitr-late-")
    target = h / "app"
    r = stack.cli("restore", s["id"], "--target", str(target), "--databases", "--target-time",
                  utc(time.time() + 3600))
    assert r.returncode == 1, r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert "is later than the newest WAL archived for database 'appdb'" in first, r.stderr
    assert "hint: the last transaction archived on timeline 1 ended at " in r.stderr, r.stderr
    assert os.listdir(h) == []  # neither the files target nor the database's place
    # before the set's consistent point: refused too, naming the database
    r = stack.cli("restore", s["id"], "--target", str(target), "--databases", "--target-time",
                  utc(next(d for d in s["extra"]["databases"] if d["name"] == "appdb")["stopped"] - 3600))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("cairn: error: database 'appdb': target time "), r.stderr
    assert "is before the set's consistent point" in r.stderr
    assert os.listdir(h) == []  # neither the files target nor the database's place


def test_two_postgresql_databases_one_unreachable_target_and_target_lsn_are_refused(stack: Stack) -> None:
    stack.psql("CREATE TABLE payments (id int)")
    two = stack.backup("two")
    h = holder(stack, "cairn-apppitr-lsn-")
    target = h / "app"
    r = stack.cli("restore", two["id"], "--target", str(target), "--databases", "--target-lsn", "0/3000000")
    assert r.returncode == 2, r.stdout + r.stderr
    assert (f"cairn: error: --target-lsn is a position in one cluster's WAL, and set '{two['id'][:8]}"
            in r.stderr.splitlines()[0]), r.stderr
    assert "holds 2 PostgreSQL databases (appdb, otherdb)" in r.stderr
    assert os.listdir(h) == []
    # a time appdb's archive reaches (a commit after it) but otherdb's does not (none after its set)
    stopped = max(d["stopped"] for d in two["extra"]["databases"])
    wait_past(stopped + 0.5)
    when = time.time()
    wait_past(when + 0.2)
    stack.psql("INSERT INTO payments VALUES (1)")
    stack.wait_archived()
    r = stack.cli("restore", two["id"], "--target", str(target), "--databases", "--target-time", utc(when))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"cairn: error: unable to restore database 'otherdb' to '{utc(when)}': "), r.stderr
    assert "no transaction ended after the set's consistent point" in r.stderr
    for options in (["--target-time", utc(time.time())], ["--target-end"], ["--target-timeline", "latest"]):
        r = stack.cli("restore", two["id"], "--target", str(target), *options)
        assert r.returncode == 2 and f"{options[0]} only goes with --databases" in r.stderr, r.stderr
    assert os.listdir(h) == []


def test_to_the_end_streamed_then_mended_back_to_a_time_with_delta(stack: Stack, app_set: dict[str, Any]) -> None:
    s, between = app_set["set"], app_set["between"]
    h = holder(stack, "cairn-apppitr-end-")
    target, dbdir = h / "app", h / "app-db-appdb"
    out = stack.ok("restore", s["id"], "--target", str(target), "--databases", "--target-end", "--stream",
                   timeout=120)
    assert "written by the daemon" not in out and "to the end of the WAL archive" in out, out
    srv = ArchivingServer(pgdata=dbdir, settings={"archive_mode": "off"})
    stack.restored.append(srv)
    srv.start(timeout=60)
    srv.wait_promoted()
    assert srv.psql("SELECT count(*), max(id) FROM orders") == "30|30"  # every archived commit
    srv.stop()
    # the same places mended back to the time between the two commits
    doc = json.loads(stack.ok("--json", "restore", s["id"], "--target", str(target), "--databases", "--delta",
                              "--target-time", between, timeout=120))
    assert doc["databases"][0]["recovery_target"] == f"time {between}", doc
    srv.start(timeout=60)
    srv.wait_promoted()
    assert srv.psql("SELECT count(*), max(id) FROM orders") == "20|20"
    srv.stop()
    assert file_tree(target) == app_set["files"]
