"""Database restores over a WAL archive that lost segments, end to end: two PostgreSQL 15 clusters
archiving through `cairn wal-push` into a real cairnd, an application source holding files and
both databases, and segments removed from the repository's WAL catalog as a damaged repository
loses them.

- `cairn restore SET --target DIR --databases` checks every database of the set (the WAL its
  consistent point needs, its place) before it writes anything: a segment the second database
  needs is missing, or its place is on a read-only file system, so it exits 1 naming that
  database, and neither the files nor the first database are written.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import mount_tmpfs
from pgstack import Stack, make_pg_dir


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
