"""A set taken while PostgreSQL's archiver works off a backlog, end to end: a real PostgreSQL 15
archiving through `cairn wal-push` into a real cairnd whose socket was away (as when the daemon
was down), so its archiver's latest attempt failed and a queue of segments waits. Once the daemon
answers again, the set's check before its window sees archiving work and leaves the backlog to
the set's own WAL wait, instead of failing with "WAL archiving is failing" because the forced
segment, queued behind the backlog, did not arrive within the check's bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from pgstack import Stack, make_pg_dir

HERE = os.path.dirname(os.path.abspath(__file__))
BOUND = 2.0  # the daemon's pre-window archiver check (30 s as installed), see bounded_cairnd.py
BACKLOG = 20  # segments queued while pushes fail: archiving them takes far longer than BOUND


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-blg-")
    (root / "files").mkdir()
    (root / "files" / "a.txt").write_text("a\n")
    st = Stack(root, {"app": {"paths": [str(root / "files")], "database": "appdb",
                              "quiesce": {"mode": "cold", "freeze": [["true"]], "thaw": [["true"]]}}})
    st.launcher = (sys.executable, os.path.join(HERE, "bounded_cairnd.py"))
    st.daemon_env = {"CAIRN_TEST_PRE_WINDOW_TIMEOUT": str(BOUND)}
    st.write_config()
    try:
        yield st.start()
    finally:
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def failed_count(stack: Stack) -> int:
    return int(stack.psql("SELECT failed_count FROM pg_stat_archiver"))


def test_a_set_after_archiving_recovers_waits_for_the_backlog_instead_of_failing(stack: Stack) -> None:
    stack.wait_archived()
    # The daemon unreachable for archive_command (its socket moved away; this test still reaches it).
    moved = stack.sock + ".moved"
    os.rename(stack.sock, moved)
    try:
        failed = failed_count(stack)
        stack.psql("CREATE TABLE backlog (x int); "
                   + " ".join(f"INSERT INTO backlog VALUES ({i}); SELECT pg_switch_wal();" for i in range(BACKLOG)))
        last = stack.psql("SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
        # a whole round of failed attempts: the archiver pauses, its latest attempt a failure
        end = time.monotonic() + 30
        while failed_count(stack) < failed + 3:
            assert time.monotonic() < end, f"the archiver did not fail: {stack.pg.log_tail()}"
            time.sleep(0.1)
    finally:
        os.rename(moved, stack.sock)
    started = time.monotonic()
    r = stack.cli("--json", "backup", "--source", "app", "--level", "full", timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    # the set waited for its WAL behind the backlog, which took longer than the check's bound
    assert time.monotonic() - started > BOUND
    archived = stack.psql("SELECT last_archived_wal FROM pg_stat_archiver")
    assert archived[:24] >= s["extra"]["database"]["wal"]["last"] > last
    assert stack.sets("app")[0]["id"] == s["id"]
