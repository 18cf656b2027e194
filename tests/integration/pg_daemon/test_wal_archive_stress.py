"""WAL archiving and recovery the way a bad night meets them, end to end: a real PostgreSQL 15
archiving through `cairn wal-push` into a real cairnd.

- the daemon killed while the server archives: wal-push fails (the server keeps the segment and
  retries), `cairn status` shows the server's failures, and once the daemon is back the backlog
  drains with every segment in the repository;
- a segment pushed again: identical content succeeds, other content is refused (with a hint
  saying what the server then does) and the archived copy stays; the server then retries that
  file, archives nothing after it, and `cairn status` names it;
- another cluster's archive_command carrying this cluster's `--system-id` (copied by mistake):
  its segments and its history files are refused, so nothing of it lands in this cluster's WAL;
- a set taken under heavy writes recovers to its own point and to a time between two recorded
  commits with exactly the rows committed before it;
- a disaster recovery onto timeline 2 in the server's own data directory, a set on timeline 2,
  point-in-time recovery on either timeline and along `latest`, and prune with both timelines.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
from cairn import walnames
from cairnd_harness import CAIRN, env_for
from pgstack import ArchivingServer, Stack, app_stack, make_pg_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with app_stack("cairn-walst-", {"a.txt": "a\n"}) as st:
        yield st


def sysid(stack: Stack) -> str:
    return stack.psql("SELECT system_identifier FROM pg_control_system()")


def push(stack: Stack, path: Path | str, *extra: str, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """`cairn wal-push` as archive_command runs it: in a data directory, %p relative to it."""
    return subprocess.run([CAIRN, "--socket", stack.sock, "wal-push", *extra, str(path)], capture_output=True,
                          text=True, timeout=60, env=env_for(), cwd=str(cwd or stack.pg.pgdata))


def fetch(stack: Stack, name: str, dest: Path, system_id: str) -> subprocess.CompletedProcess:
    return stack.cli("wal-fetch", "--prefetch", "0", "--system-id", system_id, name, str(dest))


def wait_until(what: str, check, timeout: float = 30.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def archiver(srv: ArchivingServer | Stack) -> tuple[int, str, int, str]:
    row = srv.psql("SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, "
                   "coalesce(last_failed_wal, '') FROM pg_stat_archiver")
    a, last, f, failed = row.split("|")
    return int(a), last, int(f), failed


def test_the_daemon_down_fails_wal_push_and_the_backlog_drains_after_its_restart(stack: Stack) -> None:
    stack.wait_archived()
    _, archived, failed, _ = archiver(stack)
    stack.kill_daemon()
    stack.psql("CREATE TABLE IF NOT EXISTS down (i int)")
    for i in range(3):
        stack.psql(f"INSERT INTO down VALUES ({i}); SELECT pg_switch_wal()")
    last = stack.psql("SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
    wait_until("the archiver to fail", lambda: archiver(stack)[2] >= failed + 2)
    first = waiting = archiver(stack)[3]
    assert archived < waiting <= last, "the archiver works in order: it retries the backlog's first segment"
    # what archive_command runs: a failure, so the server keeps the segment and tries again
    r = push(stack, f"pg_wal/{waiting}")
    assert r.returncode == 1 and "unable to reach cairnd" in r.stderr, r
    assert (stack.pg.pgdata / "pg_wal" / "archive_status" / f"{waiting}.ready").exists()

    stack.start_daemon()
    status = json.loads(stack.ok("--json", "status"))
    server = status["archive"]["databases"][0]
    assert server["failed_count"] >= failed + 2, server  # the server's own view of the outage
    stack.wait_archived()
    status = json.loads(stack.ok("--json", "status"))
    assert status["archive"]["databases"][0]["lag_segments"] == 0, status["archive"]
    # the whole backlog is in the repository, byte for byte what the server wrote
    ident = sysid(stack)
    names = [f"{first[:16]}{n:08X}" for n in range(int(first[16:], 16), int(last[16:], 16) + 1)]
    assert len(names) >= 3
    for name in names:
        assert fetch(stack, name, stack.root / name, ident).returncode == 0, name
        (stack.root / name).unlink()


def test_an_archived_segment_pushed_again_with_identical_or_other_content(stack: Stack, tmp_path: Path) -> None:
    stack.wait_archived()
    name = stack.psql("SELECT last_archived_wal FROM pg_stat_archiver")
    copy = tmp_path / name
    assert fetch(stack, name, copy, sysid(stack)).returncode == 0
    original = copy.read_bytes()
    r = push(stack, copy)
    assert r.returncode == 0 and "already archived (identical)" in r.stdout, r
    with open(copy, "r+b") as f:  # one byte of a record changed: not the segment the repository holds
        f.seek(8192 + 100)
        byte = f.read(1)
        f.seek(8192 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = push(stack, copy)
    assert r.returncode != 0 and f"{name}' is already archived with different content" in r.stderr, r
    first_line, hint = r.stderr.strip().splitlines()
    assert len(first_line) < 300
    # and what it means: the server retries the file and holds its WAL until it archives
    assert hint.startswith("hint: the archived copy is kept; PostgreSQL retries this file"), hint
    assert fetch(stack, name, tmp_path / "again", sysid(stack)).returncode == 0
    assert (tmp_path / "again").read_bytes() == original


def test_a_segment_the_archive_holds_with_other_content_stops_the_servers_archiving_loudly() -> None:
    """What PostgreSQL does with the refusal: it retries the file and archives nothing after it;
    the daemon's status names the refused file and the server's growing lag (a stack of its own:
    this one's archiving stays blocked)."""
    with app_stack("cairn-walst-blk-", {"a.txt": "a\n"}) as st:
        st.psql("CREATE TABLE b (i int); INSERT INTO b VALUES (1)")
        archived = st.wait_archived()
        st.psql("INSERT INTO b VALUES (2)")
        current = st.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        assert current > archived
        # another server of this identity archived that name first (here: an archived segment under its name)
        impostor = st.root / current
        assert fetch(st, archived, impostor, sysid(st)).returncode == 0
        data = impostor.read_bytes()  # its first page header moved to `current`, as that server's would be
        seg_size = int.from_bytes(data[32:36], "little")
        tli, segno = walnames.parse_segment(current, seg_size)
        impostor.write_bytes(data[:4] + tli.to_bytes(4, "little") + (segno * seg_size).to_bytes(8, "little")
                             + data[16:])
        assert push(st, impostor).returncode == 0
        failed = archiver(st)[2]
        for i in range(3):
            st.psql(f"INSERT INTO b VALUES ({i + 10}); SELECT pg_switch_wal()")
        wait_until("the archiver to fail", lambda: archiver(st)[2] >= failed + 3)
        count, last, _, last_failed = archiver(st)
        assert last_failed == current and last < current  # retried in order: nothing after it archived
        assert all((st.pg.pgdata / "pg_wal" / "archive_status" / f"{name}.ready").exists()
                   for name in sorted(os.listdir(st.pg.pgdata / "pg_wal")) if len(name) == 24 and name > current
                   and name < st.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"))
        status = json.loads(st.ok("--json", "status"))["archive"]
        assert status["failures"] >= 1 and f"{current}' is already archived with different content" in \
            status["last_failure"], status
        assert status["databases"][0]["last_failed"] == current and status["databases"][0]["lag_segments"] >= 3
        assert fetch(st, current, st.root / "kept", sysid(st)).returncode == 0
        assert (st.root / "kept").read_bytes() == impostor.read_bytes()  # the archived copy stays


def test_a_copied_system_id_files_nothing_of_another_cluster(stack: Stack) -> None:
    ours = sysid(stack)
    other = stack.archiving_server()  # initdb: a cluster of its own, never started
    theirs = subprocess.run([str(Path(other.bin("pg_controldata"))), "-D", str(other.pgdata)], capture_output=True,
                            text=True, check=True).stdout
    assert ours not in theirs
    # its segment: the header names the other server
    segment = sorted(p for p in (other.pgdata / "pg_wal").iterdir() if len(p.name) == 24)[0]
    r = push(stack, f"pg_wal/{segment.name}", "--system-id", ours, cwd=other.pgdata)
    assert r.returncode == 2 and f"not {ours}: check the --system-id of this archive_command" in r.stderr, r
    # its history file (as after a promotion): no header, but its data directory's pg_control tells
    history = other.pgdata / "pg_wal" / "00000007.history"
    history.write_text("6\t0/3000000\tno recovery target specified\n")
    r = push(stack, "pg_wal/00000007.history", "--system-id", ours, cwd=other.pgdata)
    assert r.returncode == 2, r
    assert r.stderr.startswith("cairn: error: WAL file 00000007.history comes from the server with system "
                               "identifier "), r.stderr
    assert f"not {ours}: check the --system-id of this archive_command" in r.stderr
    assert fetch(stack, "00000007.history", stack.root / "h", ours).returncode == 3
    # the same file pushed with the right identifier (or none) goes to the other cluster's name space
    r = push(stack, "pg_wal/00000007.history", cwd=other.pgdata)
    assert r.returncode == 0, r
    assert fetch(stack, "00000007.history", stack.root / "h", ours).returncode == 3


def restored(stack: Stack, set_id: str, *options: str) -> ArchivingServer:
    """restore-db into a fresh directory and a server on it (not archiving) once it promoted."""
    holder = make_pg_dir("cairn-walst-r-")
    stack.holders.append(holder)
    stack.ok("restore-db", set_id, "--database", "appdb", "--target", str(holder / "data"), *options)
    srv = ArchivingServer(pgdata=holder / "data", settings={"archive_mode": "off"})
    stack.restored.append(srv)
    srv.start(timeout=120)
    srv.wait_promoted()
    return srv


def test_a_set_taken_under_heavy_writes_recovers_exactly_to_its_point_and_to_a_time(stack: Stack) -> None:
    stack.psql("CREATE TABLE acc (id int PRIMARY KEY, bal bigint, pad text); "
               "INSERT INTO acc SELECT g, 0, repeat('x', 200) FROM generate_series(1, 20000) g; "
               "CREATE TABLE marks (n int PRIMARY KEY)")
    stop = threading.Event()
    log: list[tuple[int, datetime, datetime]] = []  # (mark, before its INSERT, after its commit returned)

    def churn(seed: int) -> None:  # pgbench-like: many small updates, bounded by `stop`
        rnd = random.Random(seed)
        conn = psycopg2.connect(stack.pg.dsn)  # not `with conn`: that would make one transaction of it all
        conn.autocommit = True
        cur = conn.cursor()
        try:
            while not stop.is_set():
                k = rnd.randint(1, 19800)  # one row per statement: two writers never deadlock
                cur.execute("UPDATE acc SET bal = bal + 1 WHERE id = %s", (k,))
        finally:
            conn.close()

    def marks() -> None:  # one committed row at a time, a pause after every 25th
        conn = psycopg2.connect(stack.pg.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        n = 0
        try:
            while not stop.is_set():
                n += 1
                before = datetime.now(UTC)
                cur.execute("INSERT INTO marks VALUES (%s)", (n,))
                log.append((n, before, datetime.now(UTC)))
                time.sleep(0.3 if n % 25 == 0 else 0.01)
        finally:
            conn.close()

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(2)] + [threading.Thread(target=marks)]
    for t in threads:
        t.start()
    try:
        wait_until("the load to run", lambda: len(log) > 30)
        s = stack.backup("app")
        stopped = datetime.fromtimestamp(s["extra"]["database"]["stopped"], UTC)
        wait_until("writes after the set", lambda: log[-1][1] > stopped + timedelta(seconds=1.5))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    stack.psql("INSERT INTO marks VALUES (1000000)")  # a commit after every target below
    stack.wait_archived()

    srv = restored(stack, s["id"])
    n, count = srv.psql("SELECT max(n), count(*) FROM marks WHERE n < 1000000").split("|")
    assert int(n) == int(count) and 30 < int(n) < len(log)  # every mark up to the set's point, no hole
    srv.stop()

    # a target time inside a pause between two commits after the set: exactly the rows before it
    k, after, before_next = next((log[i][0], log[i][2], log[i + 1][1]) for i in range(len(log) - 1)
                                 if log[i][2] > stopped and (log[i + 1][1] - log[i][2]).total_seconds() > 0.2)
    target = (after + (before_next - after) / 2).isoformat()
    srv = restored(stack, s["id"], "--target-time", target)
    assert srv.psql("SELECT max(n), count(*) FROM marks") == f"{k}|{k}"
    assert srv.psql("SELECT count(*) FROM acc") == "20000"
    srv.stop()


@pytest.mark.slow
def test_disaster_recovery_onto_timeline_2_then_pitr_on_either_timeline_and_prune(stack: Stack) -> None:
    """Last in the module: the stack's own server is replaced by its point-in-time recovery."""
    def rows(srv: ArchivingServer | Stack) -> str:
        return srv.psql("SELECT coalesce(string_agg(i::text, ',' ORDER BY i), '') FROM tl")

    def insert(i: int) -> str:  # the server's time once row i is committed (the next commit is later)
        stack.psql(f"INSERT INTO tl VALUES ({i})")
        at = stack.psql("SELECT clock_timestamp()")
        time.sleep(0.05)
        return at

    stack.psql("CREATE TABLE tl (i int)")
    insert(1)
    s1 = stack.backup("app")
    at2 = insert(2)
    at3 = insert(3)
    insert(4)
    stack.wait_archived()
    ident = sysid(stack)

    # the disaster: the server is lost; its point in time before row 4 goes back in its place
    stack.pg.stop()
    shutil.rmtree(stack.pg.pgdata)
    stack.ok("restore-db", s1["id"], "--database", "appdb", "--target", str(stack.pg.pgdata), "--target-time", at3)
    stack.pg.start(timeout=120)
    stack.pg.wait_promoted()
    assert rows(stack) == "1,2,3"
    assert stack.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
    insert(30)
    stack.wait_archived()
    assert fetch(stack, "00000002.history", stack.root / "tl2.history", ident).returncode == 0
    assert sysid(stack) == ident  # the same cluster: its timeline 2 in the same name space
    s2 = stack.backup("app")
    assert s2["extra"]["database"]["timeline"] == 2
    at31 = insert(31)
    insert(32)
    stack.wait_archived()

    assert rows(restored(stack, s2["id"])) == "1,2,3,30"
    assert rows(restored(stack, s2["id"], "--target-time", at31)) == "1,2,3,30,31"
    # timeline 1 before the fork, and after it (row 4 exists only there)
    assert rows(restored(stack, s1["id"], "--target-time", at2)) == "1,2"
    assert rows(restored(stack, s1["id"], "--target-end")) == "1,2,3,4"
    # from the set of timeline 1 along the newest timeline, across the fork
    assert rows(restored(stack, s1["id"], "--target-timeline", "latest", "--target-time", at31)) == "1,2,3,30,31"
    assert rows(restored(stack, s1["id"], "--target-timeline", "latest", "--target-end")) == "1,2,3,30,31,32"
    for srv in stack.restored:
        srv.stop()
    assert f"repository ok: {len(stack.sets('app'))} sets checked" in stack.ok("verify")

    # keeping both sets keeps every segment from the first one's; keeping the one of timeline 2
    # lets timeline 1 go up to where the set of timeline 2 begins
    first1 = s1["extra"]["database"]["wal"]["first"]
    both = json.loads(stack.ok("--json", "prune", "--dry-run", "--keep-last", "2", "--wal-keep", "0s"))
    assert all(n.partition("/")[2][8:24] < first1[8:] for n in both["wal_forgotten"]), both["wal_forgotten"]
    done = json.loads(stack.ok("--json", "prune", "--keep-last", "1", "--wal-keep", "0s"))
    first2 = s2["extra"]["database"]["wal"]["first"]
    assert s1["id"] in done["forgotten"] and s2["id"] not in done["forgotten"]
    assert all(n.partition("/")[2][8:24] < first2[8:] for n in done["wal_forgotten"]), done["wal_forgotten"]
    assert f"{ident}/00000002.history" not in done["wal_forgotten"]
    assert rows(restored(stack, s2["id"], "--target-time", at31)) == "1,2,3,30,31"
    assert rows(restored(stack, s2["id"], "--target-end")) == "1,2,3,30,31,32"
    assert "repository ok: 1 set checked" in stack.ok("verify")
