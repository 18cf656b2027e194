"""A cold window never stops the application for a set that cannot be taken: through the real
cairnd, a database that cannot be captured fails the set before any freeze hook runs (each
freeze hook here leaves a marker file). A real MariaDB server dumped by kind 'command' with a
`check` command (`mariadb-admin ping`), stopped and running; a real PostgreSQL 15 captured by
kind 'postgres' and by kind 'pg_dump', stopped; a pg_dump role that may not read every table;
a dump tool that is not installed. `cairn
check-db` runs the same check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgstack import Stack, make_pg_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mariadbserver import MariaDbServer, mariadb_available  # noqa: E402

ROWS = 200
SOURCES = ("maria", "pg", "pgdump", "notool", "rights")


def cold(root: Path, name: str) -> dict[str, object]:
    """A cold window whose hooks leave `frozen` / `thawed` in the source's directory, and whose
    on_failure hook writes the set's error to `failed` there."""
    return {"mode": "cold", "freeze": ["touch", str(root / name / "frozen")],
            "thaw": ["touch", str(root / name / "thawed")],
            "on_failure": [["sh", "-c", f'echo "$CAIRN_ERROR" > {root / name / "failed"}']]}


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Stack, MariaDbServer]]:
    reason = mariadb_available()
    if reason:
        pytest.skip(reason)
    root = make_pg_dir("cairn-precheck-")
    for name in SOURCES:
        (root / name / "files").mkdir(parents=True)
        (root / name / "files" / "a.txt").write_text(f"{name}\n")
    maria = MariaDbServer().start()
    stack = Stack(root, {})
    stack.sources = {
        "maria": {"paths": [str(root / "maria/files")], "database": "chat", "quiesce": cold(root, "maria")},
        "pg": {"paths": [str(root / "pg/files")], "database": "appdb", "quiesce": cold(root, "pg")},
        "pgdump": {"paths": [str(root / "pgdump/files")], "database": "shoppg", "quiesce": cold(root, "pgdump")},
        "notool": {"paths": [str(root / "notool/files")], "database": "gone", "quiesce": cold(root, "notool")},
        "rights": {"paths": [str(root / "rights/files")], "database": "ledger", "quiesce": cold(root, "rights")},
    }
    mariadb_admin = shutil.which("mariadb-admin") or "mariadb-admin"
    stack.databases.update({
        "chat": {"kind": "command",
                 "dump": ["mariadb-dump", *maria.client_args(), "--single-transaction", "shop"],
                 "restore": ["mariadb", *maria.client_args(), "{target}"],
                 "check": [mariadb_admin, *maria.client_args(), "--connect-timeout=5", "ping"]},
        "shoppg": {"kind": "pg_dump", "dsn": stack.pg.dsn_for(dbname="postgres", tcp=True)},
        "gone": {"kind": "command", "dump": ["cairn-test-no-such-dump-tool", "--all"], "restore": ["true"]},
        "ledger": {"kind": "pg_dump", "dsn": stack.pg.dsn_for(user="dumper", dbname="ledger", tcp=True)},
    })
    stack.write_config()
    try:
        stack.start()
        # a role that may read one table of database ledger, not its sequence nor another table
        stack.psql("CREATE ROLE dumper LOGIN")
        stack.psql("CREATE DATABASE ledger")
        for sql in ("CREATE TABLE entries (id serial PRIMARY KEY, amount int NOT NULL)",
                    "INSERT INTO entries (amount) SELECT i FROM generate_series(1, 50) i",
                    "CREATE TABLE salaries (name text, amount int)", "GRANT SELECT ON entries TO dumper"):
            stack.pg.psql(sql, dbname="ledger")
        maria.sql("CREATE DATABASE shop")
        maria.sql("CREATE TABLE items (id int PRIMARY KEY, name varchar(64) NOT NULL) ENGINE=InnoDB", "shop")
        maria.sql(f"INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_{ROWS}", "shop")
        yield stack, maria
    finally:
        stack.close()
        maria.cleanup()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def assert_failed_unfrozen(stack: Stack, source: str, r: subprocess.CompletedProcess, *said: str) -> None:
    """The set of `source` failed with one line holding `said`, and no freeze hook ran."""
    assert not (stack.root / source / "frozen").exists(), f"the freeze hook ran for a set that failed: {r.stderr}"
    assert not (stack.root / source / "thawed").exists()
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for text in said:
        assert text in lines[0], r.stderr
    # the failure is reported like any failed set's: the on_failure hooks get its message
    reported = (stack.root / source / "failed").read_text().strip()
    assert reported and reported in lines[0], reported
    assert stack.sets(source) == []


