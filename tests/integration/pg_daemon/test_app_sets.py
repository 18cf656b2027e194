"""Application sets at every level, end to end: an application (app.py) that flushes files and
rows while its freeze hook stops it, real PostgreSQL 15 servers archiving through `cairn
wal-push` into a real cairnd with its change journal on, sets taken with `cairn backup`, and
every set restored with `cairn restore` and `cairn restore-db` (a server started on each
restored data directory) compared with what the application left at that set's freeze."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgstack import CAIRN, Stack, make_pg_dir

PY = sys.executable
APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")


def app_hooks(root: Path, pidfile: Path, snaps: Path, dsns: list[str]) -> dict:
    """A hook stack: stop the application (thaw: start it), then snapshot what it left."""
    return {"mode": "cold", "timeout": "60s", "max_window": "180s", "hooks": [
        {"freeze": [PY, APP, "stop", str(pidfile)], "thaw": [PY, APP, "start", str(root), str(pidfile), *dsns]},
        {"freeze": [PY, APP, "snapshot", str(root), str(snaps), *dsns]},
    ]}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-app-")
    for d in ("one/app", "three/app", "hot/alf_data/solr4Backup", "hot/alf_data/contentstore"):
        (root / d).mkdir(parents=True)
    st = Stack(root, {})
    # Three separately created clusters: each starts its WAL at the same segment names, and each
    # archives into its own WAL name space of the one repository (its system identifier).
    idm, jpa = st.archiving_server(), st.archiving_server()
    st.named = {"idm": idm, "jpa": jpa}  # type: ignore[attr-defined]
    st.databases["jcr"] = {"dsn": st.pg.dsn_for(dbname="jcr"), "pgdata": str(st.pg.pgdata)}
    st.databases["idm"] = {"dsn": idm.dsn, "pgdata": str(idm.pgdata)}
    st.databases["jpa"] = {"dsn": jpa.dsn, "pgdata": str(jpa.pgdata)}
    one_dsn = st.pg.dsn_for(dbname="one")
    st.sources["one"] = {"paths": [str(root / "one/app")], "database": "appdb", "watch": True,
                         "quiesce": app_hooks(root / "one/app", root / "one/app.pid", root / "one/snaps", [one_dsn])}
    three = [st.pg.dsn_for(dbname="jcr"), idm.dsn, jpa.dsn]
    st.sources["three"] = {"paths": [str(root / "three/app")], "database": ["jcr", "idm", "jpa"], "watch": True,
                           "quiesce": app_hooks(root / "three/app", root / "three/app.pid", root / "three/snaps",
                                                three)}
    st.sources["hot"] = {"paths": [str(root / "hot/alf_data")], "database": "appdb", "watch": True,
                         "capture_first": [str(root / "hot/alf_data/solr4Backup")],
                         "exclude": [str(root / "hot/alf_data/contentstore") + "/**/*.part"],
                         "quiesce": {"mode": "hot"}}
    (root / "walwait").mkdir()
    (root / "walwait/a.txt").write_text("a\n")
    st.databases["slowwal"] = {"dsn": st.pg.dsn, "pgdata": str(st.pg.pgdata), "wal_timeout": "4s"}
    st.sources["walwait"] = {"paths": [str(root / "walwait")], "database": "slowwal", "quiesce": {
        "mode": "cold", "freeze": ["sh", "-c", f"date +%s.%N > {root}/frozen"],
        "thaw": ["sh", "-c", f"date +%s.%N > {root}/thawed"],
        "on_success": ["sh", "-c", f'echo "$CAIRN_SET_ID" > {root}/succeeded'],
        "on_failure": [["sh", "-c", f'echo "$CAIRN_ERROR" > {root}/failed']]}}
    (root / "verified").mkdir()
    verify = (f"(sleep 0.3; {CAIRN} --socket {st.sock} verify > {root}/verified.tmp 2>&1; "
              f"mv {root}/verified.tmp {root}/verified.out) &")
    st.sources["verified"] = {"paths": [str(root / "verified")], "quiesce": {
        "mode": "cold", "freeze": ["sh", "-c", f"rm -f {root}/verified.out; {verify}"]}}
    st.write_config()
    try:
        st.start()
        idm.start()
        jpa.start()
        st.psql("CREATE DATABASE one")
        st.psql("CREATE DATABASE jcr")
        yield st
    finally:
        for pid in root.glob("*/*.pid"):
            subprocess.run([PY, APP, "stop", str(pid)], check=False, timeout=60)
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def count_rows(dsn: str) -> int:
    import psycopg2

    c = psycopg2.connect(dsn)
    try:
        cur = c.cursor()
        cur.execute("SELECT count(*) FROM files")
        return int(cur.fetchone()[0])
    finally:
        c.close()


def wait_more_rows(dsn: str, than: int, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while True:
        try:
            n = count_rows(dsn)
        except Exception:  # noqa: BLE001 - the table appears once the application started
            n = 0
        if n > than:
            return n
        assert time.monotonic() < end, f"the application wrote no rows beyond {than}"
        time.sleep(0.05)


def restored_rows(srv) -> dict[str, str]:
    out = srv.psql("SELECT path || ' ' || sha256 FROM files ORDER BY path", dbname=srv.app_db)
    return dict(line.split(" ") for line in out.splitlines() if line)


def check_sets_match_snapshots(stack: Stack, name: str, dbs: list[tuple[str, str]], sets: list[dict]) -> None:
    """Every set restored (files and each database) equals the snapshot its freeze took."""
    root = stack.root
    for n, s in enumerate(sets, start=1):
        snap = json.loads((root / name / "snaps" / f"snap-{n}.json").read_text())
        files = stack.restore_files(s["id"], f"{name}-files-{n}")
        from app import tree  # the same walk as the snapshot

        assert tree(str(files)) == snap["files"], f"set {n} ({s['level']}): files differ from its freeze"
        for i, (database, dbname) in enumerate(dbs):
            srv = stack.restore_db(s["id"], database=database)
            srv.app_db = dbname
            assert restored_rows(srv) == snap["rows"][i], f"set {n} ({s['level']}): rows of {database} differ"
            srv.stop()


def take_levels(stack: Stack, source: str, dsn: str) -> list[dict]:
    """Full, incremental, differential of a source whose application runs in between; the
    application is stopped after the last set (what it wrote since is in no set, and it would
    only load the machine while the sets are restored and checked)."""
    out = []
    for level in ("full", "incremental", "differential"):
        before = count_rows(dsn)
        wait_more_rows(dsn, before + 40)
        s = stack.backup(source, level)
        assert s["level"] == level, s["note"]
        out.append(s)
    subprocess.run([PY, APP, "stop", str(stack.root / source / "app.pid")], check=True, timeout=60)
    return out


def test_cold_full_incremental_differential_match_the_freeze(stack: Stack) -> None:
    root = stack.root
    dsn = stack.pg.dsn_for(dbname="one")
    subprocess.run([PY, APP, "start", str(root / "one/app"), str(root / "one/app.pid"), dsn], check=True,
                   timeout=60)
    sets = take_levels(stack, "one", dsn)
    full, inc, diff = sets
    assert inc["base"] == full["id"] and diff["base"] == full["id"]
    # the journal's hint was used (made inside the window, after the application's flush)
    assert [s["extra"]["changes"] for s in sets] == ["walk", "journal", "journal"]
    for s in sets:
        w = s["extra"]["window"]
        assert w["levels"] == 2 and w["levels_started"] == 2
        assert [h["exit_code"] for h in w["freeze"]] == [0, 0] and [h["exit_code"] for h in w["thaw"]] == [0]
        assert s["extra"]["database"]["name"] == "appdb" and s["status"] == "ok"
        # the base backup (and its checkpoint) started before the freeze, not inside the window
        # (the window's start is recorded to the millisecond; its freeze hooks take far longer)
        assert s["extra"]["database"]["started"] < w_started(w) + 0.001
    check_sets_match_snapshots(stack, "one", [("appdb", "one")], sets)


@pytest.mark.slow
def test_three_databases_in_one_cold_window(stack: Stack) -> None:
    root = stack.root
    dsns = [stack.databases["jcr"]["dsn"], stack.databases["idm"]["dsn"], stack.databases["jpa"]["dsn"]]
    subprocess.run([PY, APP, "start", str(root / "three/app"), str(root / "three/app.pid"), *dsns], check=True,
                   timeout=60)
    sets = take_levels(stack, "three", dsns[0])
    for s in sets:
        recs = s["extra"]["databases"]
        assert [r["name"] for r in recs] == ["jcr", "idm", "jpa"]
        assert {r["system_identifier"] for r in recs[1:]} != {recs[0]["system_identifier"]}
        w = s["extra"]["window"]
        # every base backup stopped inside the one window
        assert all(r["stopped"] - w_started(w) < w["window_s"] for r in recs)
    # cairn sets and cairn ls name the databases
    table = stack.ok("sets", "--source", "three")
    assert "jcr,idm,jpa" in table
    assert "db:jcr" in stack.ok("ls", sets[0]["id"]) and "db:jpa" in stack.ok("ls", sets[0]["id"])
    check_sets_match_snapshots(stack, "three", [("jcr", "jcr"), ("idm", "postgres"), ("jpa", "postgres")], sets)
    # the fresh clusters' WAL names collide; the repository holds each cluster's file in its own name space
    spaces = wal_catalog(stack)
    idm_id, jpa_id = (str(recs[i]["system_identifier"]) for i in (1, 2))
    assert idm_id != jpa_id
    shared = spaces.get(idm_id, set()) & spaces.get(jpa_id, set())
    assert any(len(n) == 24 for n in shared), "the second and third clusters wrote no segment of the same name"
    assert "" not in spaces, "a real server's WAL went to the flat name space"

    # point-in-time restore of the second cluster, past the last set, through wal-fetch in its name space
    idm = stack.named["idm"]
    idm.psql("CREATE TABLE pitr_marks (id int PRIMARY KEY)")
    idm.psql("INSERT INTO pitr_marks VALUES (1)")
    noted = idm.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    idm.psql("INSERT INTO pitr_marks VALUES (2)")
    wait_archived(idm)
    srv = stack.restore_db(sets[-1]["id"], "--target-time", noted, database="idm")
    assert srv.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM pitr_marks") == "1"
    srv.stop()


def wal_catalog(stack: Stack) -> dict[str, set[str]]:
    """The repository's WAL catalog: name space -> file names ("" the flat name space)."""
    out: dict[str, set[str]] = {}
    for obj in os.listdir(os.path.join(stack.repo, "wal")):
        if not obj.startswith("."):
            ns, _, name = obj.rpartition("@")
            out.setdefault(ns, set()).add(name)
    return out


