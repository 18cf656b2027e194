"""Faults around consistent sets, end to end against a real PostgreSQL 15 and a real cairnd:
the backup connection terminated mid-backup, the daemon killed inside a cold window, a failing
required freeze hook, and a database that fails its checks before any window opens."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from pgstack import CAIRN, Stack, make_pg_dir


def touch(path: Path) -> list[str]:
    return ["sh", "-c", f"touch {path}"]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-flt-")
    for d in ("term/content", "bad/files", "baddb/files", "kill/files", "elsewhere"):
        (root / d).mkdir(parents=True)
    for i in range(12):  # enough to read that the backup is still running when it is terminated
        (root / "term/content" / f"blob{i:02d}.bin").write_bytes(os.urandom(12 << 20))
    (root / "bad/files/a.txt").write_text("a\n")
    (root / "kill/files/a.txt").write_text("a\n")
    sources = {
        "term": {"paths": [str(root / "term/content")], "database": "appdb",
                 "quiesce": {"mode": "cold", "freeze": [touch(root / "term/frozen")],
                             "thaw": [touch(root / "term/thawed")]}},
        "badhook": {"paths": [str(root / "bad/files")], "database": "appdb",
                    "quiesce": {"mode": "cold",
                                "freeze": [["sh", "-c", "echo 'cannot stop the app: boom' >&2; exit 3"]],
                                "thaw": [touch(root / "bad/thawed")]}},
        "baddb": {"paths": [str(root / "baddb/files")], "database": "wrongdb",
                  "quiesce": {"mode": "cold", "freeze": [touch(root / "baddb/frozen")],
                              "thaw": [touch(root / "baddb/thawed")]}},
        "killme": {"paths": [str(root / "kill/files")], "database": "appdb",
                   "quiesce": {"mode": "cold", "timeout": "600s",
                               "freeze": [["sh", "-c", f"echo $$ > {root}/kill/hook.pid; touch {root}/kill/frozen; "
                                                       "exec sleep 300"]],
                               "thaw": [["sh", "-c", f"date +%s.%N > {root}/kill/thawed"]]}},
    }
    st = Stack(root, sources)
    st.databases["wrongdb"] = {"dsn": st.pg.dsn, "pgdata": str(root / "elsewhere")}
    st.write_config()
    try:
        yield st.start()
    finally:
        hook_pid = root / "kill/hook.pid"
        if hook_pid.exists():
            try:
                os.kill(int(hook_pid.read_text()), 9)
            except (ProcessLookupError, ValueError):
                pass
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(path: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.01)


def test_terminated_backup_connection_fails_the_set_and_the_next_one_works(stack: Stack) -> None:
    root = stack.root
    terminated: list[int] = []

    def terminate_backup_session() -> None:
        wait_for(root / "term/frozen")  # freeze ran: the next statement of the session is pg_backup_start
        conn = psycopg2.connect(stack.pg.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        end = time.monotonic() + 30
        while time.monotonic() < end and not terminated:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'cairn' "
                        "AND query LIKE '%pg_control_checkpoint%'")
            for (pid,) in cur.fetchall():
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                terminated.append(pid)
            time.sleep(0.005)
        conn.close()

    killer = threading.Thread(target=terminate_backup_session)
    killer.start()
    r = stack.cli("backup", "--source", "term", "--level", "full")
    killer.join(40)
    assert terminated, "the backup session was never seen in backup mode"
    assert r.returncode == 1
    assert "base backup of database 'appdb' aborted: lost the connection to database 'appdb'" in r.stderr
    assert (root / "term/thawed").exists()
    # the server ended the backup with the session: nothing left in backup mode
    assert not (stack.pg.pgdata / "backup_label").exists()
    assert "aborting backup due to backend exiting before pg_backup_stop was called" in stack.pg.log_text()
    assert not os.path.exists(os.path.join(stack.state, "windows", "term.json"))
    assert stack.sets("term") == []

    (root / "term/thawed").unlink()
    s = stack.backup("term")
    assert s["extra"]["database"]["stop_lsn"] and (root / "term/thawed").exists()
    assert s["stats"]["files"] == 12


def test_failing_required_freeze_hook_fails_the_set_without_capture_and_thaws(stack: Stack) -> None:
    r = stack.cli("backup", "--source", "badhook", "--level", "full")
    assert r.returncode == 1
    assert "freeze hook (sh -c 'echo '\"'\"'cannot stop the app: boom'\"'\"' >&2; exit 3') failed with exit code 3: " \
        "cannot stop the app: boom" in r.stderr, r.stderr
    assert (stack.root / "bad/thawed").exists()
    assert stack.sets("badhook") == []
    assert stack.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cairn'") == "0"


def test_database_checks_fail_the_set_before_any_window_opens(stack: Stack) -> None:
    r = stack.cli("backup", "--source", "baddb", "--level", "full")
    assert r.returncode == 1
    assert (f"database 'wrongdb': configured pgdata '{stack.root / 'elsewhere'}' is not the server's "
            f"data_directory '{stack.pg.pgdata}'") in r.stderr
    assert not (stack.root / "baddb/frozen").exists() and not (stack.root / "baddb/thawed").exists()


def test_daemon_killed_inside_a_cold_window_thaws_first_at_next_start(stack: Stack) -> None:
    root = stack.root
    backup = subprocess.Popen([CAIRN, "--socket", stack.sock, "backup", "--source", "killme", "--level", "full"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(root / "kill/frozen")
    record = Path(stack.state) / "windows" / "killme.json"
    assert record.exists()
    stack.kill_daemon()
    assert backup.wait(30) != 0
    hook = int((root / "kill/hook.pid").read_text())
    end = time.monotonic() + 15
    while alive(hook):
        assert time.monotonic() < end, "the freeze hook outlived its daemon: it could end after the next thaw"
        time.sleep(0.05)
    assert not (root / "kill/thawed").exists()

    daemon = stack.start_daemon()
    # READY=1 came after thaw: the marker and the removed record are there the moment we see it
    assert (root / "kill/thawed").exists()
    assert not record.exists()
    log = daemon.log()
    assert "thawed the cold window left open since" in log
    assert log.index("thawed the cold window") < log.index("listening on unix socket")
    stack.ok("status")

