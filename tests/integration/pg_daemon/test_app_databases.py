"""An application whose PostgreSQL cluster keeps part of its data inside the application's own
tree, end to end: a real PostgreSQL 15 server with a tablespace below the source's path,
archiving through `cairn wal-push` into a real cairnd whose change journal watches that path,
and cold sets taken with `cairn backup` while the server keeps writing its own files (what a
checkpoint, the background writer or autovacuum do while the application is stopped)."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator

import pytest
from pgstack import Stack, make_pg_dir
from pgserver import chown_postgres


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-appdbs-")
    (root / "app/content").mkdir(parents=True)
    (root / "app/content/readme.txt").write_text("the application's files\n")
    space = root / "app/pgspace"  # a tablespace of the application's cluster, inside its tree
    space.mkdir()
    chown_postgres(space)
    st = Stack(root, {})
    psql = " ".join(shlex.quote(a) for a in (st.pg.bin("psql"), "-X", "-q", "-h", str(st.pg.sockdir), "-p",
                                              str(st.pg.port), "-U", "postgres", "-d", "postgres"))
    thawed, busy = root / "thawed", root / "busy.pid"
    # The freeze hook stops nothing the server does: until the thaw, the server rewrites the
    # tablespace's relation files (an update flushed by a checkpoint, again and again).
    server_work = (f"rm -f {thawed}; (echo $$ > {busy}; while [ ! -e {thawed} ]; do "
                   f"{psql} -c 'UPDATE spaced SET n = n + 1' -c CHECKPOINT; sleep 0.05; done; rm -f {busy}) "
                   ">/dev/null 2>&1 &")
    st.sources["app"] = {"paths": [str(root / "app")], "database": "appdb", "watch": True,
                         "quiesce": {"mode": "cold", "freeze": ["sh", "-c", server_work],
                                     "thaw": ["touch", str(thawed)], "timeout": "30s", "max_window": "120s"}}
    st.write_config()
    try:
        st.start()
        st.psql(f"CREATE TABLESPACE appspace LOCATION '{space}'")
        st.psql("CREATE TABLE spaced (id int PRIMARY KEY, n int NOT NULL, pad text) TABLESPACE appspace")
        st.psql("INSERT INTO spaced SELECT g, 0, repeat('p', 300) FROM generate_series(1, 20000) g")
        yield st
    finally:
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def wait_gone(path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < end, f"{path} is still there after {timeout}s"
        time.sleep(0.05)


def test_the_servers_own_writes_to_a_tablespace_in_the_source_do_not_make_a_cold_set_fuzzy(stack: Stack) -> None:
    root = stack.root
    stack.backup("app", "full")  # the journal's base; the server was already writing then
    wait_gone(root / "busy.pid")
    before = int(stack.psql("SELECT sum(n) FROM spaced"))
    s = json.loads(stack.ok("--json", "backup", "--source", "app", "--level", "incremental", timeout=180))
    wait_gone(root / "busy.pid")
    # the server did write into the tablespace while the window was open
    assert int(stack.psql("SELECT sum(n) FROM spaced")) > before
    w = s["extra"]["window"]
    assert s["status"] == "ok", w.get("warning")
    assert "warning" not in w and w.get("changed_files", []) == []
    assert [t["location"] for t in s["extra"]["database"]["tablespaces"]] == [str(root / "app/pgspace")]
