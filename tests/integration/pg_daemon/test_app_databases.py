"""Applications whose tree holds what is not the application's own writing, end to end with a
real PostgreSQL 15 server archiving through `cairn wal-push` into a real cairnd whose change
journal watches the sources, and cold sets taken with `cairn backup`:

- a tablespace of the application's cluster below the source's path, which the server keeps
  writing while the application is stopped (a checkpoint, the background writer, autovacuum);
- the daemon's own state directory and repository below a source's path (as the embedded
  default has them: ~/.local/share/cairn inside a source of $HOME);

and a set whose WAL was lost from the archive since, which restore-db refuses to lay down."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator

import pytest
from pgserver import chown_postgres
from pgstack import Stack, make_pg_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-appdbs-")
    (root / "app/content").mkdir(parents=True)
    (root / "app/content/readme.txt").write_text("the application's files\n")
    space = root / "app/pgspace"  # a tablespace of the application's cluster, inside its tree
    space.mkdir()
    chown_postgres(space)
    st = Stack(root, {})
    home = root / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes/a.txt").write_text("a note\n")
    st.state = str(home / ".local/share/cairn")
    st.repo = str(home / ".local/share/cairn/repo")
    st.sources["home"] = {"paths": [str(home)], "watch": True,
                          "quiesce": {"mode": "cold", "freeze": ["true"], "thaw": ["true"]}}
    (root / "plain").mkdir()
    (root / "plain/a.txt").write_text("a\n")
    st.sources["plain"] = {"paths": [str(root / "plain")], "database": "appdb"}
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


def test_the_daemons_own_state_and_repository_inside_a_source_are_left_out(stack: Stack) -> None:
    home = stack.root / "home"
    sets = [json.loads(stack.ok("--json", "backup", "--source", "home", "--level", level, timeout=120))
            for level in ("full", "incremental")]
    (home / "notes/b.txt").write_text("another note\n")
    sets.append(json.loads(stack.ok("--json", "backup", "--source", "home", "--level", "incremental")))
    for s in sets:
        w = s["extra"]["window"]
        assert s["status"] == "ok" and "warning" not in w, w.get("warning")
    listing = stack.ok("ls", sets[-1]["id"], ".local/share")
    assert "cairn" not in listing  # neither the state directory nor the repository's packs
    assert "b.txt" in stack.ok("ls", sets[-1]["id"], "notes")
    # the change journal is not fed its own writes: the last set changed b.txt and its directory
    assert sets[-1]["stats"]["added"] + sets[-1]["stats"]["modified"] <= 2, sets[-1]["stats"]


def test_a_set_whose_wal_was_lost_is_not_laid_down_as_a_directory_that_cannot_recover(stack: Stack) -> None:
    # Runs last in this module: it removes a WAL segment from the repository.
    s = stack.backup("plain", "full")
    rec = s["extra"]["database"]
    lost = rec["wal"]["last"]
    os.unlink(os.path.join(stack.repo, "wal", f"{rec['system_identifier']}@{lost}"))
    holder = make_pg_dir("cairn-appdbs-lost-")
    stack.holders.append(holder)
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(holder / "data"))
    assert r.returncode == 1, r.stdout
    assert f"WAL segment {lost} of database 'appdb' is not in the archive" in r.stderr
    assert "Traceback" not in r.stderr and not (holder / "data").exists()
    r = stack.cli("restore", s["id"], "--target", str(holder / "app"), "--databases", timeout=180)
    assert r.returncode == 1 and f"WAL segment {lost} of database 'appdb'" in r.stderr
    assert not os.path.exists(holder / "app-db-appdb" / "global" / "pg_control")


def test_a_target_past_a_lost_wal_segment_is_refused(stack: Stack) -> None:
    # After the test above: this set's own WAL is whole; a segment after it is lost.
    s = stack.backup("plain", "full")
    space = str(s["extra"]["database"]["system_identifier"])
    stack.psql("CREATE TABLE pitr (x int)")
    lost = stack.wait_archived()
    stack.psql("INSERT INTO pitr VALUES (1)")
    lsn = stack.psql("SELECT pg_current_wal_lsn()")
    later = stack.wait_archived()
    stack.psql("INSERT INTO pitr VALUES (2)")
    stack.wait_archived()  # the newest segment: a target time now is not past the archive
    assert lost < later
    wal = os.path.join(stack.repo, "wal")
    os.unlink(os.path.join(wal, f"{space}@{lost}"))
    stored_long_ago = time.time() - 600  # beyond the clock skew a store's time is allowed
    os.utime(os.path.join(wal, f"{space}@{later}"), (stored_long_ago, stored_long_ago))
    now = stack.psql("SELECT now()")
    holder = make_pg_dir("cairn-appdbs-gap-")
    stack.holders.append(holder)
    for target in (["--target-lsn", lsn], ["--target-time", now]):
        r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(holder / "data"), *target)
        assert r.returncode == 1, r.stdout
        assert f"WAL segment {lost} of database 'appdb' is not in the archive, and recovery to" in r.stderr
        assert not (holder / "data").exists()
    # a target before the gap still restores: the set's own point
    srv = stack.restore_db(s["id"])
    assert srv.psql("SELECT count(*) FROM pg_class WHERE relname = 'pitr'") == "0"
    srv.stop()
