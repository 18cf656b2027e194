"""`cairn status` of a PostgreSQL cluster that has archived nothing yet, end to end: a real
PostgreSQL 15 fresh from initdb, archiving through `cairn wal-push` into a real cairnd.

Such a server is still writing its first segment: no finished segment waits, and status said
"lag 1 segment". It now says "nothing archived yet" with lag 0 (`--json`: `nothing_archived`
true, `lag_segments` 0); once its archiver tried a segment and failed, the lag counts the
segments from the failed one on; once a segment is archived, the lag is as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from pgstack import CAIRN, Stack, env_for, make_pg_dir


@pytest.fixture
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-fresh-")
    (root / "files").mkdir()
    st = Stack(root, {"app": {"paths": [str(root / "files")], "database": "appdb"}})
    try:
        yield st.start()
    finally:
        st.close()


def _archive(stack: Stack, sock: str | None = None) -> tuple[dict, str]:
    """The status of database appdb's archiver, as --json and as the text line."""
    run = [CAIRN, "--socket", sock or stack.sock]
    out = json.loads(subprocess.run([*run, "--json", "status"], capture_output=True, text=True, check=True,
                                    env=env_for(), timeout=60).stdout)
    text = subprocess.run([*run, "status"], capture_output=True, text=True, check=True, env=env_for(),
                          timeout=60).stdout
    (db,) = [d for d in out["archive"]["databases"] if d["name"] == "appdb"]
    line = [x for x in text.splitlines() if x.startswith("  database appdb:")][0]  # what waits follows it
    return db, line


def test_a_cluster_that_archived_nothing_has_no_lag(stack: Stack) -> None:
    assert stack.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") == ""
    current = stack.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    db, line = _archive(stack)
    assert db["error"] is None and db["current_segment"] == current, db
    assert db["last_archived"] is None and db["nothing_archived"] is True and db["lag_segments"] == 0, db
    assert line.startswith(f"  database appdb: writing {current}, nothing archived yet, 0 failures; system "), line

    # archive_command fails (the daemon's socket away): the segment it tried waits, and counts
    moved = stack.sock + ".moved"
    os.rename(stack.sock, moved)
    try:
        stack.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")
        end = time.monotonic() + 30
        while int(stack.psql("SELECT failed_count FROM pg_stat_archiver")) < 1:
            assert time.monotonic() < end, f"the archiver did not fail: {stack.pg.log_tail()}"
            time.sleep(0.1)
        db, line = _archive(stack, moved)
        assert db["nothing_archived"] is True and db["last_failed"] == current and db["lag_segments"] == 1, db
        assert f"nothing archived yet, lag 1 segment, {db['failed_count']} failure" in line, line
    finally:
        os.rename(moved, stack.sock)

    archived = stack.wait_archived()  # the daemon reachable again: archiving catches up
    db, line = _archive(stack)
    assert db["nothing_archived"] is False and db["last_archived"] >= archived and db["lag_segments"] == 0, db
    assert f"archived {db['last_archived']} (" in line and "lag 0 segments" in line, line


def test_the_segment_a_switch_finished_waits_while_the_server_writes_nothing(stack: Stack) -> None:
    # After pg_switch_wal() on a server that then writes nothing, its position lies on the next
    # segment's boundary; pg_walfile_name() of it names the finished segment, so a segment that
    # failed to archive counted as lag 0 until the server wrote again.
    stack.wait_archived()
    moved = stack.sock + ".moved"
    os.rename(stack.sock, moved)
    try:
        stack.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        finished = stack.psql("SELECT pg_walfile_name(pg_switch_wal())")  # a statement of its own: nothing after
        end = time.monotonic() + 30
        while int(stack.psql("SELECT failed_count FROM pg_stat_archiver")) < 1:
            assert time.monotonic() < end, f"the archiver did not fail: {stack.pg.log_tail()}"
            time.sleep(0.1)
        db, line = _archive(stack, moved)
        assert db["last_failed"] == finished and db["current_segment"] > finished, db
        assert db["lag_segments"] == 1 and "lag 1 segment," in line, (db, line)
    finally:
        os.rename(moved, stack.sock)
