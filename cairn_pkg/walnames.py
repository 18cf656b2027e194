"""PostgreSQL WAL file names and their rules: the one module that knows them.

Names the archiver hands over (`archive_command`'s %f): segments ('000000010000000A000000FF':
timeline, then the segment number split in two 8-digit halves), '<timeline>.history',
'<segment>.partial' and '<segment>.<offset>.backup'. Also the names restore-db and
`cairn wal-fetch` share: WAL_MARKER (the list of WAL files restore-db placed in pg_wal/), OWN_POINT
(beside it: recovery stops at the set's consistent point) and
NO_HISTORY (timeline 1 has no history file; recovery asks for it anyway).

The repository is engine-neutral: the daemon gives it PostgreSQL's archive rules, built on
`is_wal_file_name` and the segment numbers here (daemon/databases/archive.py). Whose WAL a file
is (the repository's WAL name space: the cluster's system identifier) is read here too: from a
segment's long page header (`segment_system_identifier`) or from pg_control
(`control_system_identifier`). Standard library only, so
the daemon and the client share it.

    parse_segment('000000010000000000000003') == (1, 3)
    segment_name(1, 3) == '000000010000000000000003'
"""

from __future__ import annotations

import os
import re

from cairn.errors import InvalidArgumentError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
FILE_NAME_RE = re.compile(r"^[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?$|^[0-9A-F]{8}\.history$")
WAL_MARKER = "cairn-restore-db.wal"  # in pg_wal/: the WAL files restore-db placed there, one a line
OWN_POINT = "cairn-restore-db.own-point"  # beside WAL_MARKER: recovery stops at the set's consistent point
NO_HISTORY = "00000001.history"      # the first timeline has no history file


def is_wal_file_name(name: str) -> bool:
    """True for names the archiver hands over: segments, .history, .backup and .partial files."""
    return bool(FILE_NAME_RE.match(name))


def check_wal_file_name(name: str) -> str:
    """`name` if it is a WAL file name, else InvalidArgumentError."""
    if not is_wal_file_name(name):
        raise InvalidArgumentError(f"'{name}' is not a WAL file name")
    return name


def per_xlogid(segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Segments per 4 GiB 'xlogid' (the upper half of a segment name's number)."""
    return 0x100000000 // segment_size


def parse_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int] | None:
    """(timeline, absolute segment number) of a WAL segment name, None for other names."""
    m = SEGMENT_RE.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16) * per_xlogid(segment_size) + int(m.group(3), 16)


def segment_order(name: str) -> int | None:
    """The place in WAL order of a segment, or of the .partial or .backup file of one: the two
    halves of its number as one integer, the same order whatever the segment size (timelines
    apart). None for history files and other names."""
    if not is_wal_file_name(name) or HISTORY_RE.match(name):
        return None
    return int(name[8:16], 16) << 32 | int(name[16:24], 16)


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The name of segment `segno` on `timeline`."""
    per = per_xlogid(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segment_of_lsn(timeline: int, lsn_pos: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The name of the segment holding the 64-bit WAL position `lsn_pos` (as pg_walfile_name)."""
    return segment_name(timeline, lsn_pos // segment_size, segment_size)


def history_name(timeline: int) -> str:
    """The history file of `timeline`."""
    return f"{timeline:08X}.history"


# ---- whose WAL: the system identifier ---------------------------------------------------------
# Every segment's first page starts with XLogLongPageHeaderData: the short header (xlp_magic u16,
# xlp_info u16, xlp_tli u32, xlp_pageaddr u64, xlp_rem_len u32, padded to 24 bytes), then
# xlp_sysid u64 at byte 24, xlp_seg_size u32 at 32 and xlp_xlog_blcksz u32 at 36. pg_control
# (global/pg_control) starts with the system identifier (u64). Both are in the server's byte
# order: little-endian on every platform Cairn runs on.
XLP_LONG_HEADER = 0x0002
SYSID_OFFSET = 24
LONG_HEADER_SIZE = 40
PG_CONTROL = ("global", "pg_control")


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def segment_system_identifier(data: bytes) -> int | None:
    """The system identifier in a WAL segment's long page header; None when `data` does not
    start with one (a history or backup file, a short or foreign file)."""
    if len(data) < LONG_HEADER_SIZE:
        return None
    info = int.from_bytes(data[2:4], "little")
    sysid = int.from_bytes(data[SYSID_OFFSET:SYSID_OFFSET + 8], "little")
    seg_size = int.from_bytes(data[32:36], "little")
    blcksz = int.from_bytes(data[36:40], "little")
    if not info & XLP_LONG_HEADER or not sysid or not _power_of_two(seg_size) or not _power_of_two(blcksz) \
            or not 1024 <= blcksz <= seg_size:
        return None
    return sysid


def segment_header_mismatch(name: str, data: bytes) -> str | None:
    """Why the content `data` is not WAL segment `name` (or that segment's .partial file), read
    from its long page header: the page's address must be the start of that segment, and its
    timeline that of the name or an older one (the first segment of a new timeline begins with
    the old timeline's pages). None when it is, and when nothing can be judged: `name` is no
    segment, or `data` has no long header with a timeline (history and backup files, foreign
    content). A catalog entry filed under another segment's name would otherwise be handed to
    recovery, which takes the wrong page address for the end of WAL and stops there."""
    base = name[:-len(".partial")] if name.endswith(".partial") else name
    parsed = SEGMENT_RE.match(base)
    if parsed is None or segment_system_identifier(data) is None:
        return None
    tli = int.from_bytes(data[4:8], "little")
    pageaddr = int.from_bytes(data[8:16], "little")
    seg_size = int.from_bytes(data[32:36], "little")
    if not tli:
        return None
    want_tli, segno = parse_segment(base, seg_size) or (0, 0)
    if pageaddr == segno * seg_size and tli <= want_tli:
        return None
    held = segment_name(tli, pageaddr // seg_size, seg_size)
    return (f"its first page belongs to segment {held} (WAL position {pageaddr >> 32:X}/{pageaddr & 0xFFFFFFFF:X} "
            f"on timeline {tli}), not to {base}")


def control_system_identifier(data_dir: str) -> int | None:
    """The system identifier in `data_dir`/global/pg_control; None when it cannot be read."""
    try:
        with open(os.path.join(data_dir, *PG_CONTROL), "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    value = int.from_bytes(head, "little") if len(head) == 8 else 0
    return value or None


def data_dir_of(path: str) -> str:
    """The data directory a WAL path handed to archive_command/restore_command (%p) lies under:
    the parent of its pg_wal/ directory, else the current directory (both commands run in the
    data directory)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.basename(parent) == "pg_wal":
        return os.path.dirname(parent)
    return os.getcwd()


def namespace_of(system_identifier: int | str | None) -> str:
    """The repository WAL name space of a cluster: its system identifier in decimal ("" unknown)."""
    text = str(system_identifier or "").strip()
    if text and not text.isdigit():
        raise InvalidArgumentError(f"invalid system identifier '{text}': expected a decimal number")
    return str(int(text)) if text and int(text) else ""
