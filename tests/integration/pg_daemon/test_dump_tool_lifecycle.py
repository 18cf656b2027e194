"""A dump tool never outlives its daemon, and a stopping daemon thaws its window first: a real
PostgreSQL 15, a real cairnd, a real pg_dump blocked by a lock the test holds, real kill -9 and
SIGTERM. After each: no pg_dump of the set's work directory is left, the thaw hook ran, and the
next set restores (pg_restore into a fresh database) to the rows the table holds."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pgstack import CAIRN, PG_BIN, Stack, make_pg_dir

ROWS = 200
SHUTDOWN_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-dumplife-")
    (root / "files").mkdir()
    (root / "files/readme.txt").write_text("app files\n")
    stack = Stack(root, {
        "app": {
            "paths": [str(root / "files")], "database": "shopdump",
            "quiesce": {"mode": "cold", "max_window": "5m",
                        "freeze": [["sh", "-c", f"echo frozen >> {root}/hooks.log"]],
                        "thaw": [["sh", "-c", f"echo thawed >> {root}/hooks.log"]]},
        },
    })
    stack.databases["shopdump"] = {"kind": "pg_dump", "dsn": stack.pg.dsn_for(dbname="shop")}
    stack.write_config()
    text = Path(stack.config).read_text()
    extra = f'\nshutdown_timeout = "{SHUTDOWN_TIMEOUT:g}s"'
    Path(stack.config).write_text(text.replace('socket_group = "postgres"', 'socket_group = "postgres"' + extra))
    try:
        stack.start()
        stack.psql("CREATE DATABASE shop")
        stack.pg.psql("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)", dbname="shop")
        yield stack
    finally:
        stack.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def wait_until(what: str, cond: Callable[[], object], timeout: float = 20.0) -> object:
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def dump_tools(stack: Stack) -> dict[int, str]:
    """pid -> work directory of every live pg_dump writing under the daemon's dumps directory."""
    prefix = f"--file={stack.state}/dumps/"
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not alive(int(entry)):
            continue
        for a in argv:
            text = a.decode("utf-8", "replace")
            if os.path.basename(argv[0].decode()) == "pg_dump" and text.startswith(prefix):
                out[int(entry)] = os.path.dirname(text[len("--file="):])
    return out


class Locker:
    """A session holding ACCESS EXCLUSIVE on shop.items in an open transaction (pg_dump waits)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        env = {**os.environ, "PGAPPNAME": "cairn-test-locker"}
        self.proc = subprocess.Popen(
            [str(PG_BIN / "psql"), "-X", "-q", "-h", str(stack.pg.sockdir), "-p", str(stack.pg.port),
             "-U", "postgres", "-d", "shop", "-c",
             "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(300); COMMIT;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_until("the lock", lambda: stack.pg.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = 'cairn-test-locker' AND l.mode = 'AccessExclusiveLock' "
            "AND l.granted AND l.relation = 'items'::regclass", dbname="shop") == "1")

    def release(self) -> None:
        self.stack.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'cairn-test-locker'")
        self.proc.wait(20)


def start_blocked_backup(stack: Stack) -> tuple[subprocess.Popen, int, str]:
    """Start a set and wait until its pg_dump waits for the lock; return client, tool pid, work dir."""
    client = subprocess.Popen([CAIRN, "--socket", stack.sock, "backup", "--source", "app", "--level", "full"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until("pg_dump waiting for the lock", lambda: stack.pg.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'")
        == "1")
    tools = dump_tools(stack)
    assert len(tools) >= 1, tools
    pid = min(tools)
    return client, pid, tools[pid]


def hooks(stack: Stack) -> list[str]:
    p = stack.root / "hooks.log"
    return p.read_text().split() if p.exists() else []


def next_set_restores(stack: Stack, rows: int, dbname: str) -> None:
    """Add rows, take the next set, pg_restore it into a fresh database and compare the rows."""
    stack.pg.psql(f"INSERT INTO items SELECT i, 'item ' || i FROM generate_series({rows - 99}, {rows}) i",
                  dbname="shop")
    s = stack.backup("app")
    assert s["extra"]["databases"][0]["kind"] == "pg_dump"
    stack.psql(f"CREATE DATABASE {dbname}")
    stack.ok("restore-db", s["id"], "--database", "shopdump", "--target-dsn", stack.pg.dsn_for(dbname=dbname))
    want = stack.pg.psql("SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM items", dbname="shop")
    got = stack.pg.psql("SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM items", dbname=dbname)
    assert got == want and got.count(",") == rows - 1
    assert os.listdir(os.path.join(stack.state, "dumps")) == []  # the set's work directory is gone


def test_kill_9_during_a_dump_kills_the_tool_and_the_next_set_restores(stack: Stack) -> None:
    locker = Locker(stack)
    try:
        client, pid, work = start_blocked_backup(stack)
        assert hooks(stack)[-1] == "frozen"
        stack.kill_daemon()
        assert client.wait(30) != 0
        # the tool died with its daemon: nothing is left to write into any dump directory
        wait_until("the orphaned pg_dump to die", lambda: not dump_tools(stack), timeout=10)
        assert not alive(pid)
        assert os.path.isdir(work)  # nothing has removed the dead run's directory yet
    finally:
        locker.release()
    thaws = hooks(stack).count("thawed")
    daemon = stack.start_daemon()
    # at start: the dead run's work directory is gone and the window it left open was thawed
    assert not os.path.exists(work)
    assert hooks(stack).count("thawed") == thaws + 1
    assert "thawed the cold window left open since" in daemon.log()
    next_set_restores(stack, 100, "shop_after_kill")


def test_sigterm_during_a_blocked_dump_kills_it_and_thaws_before_the_exit(stack: Stack) -> None:
    if stack.daemon is None or not stack.daemon.alive:
        stack.start_daemon()
    locker = Locker(stack)
    try:
        client, pid, work = start_blocked_backup(stack)
        assert hooks(stack)[-1] == "frozen"
        code, took = stack.daemon.terminate(SHUTDOWN_TIMEOUT + 30)
        # the set was cancelled with its dump: the daemon stopped cleanly, well within its timeout
        assert code == 0, stack.daemon.log()[-3000:]
        assert took < SHUTDOWN_TIMEOUT / 2, took
        assert hooks(stack)[-1] == "thawed"  # before the exit, not at the next start
        assert not os.path.exists(os.path.join(stack.state, "windows", "app.json"))
        assert not dump_tools(stack)
        assert not alive(pid)
        assert not os.path.exists(work)
        assert client.wait(30) != 0
        assert "did not stop within" not in stack.daemon.log()
    finally:
        locker.release()
    thaws = hooks(stack).count("thawed")
    daemon = stack.start_daemon()
    assert hooks(stack).count("thawed") == thaws  # nothing was left open to thaw
    assert "left open since" not in daemon.log()
    next_set_restores(stack, 200, "shop_after_term")