def test_mariadb_down_fails_the_set_before_the_freeze_with_the_checks_stderr(env) -> None:
    stack, maria = env
    maria.stop()
    try:
        r = stack.cli("backup", "--source", "maria", "--level", "full")
        checked = stack.cli("--json", "check-db", "chat")
    finally:
        maria.start()
    failed = "check of database 'chat' failed: mariadb-admin exited with status 1"
    assert_failed_unfrozen(stack, "maria", r, failed, "Can't connect")
    # `cairn check-db` runs the same check, and says the same
    assert checked.returncode == 1, checked.stdout + checked.stderr
    step = json.loads(checked.stdout)["steps"][-2]
    assert step["name"] == "check" and not step["ok"] and failed in step["detail"], checked.stdout


def test_mariadb_up_the_check_passes_and_the_set_restores(env) -> None:
    stack, maria = env
    report = json.loads(stack.ok("--json", "check-db", "chat"))
    assert [(x["name"], x["ok"]) for x in report["steps"]] == [("dump tool", True), ("restore tool", True),
                                                               ("check", True), ("archiving", True)]
    s = stack.backup("maria")
    assert (stack.root / "maria/frozen").exists() and (stack.root / "maria/thawed").exists()
    (rec,) = s["extra"]["databases"]
    assert rec["name"] == "chat" and rec["tool"] == "mariadb-dump" and rec["bytes"] > 0
    maria.sql("CREATE DATABASE shop_restored")
    stack.ok("restore-db", s["id"], "--database", "chat", "--target-dsn", "shop_restored", timeout=180)
    rows = maria.sql("SELECT id, name FROM items ORDER BY id", "shop_restored").splitlines()
    assert rows == [f"{i}\titem {i}" for i in range(1, ROWS + 1)]


def test_postgresql_down_fails_base_backup_and_pg_dump_sets_before_the_freeze(env) -> None:
    stack, _ = env
    stack.pg.stop()
    try:
        r_pg = stack.cli("backup", "--source", "pg", "--level", "full")
        r_dump = stack.cli("backup", "--source", "pgdump", "--level", "full")
    finally:
        stack.pg.start()
    assert_failed_unfrozen(stack, "pg", r_pg, "unable to connect to database 'appdb'")
    assert_failed_unfrozen(stack, "pgdump", r_dump, "unable to connect to database 'shoppg'")


def test_a_dump_tool_that_is_not_installed_fails_the_set_before_the_freeze(env) -> None:
    stack, _ = env
    r = stack.cli("backup", "--source", "notool", "--level", "full")
    assert_failed_unfrozen(stack, "notool", r,
                           "database 'gone': the tool 'cairn-test-no-such-dump-tool' is not installed")


def test_a_pg_dump_role_without_the_rights_to_read_fails_the_set_before_the_freeze(env) -> None:
    stack, _ = env
    r = stack.cli("backup", "--source", "rights", "--level", "full")
    assert_failed_unfrozen(stack, "rights", r, "role 'dumper' cannot dump database 'ledger': it lacks "
                           "SELECT on sequence public.entries_id_seq, SELECT on table public.salaries "
                           "(grant them, or membership in pg_read_all_data)")
    checked = stack.cli("--json", "check-db", "ledger")  # says the same
    assert checked.returncode == 1 and "role 'dumper' cannot dump database 'ledger'" in checked.stdout, checked
    # granted what pg_dump reads, the same role dumps the database
    stack.pg.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO dumper", dbname="ledger")
    r = stack.cli("backup", "--source", "rights", "--level", "full")  # pg_dump reads the sequence too
    assert_failed_unfrozen(stack, "rights", r, "it lacks SELECT on sequence public.entries_id_seq (grant them")
    stack.pg.psql("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO dumper", dbname="ledger")
    s = stack.backup("rights")
    assert (stack.root / "rights/frozen").exists() and (stack.root / "rights/thawed").exists()
    (rec,) = s["extra"]["databases"]
    assert rec["name"] == "ledger" and rec["kind"] == "pg_dump" and rec["bytes"] > 0
