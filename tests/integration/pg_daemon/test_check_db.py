"""`cairn check-db NAME` end to end: a real PostgreSQL 15 archiving through `cairn wal-push` into a
real cairnd. A working archiver passes (the forced segment arrives in the repository); a broken
archive_command fails fast with the archiver's statistics, and `cairn status` shows the
failures; an unknown database is named."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
from cairnd_harness import CAIRN, env_for
from pgstack import Stack, make_pg_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-chk-")
    (root / "files").mkdir()
    st = Stack(root, {"app": {"paths": [str(root / "files")], "database": "appdb"}})
    st.write_config()
    try:
        yield st.start()
    finally:
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def cli_at(socket_path: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRN, "--socket", socket_path, *args], capture_output=True, text=True, timeout=timeout,
                          env=env_for())


def test_working_archiver_passes_and_the_segment_is_in_the_repository(stack):
    r = stack.cli("--json", "check-db", "appdb", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and [s["name"] for s in report["steps"]] == ["connection", "archive_command",
                                                                             "archiver"]
    assert all(s["ok"] for s in report["steps"])
    # The segment the switch completed is the one PostgreSQL reports archived, through cairn. The
    # repository holds it before archive_command returns, and the archiver counts it only after:
    # check-db may see it first, so PostgreSQL's view is waited for (bounded).
    deadline = time.monotonic() + 20
    while (last := stack.psql("SELECT last_archived_wal FROM pg_stat_archiver")) < report["segment"]:
        assert time.monotonic() < deadline, f"PostgreSQL reports {last!r} archived, not {report['segment']}"
        time.sleep(0.1)
    human = stack.ok("check-db", "appdb").splitlines()
    assert human[-1] == "database appdb: ready for consistent sets"


def test_broken_archive_command_fails_fast_and_shows_in_status(stack):
    # archive_command runs `cairn --socket SOCK wal-push %p`: with the socket moved away every push
    # fails, while this test still reaches the daemon (it keeps serving the moved socket).
    moved = stack.sock + ".moved"
    os.rename(stack.sock, moved)
    try:
        started = time.monotonic()
        r = cli_at(moved, "--json", "check-db", "appdb", "--timeout", "120")
        took = time.monotonic() - started
        assert r.returncode == 1, r.stdout + r.stderr
        report = json.loads(r.stdout)
        archiver = report["steps"][-1]
        assert archiver["name"] == "archiver" and not archiver["ok"]
        assert re.search(r"PostgreSQL's archiver failed \d+ times since the switch", archiver["detail"])
        assert f"last failed {report['segment']}" in archiver["detail"]
        assert took < 60, f"check-db took {took:.0f}s: it should fail as soon as the archiver does"
        status = json.loads(cli_at(moved, "--json", "status").stdout)
        db = [d for d in status["archive"]["databases"] if d["name"] == "appdb"][0]
        assert db["failed_count"] > 0 and db["last_failed"] == report["segment"]
        line = [x for x in cli_at(moved, "status").stdout.splitlines() if "database appdb:" in x][0]
        assert "failure" in line and report["segment"] in line
        # A set fails before its window opens, with the archiver's state, instead of stalling.
        started = time.monotonic()
        r = cli_at(moved, "backup", "--source", "app", "--level", "full")
        assert r.returncode == 1 and "database 'appdb': WAL archiving is failing: segment " in r.stderr, r.stderr
        assert time.monotonic() - started < 60
        assert json.loads(cli_at(moved, "--json", "sets", "--source", "app").stdout) == []
    finally:
        os.rename(moved, stack.sock)
    # Fixed: the archiver catches up and the check passes again.
    r = stack.cli("check-db", "appdb", "--timeout", "120")
    assert r.returncode == 0, r.stdout + r.stderr


def test_unknown_database_is_not_found(stack):
    r = stack.cli("check-db", "nosuchdb")
    assert r.returncode == 3 and "unknown database 'nosuchdb'" in r.stderr


def test_restore_db_writes_the_restore_command_given(stack, tmp_path):
    (stack.root / "files" / "a.txt").write_text("a\n")
    stack.backup("app", "full")
    command = "/usr/local/bin/fetch-wal --from backup1 %f %p"
    target = tmp_path / "pgdata"
    out = stack.ok("restore-db", "latest", "--source", "app", "--database", "appdb", "--target", str(target),
                   "--restore-command", command, timeout=300)
    # Progress while the daemon writes, against the data directory's files (not the set's one file).
    totals = [int(m.group(1)) for m in re.finditer(r"^restore-db: restore: \d+/(\d+) files", out, re.M)]
    written = int(re.search(r"into .*: (\d+) files", out).group(1))
    assert totals and all(100 < t <= written for t in totals), out
    conf = (target / "postgresql.auto.conf").read_text()
    assert f"restore_command = '{command}'" in conf
    # Without %p recovery could not place the file: refused before anything is written.
    bad = tmp_path / "bad"
    r = stack.cli("restore-db", "latest", "--source", "app", "--database", "appdb", "--target", str(bad),
                  "--restore-command", "fetch %f")
    assert r.returncode == 2 and "invalid restore_command 'fetch %f'" in r.stderr
    assert not bad.exists() or not os.listdir(bad)
