"""Database restores over a WAL archive that lost segments, end to end: two PostgreSQL 15 clusters
archiving through `cairn wal-push` into a real cairnd, an application source holding files and
both databases, and segments removed from the repository's WAL catalog as a damaged repository
loses them.

- `cairn restore SET --target DIR --databases` checks every database of the set (the WAL its
  consistent point needs, its place) before it writes anything: a segment the second database
  needs is missing, its place is on a read-only file system or among the daemon's own
  directories, so it exits 1 naming that database or place, and neither the files nor the
  first database are written.
- `cairn restore-db --target-end` over a gap after the set (later segments archived) exits 1
  naming the first missing segment and the point recovery would stop at, before anything is
  written; with `--accept-wal-gap` it restores, and PostgreSQL recovers up to the gap and
  promotes there.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cairn import walnames
from mounts import mount_tmpfs
from pgserver import chown_postgres
from pgstack import ArchivingServer, Stack, make_pg_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-walgaps-")
    app = root / "app"
    app.mkdir()
    (app / "settings.txt").write_text("the application's files\n")
    st = Stack(root, {})
    ledger = st.archiving_server()
    st.databases["ledgerdb"] = {"dsn": ledger.dsn, "pgdata": str(ledger.pgdata)}
    st.sources["app"] = {"paths": [str(app)], "database": ["appdb", "ledgerdb"]}
    st.sources["solo"] = {"paths": [str(app)], "database": "appdb"}
    st.write_config()
    try:
        st.start()
        ledger.start()
        st.ledger = ledger  # type: ignore[attr-defined]
        yield st
    finally:
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def holder(stack: Stack, prefix: str) -> Path:
    h = make_pg_dir(prefix)
    stack.holders.append(h)
    return h


def record_of(s: dict, name: str) -> dict:
    """The set's record of database `name` (extra 'databases' for several, 'database' for one)."""
    extra = s["extra"]
    held = extra.get("databases") or [extra.get("database")]
    recs = list(held.values()) if isinstance(held, dict) else held
    return next(r for r in recs if r and r.get("name") == name)


def lose(stack: Stack, rec: dict, segment: str) -> None:
    """Remove `segment` of the database's cluster from the repository's WAL catalog."""
    os.unlink(os.path.join(stack.repo, "wal", f"{rec['system_identifier']}@{segment}"))


def test_restore_databases_refuses_a_place_it_cannot_write_before_writing_anything(stack: Stack) -> None:
    s = stack.backup("app")
    h = holder(stack, "cairn-walgaps-ro-")
    (h / "ro").mkdir()
    mount_tmpfs(str(h / "ro"))
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(h / "ro")], check=True, capture_output=True)
        place = h / "ro" / "ledger"
        r = stack.cli("restore", s["id"], "--target", str(h / "app"), "--databases", "--db-target",
                      f"ledgerdb={place}", timeout=180)
        assert r.returncode == 1, r.stdout
        assert (f"database target '{place}' for 'ledgerdb' cannot be written: '{h / 'ro'}' is on a read-only file "
                "system") in r.stderr, r.stderr
        assert sorted(os.listdir(h)) == ["ro"] and os.listdir(h / "ro") == []
    finally:
        subprocess.run(["umount", str(h / "ro")], check=False, capture_output=True)


def test_restore_databases_refuses_a_place_among_the_daemons_own_before_writing_anything(stack: Stack) -> None:
    s = stack.backup("app")
    h = holder(stack, "cairn-walgaps-own-")
    place = os.path.join(stack.state, "appdb-restored")  # the daemon on this host would write it
    r = stack.cli("restore", s["id"], "--target", str(h / "app"), "--databases", "--db-target", f"appdb={place}",
                  timeout=180)
    assert r.returncode == 1, r.stdout
    assert f"restore target '{place}' lies in the daemon's state directory" in r.stderr, r.stderr
    assert os.listdir(h) == [] and not os.path.exists(place)


