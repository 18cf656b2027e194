"""restore-db of a database with a tablespace, and the max_window deadline of a cold window, end
to end against a real PostgreSQL 15 archiving through `cairn wal-push` into a real cairnd."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import chown_postgres
from pgstack import ArchivingServer, Stack, make_pg_dir

BIG = 128 << 20  # content the slow window must still capture when its deadline passes


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-rdb2-")
    for d in ("ts/files", "slow/files"):
        (root / d).mkdir(parents=True)
    (root / "ts/files/a.txt").write_text("a\n")
    (root / "slow/files/a.txt").write_text("a\n")
    (root / "slow/files/big.bin").write_bytes(os.urandom(BIG))
    (root / "slow/slowdown").touch()
    spc = root / "spc"
    spc.mkdir(mode=0o700)
    chown_postgres(spc)
    sources = {
        "ts": {"paths": [str(root / "ts/files")], "database": "appdb"},
        # while the file 'slowdown' exists, freeze takes all but 0.3 s of the window; without it the
        # window has room for a loaded machine
        "slow": {"paths": [str(root / "slow/files")], "database": "appdb",
                 "quiesce": {"mode": "cold", "max_window": "8s",
                             "freeze": [["sh", "-c", f"touch {root}/slow/frozen; "
                                                     f"if [ -e {root}/slow/slowdown ]; then sleep 7.7; fi"]],
                             "thaw": [["sh", "-c", f"touch {root}/slow/thawed"]]}},
    }
    st = Stack(root, sources)
    try:
        yield st.start()
    finally:
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_restore_db_of_a_database_with_a_tablespace(stack: Stack) -> None:
    spc = stack.root / "spc"
    stack.psql(f"CREATE TABLESPACE cairn_ts LOCATION '{spc}'")
    stack.psql("CREATE TABLE in_ts (id int PRIMARY KEY, note text) TABLESPACE cairn_ts")
    stack.psql("INSERT INTO in_ts SELECT g, 'row ' || g FROM generate_series(1, 500) g")
    oid = stack.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'cairn_ts'")
    s = stack.backup("ts")
    db = s["extra"]["database"]
    assert [(t["oid"], t["location"]) for t in db["tablespaces"]] == [(int(oid), str(spc))]
    stack.psql("INSERT INTO in_ts VALUES (501, 'after the set')")

    holder = make_pg_dir("cairn-rdb2-target-")
    stack.holders.append(holder)
    target = holder / "data"
    stack.ok("restore-db", s["id"], "--database", "appdb", "--target", str(target))
    landed = target / "cairn_tablespaces" / oid
    assert landed.is_dir()
    assert any(p.name.startswith("PG_15_") for p in landed.iterdir())
    assert f"{oid} {landed}" in (target / "tablespace_map").read_text()
    # before any server starts, the tablespace link already leads to the restored copy, never to
    # the source server's live tablespace
    assert os.readlink(target / "pg_tblspc" / oid) == str(landed)
    # the WAL to the set's consistent point is in pg_wal/ already, listed for wal-fetch
    placed = (target / "pg_wal" / "cairn-restore-db.wal").read_text().split()
    assert placed[0] == db["wal"]["first"] and db["wal"]["last"] in placed
    assert all((target / "pg_wal" / name).stat().st_size == db["wal_segment_size"] for name in placed)

    srv = ArchivingServer(pgdata=target)
    stack.restored.append(srv)
    srv.start(timeout=120)
    srv.wait_promoted()
    link = target / "pg_tblspc" / oid
    assert link.is_symlink() and os.readlink(link) == str(landed)
    assert srv.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'cairn_ts'") == \
        str(landed)
    assert srv.psql("SELECT count(*), max(id) FROM in_ts") == "500|500"
    srv.psql("INSERT INTO in_ts VALUES (600, 'written on the restored server')")
    assert srv.psql("SELECT count(*) FROM in_ts") == "501"
    # recovery read the placed segments from pg_wal/: not from the archive, and the
    # restore_command answered in the shell (no client started, so it printed nothing)
    log = srv.log_text()
    assert f'restored log file "{db["wal"]["first"]}" from archive' not in log
    assert f"cairn: {db['wal']['first']}" not in log
    # the original server and its tablespace are untouched by the restored one
    assert stack.psql("SELECT count(*) FROM in_ts") == "501"
    assert stack.psql("SELECT note FROM in_ts WHERE id = 501") == "after the set"


def test_capture_past_max_window_fails_the_set_thaws_and_the_next_set_works(stack: Stack) -> None:
    root = stack.root
    r = stack.cli("backup", "--source", "slow", "--level", "full", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "quiesce window of source 'slow' passed its max_window of 8s; the set is aborted and thaw ran" \
        in r.stderr
    assert (root / "slow/frozen").exists() and (root / "slow/thawed").exists()
    assert stack.sets("slow") == []
    assert not (Path(stack.state) / "windows" / "slow.json").exists()
    # backup mode belongs to the backup's session: that session is gone, so no backup is left open
    end = time.monotonic() + 10
    while stack.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cairn'") != "0":
        assert time.monotonic() < end, "the backup session outlived the failed set"
        time.sleep(0.05)

    (root / "slow/slowdown").unlink()
    (root / "slow/files/big.bin").unlink()
    (root / "slow/thawed").unlink()
    s = stack.backup("slow")
    assert s["extra"]["database"]["stop_lsn"] and s["stats"]["files"] == 1
    assert (root / "slow/thawed").exists()
    assert [x["id"] for x in stack.sets("slow")] == [s["id"]]
