"""restore-db for a recovery past the set starts wal-fetch's prefetcher itself: before the server
starts, the segments after the WAL it placed are in the spool, owned by the data directory's
owner (restore_command renames them out as that user); recovery then reaches the target. A
restore to the set's own point starts none (recovery never leaves the placed WAL)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cairn.client import walfetch
from pgstack import ArchivingServer, Stack, app_stack, make_pg_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with app_stack("cairn-rdb-prefetch-", source="db") as st:
        yield st


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def next_segment(name: str) -> str:
    return walfetch.next_names(name, 1, 16 * 1024 * 1024)[0]


def test_restore_db_to_a_later_lsn_primes_the_spool(stack: Stack) -> None:
    stack.psql("CREATE TABLE fill (id int, pad text)")
    s = stack.backup("db")
    for i in range(4):  # four more archived segments after the set
        stack.psql(f"INSERT INTO fill SELECT g, repeat('x', 200) FROM generate_series({i * 1000}, {i * 1000 + 999}) g")
        stack.psql("SELECT pg_switch_wal()")
    target_lsn = stack.psql("SELECT pg_current_wal_insert_lsn()")
    stack.psql("INSERT INTO fill VALUES (-1, 'after the target')")
    stack.psql("SELECT pg_switch_wal()")
    stack.wait_archived()

    holder = make_pg_dir("cairn-rdb-prefetch-target-")
    stack.holders.append(holder)
    data = holder / "data"
    stack.ok("restore-db", s["id"], "--database", "appdb", "--target", str(data), "--target-lsn", target_lsn)
    pg_wal = data / "pg_wal"
    placed = [n for n in (pg_wal / "cairn-restore-db.wal").read_text().split() if walfetch.is_segment(n)]
    spool = Path(walfetch.spool_of(str(pg_wal / "RECOVERYXLOG")))
    first = next_segment(placed[-1])
    wait_for(lambda: (spool / first).exists(), 60, f"{first} in the spool before the server starts")
    owner = os.stat(data).st_uid
    assert owner != 0
    assert {os.stat(p).st_uid for p in (spool, spool / first, spool / ".lock", spool / ".wanted")} == {owner}
    assert walfetch.prefetcher_running(str(spool))

    srv = ArchivingServer(pgdata=data)
    stack.restored.append(srv)
    srv.start(timeout=120)
    srv.wait_promoted()
    assert srv.psql("SELECT count(*), min(id) FROM fill") == "4000|0"
    assert not (spool / first).exists()  # taken by recovery (or removed once the prefetcher went idle)


def test_restore_db_to_the_sets_own_point_starts_no_prefetcher(stack: Stack) -> None:
    s = stack.sets("db")[-1]
    holder = make_pg_dir("cairn-rdb-prefetch-own-")
    stack.holders.append(holder)
    data = holder / "data"
    stack.ok("restore-db", s["id"], "--database", "appdb", "--target", str(data))
    assert not (data / "pg_wal" / walfetch.SPOOL_DIR).exists()
