"""`cairn copy` end to end: a real cairnd (plaintext repository, a real PostgreSQL 15 archiving
into it) copies a set with a database into a second, encrypted repository through the real
client; a second cairnd on that copy alone restores the database with restore-db and the
server starts with the rows of the set. Reruns copy nothing; a wrong key, an unknown set and an
unreachable destination are one-line errors."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgstack import Stack, app_stack

EXIT_FAILURE, EXIT_NOT_FOUND = 1, 3


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with app_stack("cairn-copy-", {"notes.txt": "kept in both places\n", "blob.bin": os.urandom(3 << 20)}) as st:
        yield st


def key_file(path: Path) -> str:
    path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    return str(path)


def one_line_error(r: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("hint:") and "hint" not in x[:8]]
    assert re.search(pattern, r.stderr), r.stderr
    assert len(lines) == 1, r.stderr


def test_copy_restores_the_database_from_the_copy_alone(stack: Stack) -> None:
    stack.psql("CREATE TABLE kept (id int PRIMARY KEY, note text)")
    stack.psql("INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 2000) g")
    s = stack.backup("app")
    stack.wait_archived()
    stack.psql("INSERT INTO kept VALUES (5000, 'after the set')")
    dest = str(stack.root / "offsite")
    kf = key_file(stack.root / "offsite.key")

    out = json.loads(stack.ok("--json", "copy", "--to", dest, "--to-key-file", kf, timeout=300))
    assert [c["set"] for c in out["copied"]] == [s["id"]] and out["warnings"] == []
    assert out["wal_copied"] >= 1
    copy_id = out["copied"][0]["copy"]
    again = stack.ok("copy", "--to", dest, "--to-key-file", kf, "--source", "app")
    assert "copied 0 sets (1 already there), 0 WAL files" in again
    with open(os.path.join(dest, "config", "config")) as f:
        assert json.load(f)["version"] == 2

    one_line_error(stack.cli("copy", "--to", dest, "--to-key-file", key_file(stack.root / "wrong.key")),
                   EXIT_FAILURE, r"unable to open destination repository .*wrong passphrase or key file")
    one_line_error(stack.cli("copy", "--to", dest, "--to-key-file", kf, "abcdef0123"), EXIT_NOT_FOUND,
                   r"unknown set 'abcdef0123'")
    (stack.root / "plainfile").write_text("x")
    one_line_error(stack.cli("copy", "--to", str(stack.root / "plainfile" / "sub"), "--to-key-file", kf),
                   EXIT_FAILURE, r"unable to reach destination repository")

    # Only the copy from now on: the server stops archiving, the first daemon goes away, a
    # second daemon opens the copy with its key file, and restore-db recovers from its WAL.
    stack.pg.stop()
    stack.kill_daemon()
    stack.repo = dest
    stack.write_config()
    text = Path(stack.config).read_text().replace("[daemon]", f"key_file = {json.dumps(kf)}\n\n[daemon]", 1)
    Path(stack.config).write_text(text)
    stack.start_daemon()
    (listed,) = json.loads(stack.ok("--json", "sets", "--source", "app"))
    assert listed["id"] == copy_id
    restored_files = stack.restore_files(copy_id, "files-from-copy")
    assert (restored_files / "notes.txt").read_text() == "kept in both places\n"
    assert (restored_files / "blob.bin").read_bytes() == (stack.root / "files" / "blob.bin").read_bytes()
    srv = stack.restore_db(copy_id)
    assert srv.psql("SELECT count(*) FROM kept") == "2000"
    assert srv.psql("SELECT count(*) FROM kept WHERE id = 5000") == "0"
