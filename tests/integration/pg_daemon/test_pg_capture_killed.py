"""SIGKILL of cairnd at random points of a set with a PostgreSQL base backup (a real
PostgreSQL 15 archiving into the daemon through `cairn wal-push`, files beside it): the next
start says at most one line about it, PostgreSQL is left in no backup and its archiver catches
up, the next set succeeds, verify --read-data is clean, and the last set restores as a
database with every row.

CAIRN_CRASH_SEED picks the kill delays, CAIRN_CRASH_TRIALS how many kills (3 by default).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time

import pytest
from pgstack import CAIRN, app_stack

SEED = int(os.environ.get("CAIRN_CRASH_SEED", "8123"))
TRIALS = int(os.environ.get("CAIRN_CRASH_TRIALS", "3"))


def wait_until(what: str, cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _verify_between_pushes(stack, within: float = 60.0) -> dict:
    """`verify --read-data` once no WAL push was running while it read: the server archives on
    its own schedule (the backup history file after a set, a checkpoint's segment), and a pack a
    running push has stored but not yet indexed is a warning naming that push, by design."""
    end = time.monotonic() + within
    while True:
        report = json.loads(stack.cli("--json", "verify", "--read-data").stdout)
        pushing = [w for w in report["warnings"] if "may belong to what is running now (wal-push" in w["message"]]
        if not pushing or time.monotonic() > end:
            return report
        stack.wait_archived()


@pytest.mark.campaign
def test_database_sets_killed_at_random_points() -> None:
    rng = random.Random(SEED)
    files = {f"f{i}.bin": rng.randbytes(256 * 1024) for i in range(8)}
    with app_stack("cairn-pgkill-", files) as stack:
        stack.psql("CREATE TABLE t (id int primary key, pad text)")
        rows = 0
        stack.backup("app")
        for trial in range(TRIALS):
            stack.psql(f"INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({rows + 1}, {rows + 5000}) g")
            rows += 5000
            client = subprocess.Popen([CAIRN, "--socket", stack.sock, "backup", "--source", "app", "--level",
                                       rng.choice(["full", "incremental"])], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.05, 1.5))
            stack.kill_daemon()
            _, err = client.communicate(timeout=60)
            assert "Traceback" not in err, err
            daemon = stack.start_daemon()
            noisy = [ln for ln in daemon.log().splitlines() if "level=warning" in ln or "level=error" in ln]
            assert len(noisy) <= 1, daemon.log()
            wait_until("PostgreSQL to leave the killed daemon's backup", lambda: stack.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND application_name = 'cairn'") == "0")
            stack.wait_archived()  # the archiver retried what failed while the daemon was down
            last = stack.backup("app", rng.choice(["full", "incremental"]))
            stack.wait_archived()
            report = _verify_between_pushes(stack)
            odd = [w for w in report["warnings"] if not w["message"].endswith("prune removes it")]
            assert report["ok"] and not report["errors"] and not odd, f"trial {trial}: {report}"
        restored = stack.restore_db(last["id"])
        assert restored.psql("SELECT count(*) FROM t") == str(rows)
