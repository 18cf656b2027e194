"""Dump engines end to end: a real MariaDB server (kind 'command', mariadb-dump) and a real
PostgreSQL 15 reached over TCP (kind 'pg_dump') captured in one cold set through the real cairnd,
restored with `cairn restore-db --target-dsn` into fresh databases; a failing or overlong dump
fails the set and the window still thaws."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgstack import PG_BIN, Stack, make_pg_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mariadbserver import MariaDbServer, mariadb_available  # noqa: E402

ROWS = 500


def psql_argv(stack: Stack, sql: str, dbname: str = "shop") -> list[str]:
    return [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(stack.pg.sockdir), "-p",
            str(stack.pg.port), "-U", "postgres", "-d", dbname, "-c", sql]


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Stack, MariaDbServer]]:
    reason = mariadb_available()
    if reason:
        pytest.skip(reason)
    root = make_pg_dir("cairn-dump-")
    for d in ("both/files", "fail/files", "slow/files", "expire/files", "hot/content/index"):
        (root / d).mkdir(parents=True)
    (root / "both/files/readme.txt").write_text("shop files\n")
    (root / "fail/files/a.txt").write_text("a\n")
    (root / "slow/files/a.txt").write_text("a\n")
    (root / "expire/files/a.txt").write_text("a\n")
    maria = MariaDbServer().start()
    stack = Stack(root, {})
    maria_sql = [shutil.which("mariadb") or "mariadb", *maria.client_args(), "shop", "-e"]
    stack.sources = {
        "both": {
            "paths": [str(root / "both/files")], "database": ["shopmaria", "shoppg"],
            "quiesce": {"mode": "cold",
                        # the freeze hooks commit one more row each: the dumps run after them
                        "freeze": [psql_argv(stack, "INSERT INTO items VALUES (1000, 'at-freeze')"),
                                   [*maria_sql, "INSERT INTO items VALUES (1000, 'at-freeze')"]],
                        # the thaw hooks commit a row each that no dump of this set may hold
                        "thaw": [psql_argv(stack, "INSERT INTO items VALUES (2000, 'after-thaw')"),
                                 [*maria_sql, "INSERT INTO items VALUES (2000, 'after-thaw')"],
                                 ["sh", "-c", f"touch {root}/both/thawed"]]},
        },
        "fail": {
            "paths": [str(root / "fail/files")], "database": "brokendb",
            "quiesce": {"mode": "cold", "freeze": [["sh", "-c", f"touch {root}/fail/frozen"]],
                        "thaw": [["sh", "-c", f"touch {root}/fail/thawed"]]},
        },
        "slow": {
            "paths": [str(root / "slow/files")], "database": "slowdb",
            "quiesce": {"mode": "cold", "freeze": [["sh", "-c", f"touch {root}/slow/frozen"]],
                        "thaw": [["sh", "-c", f"touch {root}/slow/thawed"]]},
        },
        "hot": {
            "paths": [str(root / "hot/content")], "database": "hotdb",
            "capture_first": [str(root / "hot/content/index")],
            "quiesce": {"mode": "hot"},
        },
        "expire": {
            "paths": [str(root / "expire/files")], "database": "hangdb",
            "quiesce": {"mode": "cold", "max_window": "2s", "freeze": [["sh", "-c", f"touch {root}/expire/frozen"]],
                        "thaw": [["sh", "-c", f"touch {root}/expire/thawed"]]},
        },
    }
    stack.databases.update({
        "shopmaria": {"kind": "command",
                      "dump": ["mariadb-dump", *maria.client_args(), "--single-transaction", "shop"],
                      "restore": ["mariadb", *maria.client_args(), "{target}"]},
        "shoppg": {"kind": "pg_dump", "dsn": stack.pg.dsn_for(dbname="shop", tcp=True), "jobs": 2},
        "brokendb": {"kind": "command",
                     "dump": ["sh", "-c", "echo 'CREATE TABLE partial'; "
                                          "echo 'mariadb-dump: Got error: 1049: \"Unknown database nosuch\"' >&2; "
                                          "exit 2"],
                     "restore": ["true"]},
        # the dump leaves a file in the index (walked before it) and in the content (walked after)
        "hotdb": {"kind": "command",
                  "dump": ["sh", "-c", f"touch {root}/hot/content/index/by-dump {root}/hot/content/by-dump; "
                                       "echo 'dump data'"],
                  "restore": ["true"]},
        "hangdb": {"kind": "command", "dump": ["sh", "-c", f"echo $$ > {root}/expire/dump.pid; exec sleep 60"],
                   "restore": ["true"]},
        "slowdb": {"kind": "command", "dump": ["sh", "-c", f"echo $$ > {root}/slow/dump.pid; exec sleep 60"],
                   "restore": ["true"], "timeout": "1s"},
    })
    stack.write_config()
    try:
        stack.start()
        stack.psql("CREATE DATABASE shop")
        stack.pg.psql("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)", dbname="shop")
        stack.pg.psql(f"INSERT INTO items SELECT i, 'pg item ' || i FROM generate_series(1, {ROWS}) i",
                      dbname="shop")
        maria.sql("CREATE DATABASE shop")
        maria.sql("CREATE TABLE items (id int PRIMARY KEY, name varchar(64) NOT NULL) ENGINE=InnoDB", "shop")
        maria.sql(f"INSERT INTO items SELECT seq, CONCAT('maria item ', seq) FROM seq_1_to_{ROWS}", "shop")
        yield stack, maria
    finally:
        stack.close()
        maria.cleanup()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def expected(prefix: str) -> list[str]:
    return [f"{i}\t{prefix} item {i}" for i in range(1, ROWS + 1)] + ["1000\tat-freeze"]


def test_mariadb_and_remote_postgres_in_one_cold_set_restore_to_the_rows_before_the_thaw(env) -> None:
    stack, maria = env
    s = stack.backup("both")
    assert (stack.root / "both/thawed").exists()
    recs = {r["name"]: r for r in s["extra"]["databases"]}
    assert recs["shopmaria"]["kind"] == "command" and recs["shopmaria"]["layout"] == "stream"
    assert recs["shoppg"]["kind"] == "pg_dump" and recs["shoppg"]["layout"] == "directory"
    assert recs["shoppg"]["jobs"] == 2 and recs["shoppg"]["server_version"].startswith("15")
    assert "database" not in s["extra"]  # no base backup in this set
    # both databases hold the after-thaw rows now; the set must not
    assert stack.pg.psql("SELECT count(*) FROM items WHERE id = 2000", dbname="shop") == "1"
    assert maria.sql("SELECT count(*) FROM items WHERE id = 2000", "shop") == "1"

    stack.psql("CREATE DATABASE shop_restored")
    target = stack.pg.dsn_for(dbname="shop_restored", tcp=True)
    out = json.loads(stack.ok("--json", "restore-db", s["id"], "--database", "shoppg", "--target-dsn", target))
    assert out["tool"] == "pg_restore" and out["kind"] == "pg_dump"
    rows = stack.pg.psql("SELECT id || E'\\t' || name FROM items ORDER BY id", dbname="shop_restored")
    assert rows.splitlines() == expected("pg")

    maria.sql("CREATE DATABASE shop_restored")
    out = json.loads(stack.ok("--json", "restore-db", s["id"], "--database", "shopmaria",
                              "--target-dsn", "shop_restored"))
    assert out["tool"] == "mariadb" and out["bytes"] == recs["shopmaria"]["bytes"] > 0
    rows = maria.sql("SELECT id, name FROM items ORDER BY id", "shop_restored")
    assert rows.splitlines() == expected("maria")

    # --target DIR of a dump writes its files as stored and runs nothing (a host without the
    # database's configuration, in disaster recovery): fed to the tools by hand they load the rows
    files = stack.root / "pgfiles"
    out = stack.ok("restore-db", s["id"], "--database", "shoppg", "--target", str(files))
    assert (files / "toc.dat").is_file()
    assert f"pg_restore --dbname=DSN --jobs=2 {files}" in out
    stack.psql("CREATE DATABASE shop_by_hand")
    subprocess.run([stack.pg.bin("pg_restore"), f"--dbname={stack.pg.dsn_for(dbname='shop_by_hand', tcp=True)}",
                    "--exit-on-error", "--no-password", str(files)], check=True, capture_output=True, timeout=120)
    rows = stack.pg.psql("SELECT id || E'\\t' || name FROM items ORDER BY id", dbname="shop_by_hand")
    assert rows.splitlines() == expected("pg")
    doc = json.loads(stack.ok("--json", "restore-db", s["id"], "--database", "shopmaria", "--target",
                              str(stack.root / "mariafiles")))
    dump = doc["dump"]
    assert doc["kind"] == "command" and dump.startswith(str(stack.root / "mariafiles") + "/")
    assert os.path.getsize(dump) == recs["shopmaria"]["bytes"]
    maria.sql("CREATE DATABASE shop_by_hand")
    with open(dump, "rb") as f:
        subprocess.run([shutil.which("mariadb") or "mariadb", *maria.client_args(), "shop_by_hand"], stdin=f,
                       check=True, capture_output=True, timeout=120)
    assert maria.sql("SELECT id, name FROM items ORDER BY id", "shop_by_hand").splitlines() == expected("maria")
    # recovery options do not apply to a dump: refused before anything is written
    r = stack.cli("restore-db", s["id"], "--database", "shoppg", "--target", str(stack.root / "nodir"),
                  "--target-time", "2026-01-01 00:00:00")
    assert r.returncode == 2 and "is a dump (kind 'pg_dump')" in r.stderr and not (stack.root / "nodir").exists()
    # a target that is not empty: its hint does not offer --delta, which does not mend a dump
    r = stack.cli("restore-db", s["id"], "--database", "shopmaria", "--target", str(stack.root / "mariafiles"))
    assert r.returncode == 1 and "is not empty" in r.stderr and "--delta" not in r.stderr, r.stderr
    r = stack.cli("restore-db", s["id"], "--database", "nosuch", "--target-dsn", target)
    assert r.returncode == 3 and "holds no database 'nosuch'" in r.stderr
    assert not os.listdir(os.path.join(stack.state, "restores"))  # scratch directories are removed
    # the typed records are also in the metadata of each database's attachment
    from cairn.store.repository import Repository

    repo = Repository.open_local(stack.repo, read_only=True)
    try:
        stored = repo.get_set(s["id"])
        assert stored.attachments["db:shopmaria"]["database"] == recs["shopmaria"]
        assert stored.attachments["db:shoppg"]["database"] == recs["shoppg"]
        assert stored.attachments["db:shopmaria"]["bytes_total"] == recs["shopmaria"]["bytes"]
    finally:
        repo.close()


def test_failing_dump_fails_the_set_with_the_tools_message_and_thaws(env) -> None:
    stack, _ = env
    r = stack.cli("backup", "--source", "fail", "--level", "full")
    assert r.returncode == 1
    assert "dump of database 'brokendb' failed: sh exited with status 2" in r.stderr
    assert "Unknown database nosuch" in r.stderr
    assert (stack.root / "fail/frozen").exists() and (stack.root / "fail/thawed").exists()
    assert stack.sets("fail") == []
    assert not os.path.exists(os.path.join(stack.state, "windows", "fail.json"))


def test_dump_past_its_timeout_is_killed_fails_the_set_and_thaws(env) -> None:
    stack, _ = env
    r = stack.cli("backup", "--source", "slow", "--level", "full")
    assert r.returncode == 1
    assert "dump of database 'slowdb' did not finish within 1s: sh was stopped" in r.stderr
    assert (stack.root / "slow/thawed").exists()
    assert stack.sets("slow") == []
    pid = int((stack.root / "slow/dump.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the tool was killed (and reaped), not left running
        os.kill(pid, 0)


def test_window_deadline_kills_a_running_dump_fails_the_set_and_thaws(env) -> None:
    stack, _ = env
    r = stack.cli("backup", "--source", "expire", "--level", "full")
    assert r.returncode == 1
    assert "quiesce window of source 'expire' passed its max_window of 2s" in r.stderr
    assert (stack.root / "expire/thawed").exists()
    assert stack.sets("expire") == []
    pid = int((stack.root / "expire/dump.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_hot_mode_dumps_after_capture_first_and_before_the_content(env) -> None:
    stack, _ = env
    s = stack.backup("hot")
    (rec,) = s["extra"]["databases"]
    assert rec["name"] == "hotdb" and rec["bytes"] == len("dump data\n")
    listed = {e["path"] for e in json.loads(stack.ok("--json", "ls", s["id"], "-r"))}
    assert "by-dump" in listed                # the content walk came after the dump
    assert "index/by-dump" not in listed      # capture_first came before it
    assert "index" in listed