def wait_archived(srv, timeout: float = 60.0) -> None:
    """Switch WAL on `srv` and wait until its archiver archived the switched segment."""
    seg = srv.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    srv.psql("SELECT pg_switch_wal()")
    end = time.monotonic() + timeout
    while srv.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[:24] < seg:
        assert time.monotonic() < end, f"segment {seg} was not archived in {timeout}s"
        time.sleep(0.1)


def w_started(w: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(w["started"]).timestamp()


def test_hot_index_backup_inside_the_root_is_captured_first_and_restored_in_place(stack: Stack) -> None:
    root = stack.root
    data = root / "hot/alf_data"
    dsn = stack.pg.dsn_for(dbname="postgres")
    stack.psql("CREATE TABLE IF NOT EXISTS files (path text PRIMARY KEY, sha256 text NOT NULL, n bigint NOT NULL)")
    subprocess.run([PY, APP, "start", str(data / "contentstore"), str(root / "hot/app.pid"), dsn], check=True,
                   timeout=60)
    indexer = subprocess.Popen([PY, APP, "indexer", str(data / "solr4Backup"), dsn, str(root / "hot/indexer.pid")])
    try:
        wait_more_rows(dsn, 50)
        sets = [stack.backup("hot", "full")]
        wait_more_rows(dsn, count_rows(dsn) + 40)
        sets.append(stack.backup("hot", "incremental"))
    finally:
        subprocess.run([PY, APP, "stop", str(root / "hot/app.pid")], check=True, timeout=60)
        indexer.terminate()
        indexer.wait(30)
    for n, s in enumerate(sets):
        files = stack.restore_files(s["id"], f"hot-files-{n}")
        srv = stack.restore_db(s["id"])
        srv.app_db = "postgres"
        rows = restored_rows(srv)
        assert len(rows) >= 50
        missing = [p for p in rows if not (files / "contentstore" / p).is_file()]
        assert missing == [], f"set {n}: rows name missing files"
        from app import tree

        content = tree(str(files / "contentstore"))
        assert all(content[p] == h for p, h in rows.items())
        # the index backup kept its place, and it is never newer than the database
        index_n = int((files / "solr4Backup" / "snapshot.txt").read_text())
        newest = int(srv.psql("SELECT coalesce(max(n), 0) FROM files"))
        assert 0 < index_n <= newest
        assert not list((files / "contentstore").rglob("*.part"))
        srv.stop()


def test_verify_during_a_backup_leaves_the_next_incremental_on_the_newest_set(stack: Stack) -> None:
    # The freeze hook of source 'verified' starts a `cairn verify` that runs while the set's
    # write session reads a big new file (the verify reloads the repository's index).
    root = stack.root
    big = root / "verified/big.bin"
    big.write_bytes(os.urandom(8 << 20))
    first = stack.backup("verified", "full")
    big.write_bytes(os.urandom(160 << 20))
    middle = stack.backup("verified", "incremental")
    assert middle["base"] == first["id"]
    end = time.monotonic() + 60
    while not (root / "verified.out").exists() or "repository" not in (root / "verified.out").read_text():
        assert time.monotonic() < end, "the verify started by the freeze hook did not finish"
        time.sleep(0.1)
    (root / "verified/small.txt").write_text("after\n")
    after = stack.backup("verified", "incremental")
    assert after["base"] == middle["id"]


def test_the_set_waits_for_its_wal_after_the_thaw_and_is_never_visible_without_it(stack: Stack) -> None:
    root = stack.root
    os.chmod(stack.sock, 0o600)  # the server's wal-push can no longer reach the daemon
    try:
        r = stack.cli("backup", "--source", "walwait", "--level", "full", timeout=120)
        failed_at = time.time()
    finally:
        os.chmod(stack.sock, 0o660)
    assert r.returncode == 1
    assert "of database 'slowwal' did not reach the archive within 4s" in r.stderr
    assert "WAL segment 0000000" in r.stderr
    # pg_backup_stop did not wait inside the window: thaw ran before the WAL wait began
    thawed = float((root / "thawed").read_text())
    frozen = float((root / "frozen").read_text())
    assert thawed - frozen < failed_at - thawed and failed_at - thawed >= 3.5
    assert stack.sets("walwait") == []
    assert "did not reach the archive" in (root / "failed").read_text()
    assert not (root / "succeeded").exists()
    stack.wait_archived()
    s = stack.backup("walwait", "full")
    assert (root / "succeeded").read_text().strip() == s["id"]
    assert s["extra"]["capture"]["wal_wait_s"] < 60 and s["extra"]["database"]["name"] == "slowwal"
