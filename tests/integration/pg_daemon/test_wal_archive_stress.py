"""WAL archiving and recovery the way a bad night meets them, end to end: a real PostgreSQL 15
archiving through `cairn wal-push` into a real cairnd.

- the daemon killed while the server archives: wal-push fails (the server keeps the segment and
  retries), `cairn status` shows the server's failures, and once the daemon is back the backlog
  drains with every segment in the repository;
- a segment pushed again: identical content succeeds, other content is refused and the archived
  copy stays;
- another cluster's archive_command carrying this cluster's `--system-id` (copied by mistake):
  its segments and its history files are refused, so nothing of it lands in this cluster's WAL.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cairnd_harness import CAIRN, env_for
from pgstack import ArchivingServer, Stack, app_stack


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
    assert len(r.stderr.strip().splitlines()[0]) < 300
    assert fetch(stack, name, tmp_path / "again", sysid(stack)).returncode == 0
    assert (tmp_path / "again").read_bytes() == original


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
