"""WAL name spaces end to end: a real PostgreSQL 15 server archiving through `cairn wal-push %p`
into a real cairnd; the client finds the cluster's name space (its system identifier) in a
segment's page header or in the pg_control of the data directory, and `cairn wal-fetch` reads
a cluster's own entries, falling back to flat entries of older archives, never to a segment
another server wrote."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cairn import walnames
from pgstack import Stack, make_pg_dir

EXIT_USAGE, EXIT_NOT_FOUND = 2, 3


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-walns-")
    st = Stack(root, {})
    try:
        st.start()
        yield st
    finally:
        st.close()


def server_sysid(stack: Stack) -> str:
    return stack.psql("SELECT system_identifier FROM pg_control_system()")


def archived_segment(stack: Stack) -> tuple[str, bytes]:
    """A completed segment of the server, archived, and its bytes (read from pg_wal/)."""
    seg = stack.wait_archived()
    return seg, (Path(stack.pg.pgdata) / "pg_wal" / seg).read_bytes()


def catalog(stack: Stack) -> set[str]:
    return {n for n in os.listdir(os.path.join(stack.repo, "wal")) if not n.startswith(".")}


def with_sysid(data: bytes, sysid: int) -> bytes:
    off = walnames.SYSID_OFFSET
    return data[:off] + sysid.to_bytes(8, "little") + data[off + 8:]


def as_segment(data: bytes, name: str) -> bytes:
    """`data` with its first page header moved to segment `name` (timeline and WAL position), so
    that it passes for that segment (wal-push refuses a header of another segment)."""
    seg_size = int.from_bytes(data[32:36], "little")
    tli, segno = walnames.parse_segment(name, seg_size)
    return data[:4] + tli.to_bytes(4, "little") + (segno * seg_size).to_bytes(8, "little") + data[16:]


def test_header_and_pg_control_give_the_servers_system_identifier(stack: Stack) -> None:
    sysid = int(server_sysid(stack))
    seg, data = archived_segment(stack)
    assert walnames.segment_system_identifier(data) == sysid
    assert walnames.control_system_identifier(str(stack.pg.pgdata)) == sysid
    # a file without a long page header has none: a history file, a short or zeroed file
    assert walnames.segment_system_identifier(b"1\t0/3000000\tno recovery target specified\n") is None
    assert walnames.segment_system_identifier(bytes(len(data))) is None
    assert walnames.segment_system_identifier(data[:39]) is None
    # the server's own archive_command put it in its name space, and status shows it per server
    assert f"{sysid}@{seg}" in catalog(stack)
    (db,) = json.loads(stack.ok("--json", "status"))["archive"]["databases"]
    assert db["system_id"] == str(sysid) and db["namespace_segments"] >= 1
    assert f"system {sysid}: " in stack.ok("status")


def test_the_same_segment_name_from_two_clusters_is_stored_twice(stack: Stack, tmp_path: Path) -> None:
    sysid = int(server_sysid(stack))
    seg, data = archived_segment(stack)
    other = sysid ^ 0x5A5A
    wal = tmp_path / "other" / "pg_wal"
    wal.mkdir(parents=True)
    (wal / seg).write_bytes(with_sysid(data, other))
    out = stack.ok("wal-push", str(wal / seg))  # no option: the header names the cluster
    assert f"archived {seg} (system {other})" in out
    assert {f"{sysid}@{seg}", f"{other}@{seg}"} <= catalog(stack)
    for ident, want in ((sysid, data), (other, with_sysid(data, other))):
        dest = tmp_path / f"fetched-{ident}"
        stack.ok("wal-fetch", "--prefetch", "0", "--system-id", str(ident), seg, str(dest))
        assert dest.read_bytes() == want
    # a --system-id that contradicts the header is refused, nothing stored
    before = catalog(stack)
    r = stack.cli("wal-push", "--system-id", str(other + 1), str(wal / seg))
    assert r.returncode == EXIT_USAGE and "was written by the server with system identifier" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and catalog(stack) == before


def test_history_files_take_the_name_space_from_pg_control(stack: Stack, tmp_path: Path) -> None:
    sysid = server_sysid(stack)
    data_dir = tmp_path / "data"
    (data_dir / "global").mkdir(parents=True)
    (data_dir / "pg_wal").mkdir()
    shutil.copy(Path(stack.pg.pgdata) / "global" / "pg_control", data_dir / "global" / "pg_control")
    history = data_dir / "pg_wal" / "00000007.history"
    history.write_bytes(b"6\t0/9000000\tno recovery target specified\n")
    stack.ok("wal-push", str(history))
    assert f"{sysid}@00000007.history" in catalog(stack)
    # restore_command runs in a restored data directory: its pg_control names the name space
    stack.ok("wal-fetch", "00000007.history", str(data_dir / "pg_wal" / "RECOVERYHISTORY"))
    assert (data_dir / "pg_wal" / "RECOVERYHISTORY").read_bytes() == history.read_bytes()
    # another cluster does not see it
    r = stack.cli("wal-fetch", "--system-id", "12345", "00000007.history", str(tmp_path / "h"))
    assert r.returncode == EXIT_NOT_FOUND


def test_flat_entries_of_an_older_archive_still_fetch(stack: Stack, tmp_path: Path) -> None:
    sysid = int(server_sysid(stack))
    seg, data = archived_segment(stack)
    # no header, no pg_control, no --system-id: the file goes to the flat name space
    plain = tmp_path / "plain" / "pg_wal"
    plain.mkdir(parents=True)
    (plain / "00000009.history").write_bytes(b"8\t0/A000000\tbefore name spaces\n")
    stack.ok("wal-push", str(plain / "00000009.history"))
    name = "0000000900000000000000AA"
    (plain / name).write_bytes(b"not a segment of anyone" * 10)
    stack.ok("wal-push", str(plain / name))
    assert {"00000009.history", name} <= catalog(stack)
    for wanted in ("00000009.history", name):
        dest = tmp_path / f"f-{wanted}"
        stack.ok("wal-fetch", "--prefetch", "0", "--system-id", str(sysid), wanted, str(dest))
        assert dest.read_bytes() == (plain / wanted).read_bytes()
    # a flat segment written by another server is not handed to this one
    foreign = "0000000900000000000000AB"
    (plain / foreign).write_bytes(as_segment(with_sysid(data, sysid ^ 0x77), foreign))
    stack.ok("wal-push", "--system-id", str(sysid ^ 0x77), str(plain / foreign))
    os.rename(os.path.join(stack.repo, "wal", f"{sysid ^ 0x77}@{foreign}"), os.path.join(stack.repo, "wal", foreign))
    r = stack.cli("wal-fetch", "--prefetch", "0", "--system-id", str(sysid), foreign, str(tmp_path / "x"))
    assert r.returncode == EXIT_NOT_FOUND, r.stderr
    assert not (tmp_path / "x").exists()
