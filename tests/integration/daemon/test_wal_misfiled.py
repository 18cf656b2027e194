"""A WAL catalog entry holding another segment than its name is refused, found and removed.

In a repository whose catalog entries are not bound to their names (plaintext, format 1), two
entries whose names were swapped read back cleanly: recovery was handed the wrong segment and
took its page address for the end of WAL. A segment's long page header says which segment it
is; the real daemon refuses such an entry at `wal-fetch` (before writing a byte, with the
exit status that stops recovery rather than end it there), `verify
--read-data` names it, `repair wal` removes it, and `wal-push` refuses a file whose header is
another segment's.
"""

from __future__ import annotations

import glob
import os

from cairn.walnames import segment_header_mismatch

SEG_SIZE = 1 << 20
SYSID = 7301234567890123456


def _segment(name: str, tli: int | None = None, payload: bytes | None = None) -> bytes:
    """A whole segment: the long page header of segment `name` (its timeline unless `tli`),
    then `payload` or random bytes up to the segment size."""
    name_tli, hi, lo = int(name[:8], 16), int(name[8:16], 16), int(name[16:24], 16)
    pageaddr = (hi * (0x100000000 // SEG_SIZE) + lo) * SEG_SIZE
    header = ((0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little")
              + (tli if tli is not None else name_tli).to_bytes(4, "little") + pageaddr.to_bytes(8, "little")
              + bytes(8) + SYSID.to_bytes(8, "little") + SEG_SIZE.to_bytes(4, "little")
              + (8192).to_bytes(4, "little"))
    body = payload if payload is not None else os.urandom(SEG_SIZE - len(header))
    return header + body[:SEG_SIZE - len(header)]


def test_the_header_rule():
    seg = "000000020000000000000005"
    assert segment_header_mismatch(seg, _segment(seg)) is None
    # the first segment of timeline 2 starts with timeline 1's pages (copied up to the switch)
    assert segment_header_mismatch(seg, _segment(seg, tli=1)) is None
    assert segment_header_mismatch(seg + ".partial", _segment(seg)) is None
    other = segment_header_mismatch(seg, _segment("000000020000000000000006"))
    assert other is not None and "000000020000000000000006" in other
    assert segment_header_mismatch(seg, _segment(seg, tli=3)) is not None  # a later timeline's page
    assert segment_header_mismatch(seg, _segment(seg, tli=0)) is None  # no timeline: nothing to judge
    assert segment_header_mismatch("00000002.history", _segment(seg)) is None
    assert segment_header_mismatch(seg, os.urandom(SEG_SIZE)) is None  # no header: not judged


def test_swapped_catalog_entries_are_refused_found_and_removed(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    repo = tmp_path / "repo"
    daemon = start_daemon("--repo", str(repo), "--source", str(src))
    a, b = "000000010000000000000003", "000000010000000000000004"
    for name in (a, b):
        path = tmp_path / name
        path.write_bytes(_segment(name))
        assert daemon.ok("wal-push", str(path)).startswith(f"archived {name}")
    fetched = tmp_path / "fetched"
    daemon.ok("wal-fetch", "--system-id", str(SYSID), a, str(fetched))
    assert fetched.read_bytes() == (tmp_path / a).read_bytes()

    (entry_a,) = glob.glob(str(repo / "**" / f"*{a}"), recursive=True)
    (entry_b,) = glob.glob(str(repo / "**" / f"*{b}"), recursive=True)
    data_a, data_b = open(entry_a, "rb").read(), open(entry_b, "rb").read()
    for path, data in ((entry_a, data_b), (entry_b, data_a)):
        os.chmod(path, 0o600)
        with open(path, "wb") as f:
            f.write(data)

    dest = tmp_path / "wrong"
    r = daemon.cli("wal-fetch", "--system-id", str(SYSID), a, str(dest))
    assert r.returncode == 255, r.stderr  # above 125: recovery stops rather than promote at it
    assert f"its first page belongs to segment {b}" in r.stderr and r.stderr.startswith("cairn: error:"), r.stderr
    assert not dest.exists() or dest.stat().st_size == 0

    r = daemon.cli("verify", "--read-data")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"its first page belongs to segment {b}" in r.stdout + r.stderr
    assert f"its first page belongs to segment {a}" in r.stdout + r.stderr

    r = daemon.cli("repair", "wal")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in (a, b):
        assert not glob.glob(str(repo / "**" / f"*{name}"), recursive=True)
    assert daemon.cli("wal-fetch", "--system-id", str(SYSID), a, str(tmp_path / "gone")).returncode == 3


def test_a_push_of_another_segments_content_is_refused(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    daemon = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    path = tmp_path / "000000010000000000000005"
    path.write_bytes(_segment("000000010000000000000006"))
    r = daemon.cli("wal-push", str(path))
    assert r.returncode != 0
    assert "is not archived: its first page belongs to segment 000000010000000000000006" in r.stderr, r.stderr
    assert daemon.cli("wal-fetch", "--system-id", str(SYSID), path.name, str(tmp_path / "none")).returncode == 3
