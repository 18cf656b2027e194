"""Where the archived WAL of a set's own timeline ends, for checking a recovery target before
anything is written: the segment it ends in, the last record archived and the newest transaction
end (commit or abort) recorded, read from the newest archived segments with pg_waldump.

- `archived_end(repo, rec)`: the newest segment of the set's timeline that recovery reaches from
  the set without a gap (its first segment onward, as recovery reads them; `.partial` files are
  never read by recovery and do not count), and the position where that segment ends.
- `read_end(repo, rec)`: that, plus what pg_waldump reads in the newest SCAN_SEGMENTS segments of
  that run: the start of the last complete record and the newest transaction end (its time and
  LSN). Recovery to a time stops only before a commit or abort whose time is later than the
  target, and recovery to an LSN only after a record starting at or past it, so these two bound
  every target recovery can reach.
- `find_waldump(major)`: a pg_waldump of the set's PostgreSQL major version (the WAL format
  differs between versions), from the usual packaged places or PATH; None without one.

What always holds: nothing here guesses. Without a pg_waldump of the set's version, or when
it fails, only the segment bound is known (`WalEnd.last_lsn` and `last_xact` stay None); the
scan reads a bounded number of segments, and `WalEnd.whole` says whether it began at the set's
first segment (then no transaction end after the set went unread). Segments are read from the
archive into a private temporary directory, which is removed afterwards.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cairn import walnames
from cairn.daemon.databases.postgres.recovery import lsn_to_int
from cairn.daemon.databases.postgres.walarchive import fetch_wal, record_namespace
from cairn.store.errors import CairnError

SCAN_SEGMENTS = 4  # the newest segments read with pg_waldump (at most; each is read once, in one run)
WALDUMP_TIMEOUT = 60.0
WALDUMP_PLACES = ("/usr/lib/postgresql/{major}/bin", "/usr/pgsql-{major}/bin", "/usr/local/pgsql/bin")

_RECORD = re.compile(r"^rmgr: (\S+)\s.*?\blsn: ([0-9A-Fa-f]+/[0-9A-Fa-f]+),")
_XACT_END = re.compile(r"\bdesc: (?:COMMIT|ABORT|COMMIT_PREPARED|ABORT_PREPARED) (?:\d+: )?"
                       r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC\b")


@dataclass(frozen=True)
class WalEnd:
    """The end of the archived WAL of a set's timeline (module docstring)."""

    timeline: int
    segment: str  # the newest segment recovery reaches from the set
    end_lsn: int  # where that segment ends: no record at or past it is archived
    last_lsn: int | None = None  # start of the last complete record (None: not read)
    last_xact: tuple[float, int] | None = None  # (time, LSN) of the newest commit or abort read
    whole: bool = False  # the read began at the set's first segment


def archived_end(repo: Any, rec: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """(timeline, first segment number of the set, newest segment number reached from it without a
    gap, segment size) on the set's timeline; None when the set records no WAL range."""
    size = int(rec.get("wal_segment_size") or walnames.DEFAULT_SEGMENT_SIZE)
    wal = rec.get("wal") or {}
    first = walnames.parse_segment(str(wal.get("first") or ""), size)
    last = walnames.parse_segment(str(wal.get("last") or ""), size)
    if first is None or last is None:
        return None
    tli = first[0]
    held = set()
    for name in repo.list_wal(record_namespace(rec)):
        seg = walnames.parse_segment(name, size)
        if seg is not None and seg[0] == tli:
            held.add(seg[1])
    newest = max(first[1], last[1])
    while newest + 1 in held:
        newest += 1
    return tli, first[1], newest, size


def read_end(repo: Any, rec: dict[str, Any]) -> WalEnd | None:
    """The end of the set's timeline in the archive, with what pg_waldump reads there (module
    docstring); None when the set records no WAL range or the archive holds none of it."""
    found = archived_end(repo, rec)
    if found is None:
        return None
    tli, first, newest, size = found
    segment = walnames.segment_name(tli, newest, size)
    if segment not in set(repo.list_wal(record_namespace(rec))):
        return None  # not even the set's own WAL: check_consistency_wal says so
    end = WalEnd(tli, segment, (newest + 1) * size)
    major = int(rec.get("server_version_num") or 0) // 10000
    waldump = find_waldump(major) if major else None
    if waldump is None:
        return end
    start = max(first, newest - SCAN_SEGMENTS + 1)
    names = [walnames.segment_name(tli, n, size) for n in range(start, newest + 1)]
    try:
        last_lsn, last_xact = _scan(waldump, repo, names, record_namespace(rec))
    except (OSError, CairnError, subprocess.SubprocessError):
        return end  # the segment bound still holds
    if last_lsn is None:  # it read no record at all (not this WAL's format?): nothing learnt
        return end
    return WalEnd(tli, segment, end.end_lsn, last_lsn, last_xact, whole=start == first)


def _scan(waldump: str, repo: Any, names: list[str], namespace: str) -> tuple[int | None, tuple[float, int] | None]:
    """(start of the last complete record, (time, LSN) of the newest transaction end) in the
    segments `names` (consecutive, oldest first), read with one run of pg_waldump."""
    with tempfile.TemporaryDirectory(prefix="cairn-walend-") as tmp:
        for name in names:
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(fetch_wal(repo, name, namespace))
        # pg_waldump prints times in the local zone with its abbreviation: UTC makes them exact
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}
        argv = [waldump, "--path", tmp, names[0], names[-1]]
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=env,
                              timeout=WALDUMP_TIMEOUT, check=False)  # exit 1 at the end of the WAL: expected
    last_lsn: int | None = None
    last_xact: tuple[float, int] | None = None
    for line in done.stdout.splitlines():
        m = _RECORD.match(line)
        if m is None:
            continue
        lsn = lsn_to_int(m.group(2))
        last_lsn = lsn if last_lsn is None else max(last_lsn, lsn)
        if m.group(1) == "Transaction":
            t = _XACT_END.search(line)
            if t is not None:
                when = datetime.fromisoformat(t.group(1)).replace(tzinfo=UTC).timestamp()
                if last_xact is None or when > last_xact[0]:
                    last_xact = (when, lsn)
    return last_lsn, last_xact


@functools.lru_cache(maxsize=8)
def find_waldump(major: int) -> str | None:
    """pg_waldump of PostgreSQL `major` (its --version says so), or None."""
    candidates = [os.path.join(p.format(major=major), "pg_waldump") for p in WALDUMP_PLACES]
    on_path = shutil.which("pg_waldump")
    if on_path:
        candidates.append(on_path)
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"\(PostgreSQL\) (\d+)", out)
        if m is not None and int(m.group(1)) == major:
            return path
    return None
