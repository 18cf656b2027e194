"""restore-db and `restore --databases` against a real PostgreSQL 15 archiving through `cairn
wal-push` into a real cairnd, in a repository where timelines and dumps meet:

- recovery follows the set's own timeline by default: once a restored copy promoted and
  archived timeline 2 into the cluster's WAL, a later set of timeline 1 still recovers, and a
  point-in-time recovery of an earlier set stays on timeline 1; `--target-timeline latest` (or
  an id) follows timeline 2, and an id recovery cannot follow is refused before anything is
  written;
- `restore --databases` on a set holding a dump leaves the dump alone with a note on how to
  restore it (one JSON document with --json), refuses a --db-target for it, and refuses database
  places that are the files target, share a place or lie inside one before anything is written;
  with --stream the databases are streamed too;
- `check-db` of a dump checks its tools (and pg_dump's connection), not WAL archiving;
- a --target-time without a zone is the daemon host's local time, checked against the set;
- `verify` names, per set, whether a WAL gap makes it unrestorable or only costs PITR past it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cairnd_harness import CAIRN
from pgstack import ArchivingServer, Stack, make_pg_dir

SHARED: dict[str, Any] = {}  # sets the timeline test took, for the verify test after it


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-tl-")
    (root / "app/files").mkdir(parents=True)
    (root / "app/files/readme.txt").write_text("the application\n")
    (root / "notes.txt").write_text("a dump of the notes database\n")
    st = Stack(root, {"app": {"paths": [str(root / "app/files")], "database": ["appdb", "notes"]}})
    st.databases.update({
        "notes": {"kind": "command", "dump": ["cat", str(root / "notes.txt")],
                  "restore": ["sh", "-c", 'cat > "$0"', "{target}"]},
        "pgd": {"kind": "pg_dump", "dsn": st.pg.dsn},
        "pgbad": {"kind": "pg_dump", "dsn": f"host={root}/nosock port=1 user=postgres dbname=postgres"},
    })
    st.write_config()
    try:
        yield st.start()
    finally:
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def record(s: dict[str, Any], name: str = "appdb") -> dict[str, Any]:
    return next(r for r in s["extra"]["databases"] if r["name"] == name)


def holder(stack: Stack, prefix: str) -> Path:
    h = make_pg_dir(prefix)
    stack.holders.append(h)
    return h


def start(stack: Stack, pgdata: Path, archiving: bool = False) -> ArchivingServer:
    settings = {"archive_mode": "on", "archive_command": f"{CAIRN} --socket {stack.sock} wal-push %p",
                "archive_timeout": "0"} if archiving else {"archive_mode": "off"}
    srv = ArchivingServer(pgdata=pgdata, settings=settings)
    stack.restored.append(srv)
    srv.start(timeout=120)
    srv.wait_promoted()
    return srv


def wait_archived(srv: ArchivingServer, timeout: float = 60.0) -> None:
    seg = srv.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    srv.psql("SELECT pg_switch_wal()")
    end = time.monotonic() + timeout
    while srv.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[:24] < seg:
        assert time.monotonic() < end, f"segment {seg} was not archived: {srv.log_tail()}"
        time.sleep(0.1)


def test_databases_leave_dumps_alone_and_places_are_checked_first(stack: Stack) -> None:
    stack.psql("CREATE TABLE t (note text)")
    stack.psql("INSERT INTO t VALUES ('in the first set')")
    s = stack.backup("app")
    short = s["id"][:12]
    h = holder(stack, "cairn-tl-dbs-")
    target = h / "app"

    dry = stack.ok("restore", s["id"], "--target", str(target), "--databases", "--dry-run")
    assert f"would lay down database 'appdb' in {target}-db-appdb" in dry
    assert "would lay down database 'notes'" not in dry
    assert (f"would leave database 'notes' alone: it is a dump (kind command); restore it into a database with "
            f"cairn restore-db {short} --database notes --target-dsn DSN") in dry
    doc = json.loads(stack.ok("--json", "restore", s["id"], "--target", str(target), "--databases", "--dry-run"))
    assert doc["dry_run"] is True and any(e["path"] == "readme.txt" for e in doc["entries"])
    assert doc["databases"] == [{"name": "appdb", "target": f"{target}-db-appdb"}]
    assert [(d["name"], d["kind"]) for d in doc["dumps"]] == [("notes", "command")]
    assert not target.exists()

    # refused before anything is written: a place for a dump, places that overlap
    r = stack.cli("restore", s["id"], "--target", str(target), "--databases", "--db-target", f"notes={h}/n")
    assert r.returncode == 2 and "'notes', a dump (kind command)" in r.stderr and "--target-dsn" in r.stderr
    for place, says in ((target, "is the files target"), (target / "db", "lies inside the files target"),
                        (h, "holds the files target")):
        r = stack.cli("restore", s["id"], "--target", str(target), "--databases", "--db-target", f"appdb={place}")
        assert r.returncode == 2 and says in r.stderr, r.stderr
    assert sorted(os.listdir(h)) == []

    # streamed: the files and the database cross gRPC; the dump gets a note and a place in the order
    out = stack.ok("restore", s["id"], "--target", str(target), "--databases", "--stream", timeout=300)
    assert "written by the daemon" not in out
    assert (f"note: database 'notes' is a dump (kind command): it was not laid down; restore it into a database "
            f"with cairn restore-db {short} --database notes --target-dsn DSN") in out
    lines = out.splitlines()
    order = lines.index("start in this order:")
    assert "PostgreSQL for 'appdb'" in lines[order + 1] and "database 'notes' (a dump)" in lines[order + 2]
    assert "the application" in lines[order + 3]
    assert (target / "readme.txt").read_text() == "the application\n"
    assert (Path(f"{target}-db-appdb") / "PG_VERSION").is_file() and not Path(f"{target}-db-notes").exists()

    # --json: one document, written by the daemon on this host, dumps inside it
    target2 = h / "app2"
    doc = json.loads(stack.ok("--json", "restore", s["id"], "--target", str(target2), "--databases",
                              timeout=300))
    assert doc["written_by"] == "daemon" and doc["databases"][0]["written_by"] == "daemon"
    assert doc["dumps"] == [{"name": "notes", "kind": "command",
                             "restore": f"cairn restore-db {short} --database notes --target-dsn DSN",
                             "files": f"cairn restore-db {short} --database notes --target DIR"}]
    assert doc["start_order"] == ["database appdb", "dump notes", "application"]

    # an unknown database: every database of the set is named, with its kind
    r = stack.cli("restore-db", s["id"], "--database", "nosuch", "--target", str(h / "x"))
    assert r.returncode == 3 and "(it holds database 'appdb' (postgres), 'notes' (command))" in r.stderr
    assert not (h / "x").exists()


def test_check_db_of_a_dump_checks_its_tools_not_wal_archiving(stack: Stack) -> None:
    doc = json.loads(stack.ok("--json", "check-db", "notes"))
    assert doc["ok"] is True and [s["name"] for s in doc["steps"]] == ["dump tool", "restore tool", "archiving"]
    assert "does not apply" in doc["steps"][-1]["detail"]
    doc = json.loads(stack.ok("--json", "check-db", "pgd"))
    assert doc["ok"] is True and [s["name"] for s in doc["steps"]] == ["connection", "archiving"]
    assert doc["steps"][0]["detail"].startswith("PostgreSQL 15")
    r = stack.cli("check-db", "pgbad")
    assert r.returncode == 1 and "FAIL connection" in r.stdout and "nosock" in r.stdout, r.stdout + r.stderr
    assert "5432" not in r.stdout  # its own DSN, never the default socket


def test_a_target_time_without_a_zone_is_local_time_and_checked(stack: Stack) -> None:
    s = stack.sets("app")[-1]
    stopped = record(s)["stopped"]
    h = holder(stack, "cairn-tl-naive-")
    early = datetime.fromtimestamp(stopped - 3600).strftime("%Y-%m-%d %H:%M:%S")
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(h / "early"), "--target-time", early)
    assert r.returncode == 2 and "before the set's consistent point" in r.stderr, r.stderr
    assert not (h / "early").exists()
    late = datetime.fromtimestamp(int(stopped) + 1)  # after the set, before its archived WAL ends:
    deadline = time.monotonic() + 10  # a transaction after `late`, archived, is what recovery stops at
    while time.time() <= late.timestamp():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stack.psql("CREATE TEMP TABLE probe (x int)")  # a commit, flushed before it returns; gone with its session
    stack.wait_archived()
    stack.ok("restore-db", s["id"], "--database", "appdb", "--target", str(h / "late"), "--target-time",
             late.strftime("%Y-%m-%d %H:%M:%S"), timeout=300)
    conf = (h / "late" / "postgresql.auto.conf").read_text()
    written = next(x for x in conf.splitlines() if x.startswith("recovery_target_time"))
    assert written == f"recovery_target_time = '{late.astimezone().isoformat(sep=' ')}'"
    assert "recovery_target_timeline = 'current'" in conf


def test_recovery_follows_the_sets_own_timeline_unless_told(stack: Stack) -> None:
    a = stack.backup("app")
    h = holder(stack, "cairn-tl-tl-")
    # an older set restored and promoted with the production archive_command: timeline 2 archived
    stack.ok("restore-db", a["id"], "--database", "appdb", "--target", str(h / "copy"), timeout=300)
    copy = start(stack, h / "copy", archiving=True)
    assert copy.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
    copy.psql("INSERT INTO t VALUES ('on timeline 2')")
    tl2_lsn = copy.psql("SELECT pg_current_wal_lsn()")
    wait_archived(copy)
    copy.stop()
    # the original goes on on timeline 1
    stack.psql("INSERT INTO t VALUES ('later on timeline 1')")
    tl1_lsn = stack.psql("SELECT pg_current_wal_lsn()")
    stack.wait_archived()
    b = stack.backup("app")
    SHARED.update(a=a, b=b)

    # the later set of timeline 1 recovers (a recovery that followed timeline 2 could not start)
    stack.ok("restore-db", b["id"], "--database", "appdb", "--target", str(h / "b"), timeout=300)
    srv = start(stack, h / "b")
    assert srv.psql("SELECT string_agg(note, ',' ORDER BY note) FROM t") == "in the first set,later on timeline 1"
    srv.stop()
    # point-in-time recovery of the older set stays on timeline 1, past the fork
    stack.ok("restore-db", a["id"], "--database", "appdb", "--target", str(h / "pitr1"), "--target-lsn", tl1_lsn,
             timeout=300)
    srv = start(stack, h / "pitr1")
    assert srv.psql("SELECT string_agg(note, ',' ORDER BY note) FROM t") == "in the first set,later on timeline 1"
    srv.stop()
    # told so, it follows timeline 2 (the newest in the archive)
    stack.ok("restore-db", a["id"], "--database", "appdb", "--target", str(h / "pitr2"), "--target-lsn", tl2_lsn,
             "--target-timeline", "latest", timeout=300)
    assert "recovery_target_timeline = 'latest'" in (h / "pitr2" / "postgresql.auto.conf").read_text()
    srv = start(stack, h / "pitr2")
    assert srv.psql("SELECT string_agg(note, ',' ORDER BY note) FROM t") == "in the first set,on timeline 2"
    srv.stop()

    # timelines recovery cannot follow: refused before anything is written
    for set_id, timeline, says in ((a["id"], "7", "timeline 7 of database 'appdb' is not in the archive"),
                                   (b["id"], "2", "timeline 2 branched off timeline 1 at"),
                                   (a["id"], "two", "invalid --target-timeline 'two'")):
        r = stack.cli("restore-db", set_id, "--database", "appdb", "--target", str(h / "no"), "--target-timeline",
                      timeline)
        assert r.returncode == 2 and says in r.stderr, r.stderr
        assert not (h / "no").exists()
    stack.ok("restore-db", a["id"], "--database", "appdb", "--target", str(h / "id2"), "--target-timeline", "2",
             timeout=300)
    assert "recovery_target_timeline = '2'" in (h / "id2" / "postgresql.auto.conf").read_text()


def test_verify_names_the_set_a_wal_gap_breaks_and_the_one_it_only_costs_pitr(stack: Stack) -> None:
    a, b = SHARED.get("a"), SHARED.get("b")
    if a is None:
        pytest.skip("needs the sets of the timeline test")
    first_b, last_a = record(b)["wal"]["first"], record(a)["wal"]["last"]
    assert first_b > last_a
    segment = Path(stack.repo) / "wal" / f"{record(b)['system_identifier']}@{first_b}"
    aside = segment.with_name(segment.name + ".aside")
    segment.rename(aside)
    try:
        r = stack.cli("verify", timeout=300)
        assert r.returncode == 1
        errors = [x for x in r.stdout.splitlines() if first_b in x]
        assert any(f"set {b['id'][:12]} cannot be restored" in x for x in errors), r.stdout
        pitr = [x for x in errors if "point-in-time recovery past the gap is impossible" in x]
        assert len(pitr) == 1 and a["id"][:12] in pitr[0] and b["id"][:12] not in pitr[0], r.stdout
        doc = json.loads(stack.cli("--json", "verify", timeout=300).stdout)
        gap = [p for p in doc["errors"] if p["object_id"] == first_b]
        fatal = [p for p in gap if "cannot be restored" in p["message"]]
        assert [p["sets"] for p in fatal] == [[b["id"]]]
        assert all(a["id"] not in p["sets"] for p in fatal)
        assert any(a["id"] in p["sets"] for p in gap if p not in fatal)
    finally:
        aside.rename(segment)
    assert stack.cli("verify", timeout=300).returncode == 0
