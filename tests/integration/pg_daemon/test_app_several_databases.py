"""An application with several databases, end to end: two PostgreSQL 15 clusters (one holding two
databases, one of them in a tablespace) archiving through `cairn wal-push` into a real cairnd,
and a real MariaDB server with two databases dumped by `mariadb-dump`, all written by one
application (multiapp.py) the whole time: every row names a file it wrote before the row.

Two sources capture the same application and share its servers: one in a cold window (the
application stopped by its freeze hook, started again by its thaw hook), one hot. Each set is
brought back as an operator would (`cairn restore SET --target DIR --databases`, a server
started on each restored data directory, each dump restored with `restore-db --target-dsn`),
and its rows are checked against its files: one to one for the cold set, every row finds its
file for the hot one (what docs/postgres.md says each kind of set promises)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mariadbserver import MariaDbServer, mariadb_available
from pgserver import chown_postgres
from pgstack import ArchivingServer, Stack, make_pg_dir

PY = sys.executable
APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiapp.py")
CLUSTERS = {"appdb": ("shop", "auth"), "ledgerdb": ("ledger",)}  # [[database]] -> its databases with rows
DUMPS = ("chat", "crm")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    reason = mariadb_available()
    if reason:
        pytest.skip(reason)
    root = make_pg_dir("cairn-multi-")
    (root / "app").mkdir()
    (root / "ts").mkdir()
    chown_postgres(root / "ts")
    maria = MariaDbServer()
    st = Stack(root, {})
    st.maria = maria  # type: ignore[attr-defined]
    ledger = st.archiving_server()
    margs = maria.client_args()
    st.databases["ledgerdb"] = {"dsn": ledger.dsn, "pgdata": str(ledger.pgdata)}
    for name in DUMPS:
        st.databases[name] = {"kind": "command", "restore": ["mariadb", *margs, "{target}"],
                              "dump": ["mariadb-dump", *margs, "--single-transaction", name]}
    conf = root / "app.json"
    conf.write_text(json.dumps({"root": str(root / "app"), "maria": {"args": margs, "dbs": list(DUMPS)},
                                "pg": [st.pg.dsn_for(dbname="shop"), st.pg.dsn_for(dbname="auth"),
                                       ledger.dsn_for(dbname="ledger")]}))
    pid = str(root / "app.pid")
    st.app = [PY, APP, "start", str(conf), pid]  # type: ignore[attr-defined]
    databases = ["appdb", "ledgerdb", *DUMPS]
    st.sources["cold"] = {"paths": [str(root / "app")], "database": databases, "watch": True,
                          "quiesce": {"mode": "cold", "freeze": [PY, APP, "stop", pid],
                                      "thaw": [PY, APP, "start", str(conf), pid], "timeout": "30s"}}
    st.sources["hot"] = {"paths": [str(root / "app")], "database": databases, "quiesce": {"mode": "hot"}}
    st.write_config()
    try:
        maria.start()
        for name in DUMPS:
            maria.sql(f"CREATE DATABASE {name}")
        st.start()
        ledger.start()
        st.psql("CREATE DATABASE shop")
        st.psql(f"CREATE TABLESPACE ts LOCATION '{root / 'ts'}'")
        st.psql("CREATE DATABASE auth TABLESPACE ts")
        ledger.psql("CREATE DATABASE ledger")
        subprocess.run(st.app, check=True, timeout=60)  # type: ignore[attr-defined]
        yield st
    finally:
        subprocess.run([PY, APP, "stop", pid], check=False, timeout=60)
        try:
            st.close()
        finally:
            maria.cleanup()
            subprocess.run(["rm", "-rf", str(root)], check=False)


def wait_for_rows(stack: Stack, more_than: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            n = int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop"))
        except RuntimeError:  # the table appears once the application runs
            n = 0
        if n > more_than:
            return
        assert time.monotonic() < end, f"the application wrote no more than {n} rows into shop"
        time.sleep(0.05)


def restored_rows(stack: Stack, set_id: str, name: str) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    """Restore the set as an operator would; (its files, database -> its rows (path, sha256))."""
    holder = make_pg_dir("cairn-multi-target-")
    stack.holders.append(holder)
    target = holder / "app"
    out = stack.ok("restore", set_id, "--target", str(target), "--databases", timeout=300)
    assert "5. the application" in out  # two clusters and two dumps come first
    rows: dict[str, list[tuple[str, str]]] = {}
    for cluster, dbs in CLUSTERS.items():
        srv = ArchivingServer(pgdata=holder / f"app-db-{cluster}")
        stack.restored.append(srv)
        srv.start(timeout=120)
        srv.wait_promoted()
        for db in dbs:
            text = srv.psql("SELECT path || ' ' || sha256 FROM files", dbname=db)
            rows[db] = [tuple(line.split(" ")) for line in text.splitlines() if line]  # type: ignore[misc]
        srv.stop()
    maria = stack.maria  # type: ignore[attr-defined]
    for db in DUMPS:
        maria.sql(f"CREATE DATABASE {db}_{name}")
        stack.ok("restore-db", set_id, "--database", db, "--target-dsn", f"{db}_{name}")
        text = maria.sql("SELECT path, sha256 FROM files", f"{db}_{name}")
        rows[db] = [tuple(line.split("\t")) for line in text.splitlines() if line]  # type: ignore[misc]
    assert all(rows.values()), {db: len(r) for db, r in rows.items()}
    return target, rows


def rows_without_their_file(files: Path, rows: dict[str, list[tuple[str, str]]]) -> list[str]:
    bad = []
    for db, pairs in rows.items():
        for path, digest in pairs:
            f = files / path
            if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
                bad.append(f"{db}: {path}")
    return bad


def data_files(files: Path) -> set[str]:
    return {str(p.relative_to(files)) for p in (files / "data").rglob("*") if p.is_file()}


def test_a_cold_set_restores_every_database_and_the_files_at_one_moment(stack: Stack) -> None:
    wait_for_rows(stack, 60)
    s = stack.backup("cold", "full")
    assert s["status"] == "ok", s["extra"]["window"].get("warning")
    assert [r["name"] for r in s["extra"]["databases"]] == ["appdb", "ledgerdb", *DUMPS]
    assert [t["name"] for t in s["extra"]["databases"][0]["tablespaces"]] == ["ts"]
    files, rows = restored_rows(stack, s["id"], "cold")
    assert rows_without_their_file(files, rows) == []
    named = [path for pairs in rows.values() for path, _ in pairs]
    assert len(named) == len(set(named)) and set(named) == data_files(files)  # one to one


def test_a_hot_set_holds_the_file_of_every_row_of_every_database(stack: Stack) -> None:
    subprocess.run(stack.app, check=True, timeout=60)  # type: ignore[attr-defined]
    wait_for_rows(stack, int(stack.pg.psql("SELECT count(*) FROM files", dbname="shop")) + 40)
    s = stack.backup("hot", "full")
    assert s["status"] == "ok"
    files, rows = restored_rows(stack, s["id"], "hot")
    assert rows_without_their_file(files, rows) == []
    # the application went on writing while the set was taken: files no row of the set names
    assert data_files(files) > {path for pairs in rows.values() for path, _ in pairs}