def test_restore_databases_checks_every_database_before_writing_anything(stack: Stack) -> None:
    s = stack.backup("app")
    ledger = record_of(s, "ledgerdb")
    lost = ledger["wal"]["last"]  # the second database can no longer reach its consistent point
    lose(stack, ledger, lost)
    h = holder(stack, "cairn-walgaps-app-")
    target = h / "app"
    target.mkdir()
    r = stack.cli("restore", s["id"], "--target", str(target), "--databases", timeout=180)
    assert r.returncode == 1, r.stdout
    assert f"WAL segment {lost} of database 'ledgerdb' is not in the archive" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr  # the line, a hint
    # nothing written: not the files, not the first database
    assert sorted(os.listdir(h)) == ["app"] and os.listdir(target) == []
    r = stack.cli("restore", s["id"], "--target", str(target), "--databases", "--dry-run")
    assert r.returncode == 1 and f"WAL segment {lost} of database 'ledgerdb'" in r.stderr, r.stderr
    assert sorted(os.listdir(h)) == ["app"] and os.listdir(target) == []


def lsn_at(segment: str) -> str:
    """The LSN where `segment` (16 MiB segments) begins."""
    parsed = walnames.parse_segment(segment, walnames.DEFAULT_SEGMENT_SIZE)
    assert parsed is not None
    pos = parsed[1] * walnames.DEFAULT_SEGMENT_SIZE
    return f"{pos >> 32:X}/{pos & 0xFFFFFFFF:X}"


def test_target_end_over_a_gap_is_refused_unless_accepted(stack: Stack) -> None:
    s = stack.backup("solo")
    rec = record_of(s, "appdb")
    stack.psql("CREATE TABLE gapped (n int)")
    stack.psql("INSERT INTO gapped VALUES (1)")
    before = stack.wait_archived()  # pg_switch_wal(), then until that segment is archived
    stack.psql("INSERT INTO gapped VALUES (2)")
    lost = stack.wait_archived()
    stack.psql("INSERT INTO gapped VALUES (3)")
    after = stack.wait_archived()
    assert rec["wal"]["last"] <= before < lost < after, (rec["wal"], before, lost, after)
    lose(stack, rec, lost)
    reach = lsn_at(lost)
    h = holder(stack, "cairn-walgaps-end-")
    target = h / "data"
    for extra in ([], ["--stream"]):
        r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(target), "--target-end", *extra)
        assert r.returncode == 1, r.stdout
        assert (f"WAL segment {lost} of database 'appdb' is not in the archive, and the archive holds later segments "
                f"of timeline 1: recovery to the end of the archive would stop at {reach} and promote without "
                "them") in r.stderr, r.stderr
        assert f"to recover up to {reach} and promote there all the same, add --accept-wal-gap" in r.stderr
        assert "Traceback" not in r.stderr and not target.exists()
    # accepted explicitly: recovery replays up to the gap and promotes there
    doc = json.loads(stack.ok("--json", "restore-db", s["id"], "--database", "appdb", "--target", str(target),
                              "--target-end", "--accept-wal-gap", timeout=120))
    assert (doc["recovery_target"], doc["recovery_target_timeline"], doc["errors"]) == ("end", "current", [])
    chown_postgres(target)
    srv = ArchivingServer(pgdata=target, settings={"archive_mode": "off"})  # a test restore beside the source
    stack.restored.append(srv)
    srv.start(timeout=120)
    srv.wait_promoted()
    assert srv.psql("SELECT string_agg(n::text, ',' ORDER BY n) FROM gapped") == "1"
    srv.stop()
    # a delta to the end is checked the same way, before the directory is touched
    conf = (target / "postgresql.auto.conf").read_bytes()
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(target), "--delta", "--target-end")
    assert r.returncode == 1 and f"WAL segment {lost} of database 'appdb' is not in the archive" in r.stderr, r.stderr
    assert (target / "postgresql.auto.conf").read_bytes() == conf
    # the acceptance goes with --target-end only: a usage error, before anything is asked
    r = stack.cli("restore-db", s["id"], "--database", "appdb", "--target", str(h / "own"), "--accept-wal-gap")
    assert r.returncode == 2 and "--accept-wal-gap only goes with --target-end" in r.stderr, r.stderr
