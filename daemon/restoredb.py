"""restore-db: the record stream of a set's database, prepared for recovery from the WAL archive.

`restore_db_records(repo, s, database, ...)` checks the request against the set (the set holds
that database; the target time or LSN parses and is not before the set's consistent point),
then returns the set's copy of the data directory (attachment 'db:<name>') passed through
`pgrecovery.recovery_stream`: backup_label and tablespace_map byte-exact from the set,
recovery.signal, and recovery settings with `restore_command` = `cairn wal-fetch %f %p`
(naming the daemon's socket explicitly, since the server's OS user has its own default) and
the target — the set's own consistent point ('immediate') unless a time or an LSN is given —
then promotion. Tablespaces follow under `cairn_tablespaces/<oid>/` of the target, and the
tablespace map points there (the client sends its absolute target directory for that).

The WAL the set needs to reach its consistent point — its start segment through the segment of
its restore point, and the history file of its timeline — is placed in pg_wal/ as part of the
stream, together with WAL_MARKER listing those names. PostgreSQL asks restore_command for every
file before it looks in pg_wal/; `cairn wal-fetch` answers at once for a name the marker lists
and pg_wal/ holds (exit 3: recovery then reads pg_wal/'s copy, identical to the archived one), so
recovery to the set's own point needs no round trip to the daemon. Later WAL (a time or LSN
beyond the set) still comes from the archive.

What always holds: every check runs before the first record is produced; errors are
NotFoundError (no such database in the set) or InvalidArgumentError (bad time or LSN).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from cairn import walnames
from cairn.daemon.databases.engine import PhysicalRecord, TablespaceRecord, records_of
from cairn.daemon.pgrecovery import lsn_to_int, recovery_stream
from cairn.daemon.walarchive import database_records
from cairn.fsio.records import Data, EntryMeta, Record
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.model import BackupSet
from cairn.store.repository import Repository

TABLESPACE_DIR = "cairn_tablespaces"
WAL_MARKER = walnames.WAL_MARKER  # in pg_wal/: the WAL files restore-db placed there, one a line


def cairn_executable() -> str:
    """The `cairn` client next to this interpreter, else the one on PATH, else plain 'cairn'."""
    sibling = os.path.join(os.path.dirname(sys.executable), "cairn")
    if os.access(sibling, os.X_OK):
        return sibling
    return shutil.which("cairn") or "cairn"


def restore_command(socket_path: str, executable: str | None = None) -> str:
    """restore_command for recovery: `cairn --socket S wal-fetch %f %p`.

    The socket is always named: PostgreSQL runs the command as its own OS user, whose default
    socket (under its home or XDG_RUNTIME_DIR) is not the daemon's.
    """
    exe = executable or cairn_executable()
    return f"{shlex.quote(exe)} --socket {shlex.quote(socket_path)} wal-fetch %f %p"


def database_of(s: BackupSet, database: str) -> dict[str, Any]:
    """The set's extra['database'] record for `database`; NotFoundError if it holds none."""
    if not database:
        raise InvalidArgumentError("no database given: name one with --database")
    recs = database_records(s.extra)  # several databases per source: extra['databases']
    rec = next((r for r in recs if r.get("name") == database), None)
    if rec is None and any(d.name == database for d in records_of(s)):
        raise InvalidArgumentError(f"database '{database}' of set '{s.id[:8]}' is a dump: restore it into a "
                                   "database with --target-dsn DSN")
    if rec is None:
        names = ", ".join(f"'{r['name']}'" for r in recs if r.get("name"))
        held = f" (it holds database {names})" if names else ""
        raise NotFoundError(f"set '{s.id[:8]}' holds no database '{database}'{held}")
    if rec.get("attachment") not in s.attachments:
        raise NotFoundError(f"set '{s.id[:8]}' holds no data directory of database '{database}'")
    return rec


def parse_target_time(text: str) -> datetime:
    """A target time like '2025-03-01 12:00:00+01' (ISO 8601; without a zone: the server's)."""
    t = text.strip()
    try:
        return datetime.fromisoformat(t.replace(" ", "T", 1) if "T" not in t else t)
    except ValueError:
        raise InvalidArgumentError(
            f"invalid target time '{text}': expected a time like '2025-03-01 12:00:00+01:00'") from None


def check_target(rec: dict[str, Any], target_time: str, target_lsn: str) -> None:
    """Refuse a malformed target, or one before the set's consistent point (never reachable)."""
    if target_time and target_lsn:
        raise InvalidArgumentError("give at most one of --target-time and --target-lsn")
    if target_lsn:
        if lsn_to_int(target_lsn) < lsn_to_int(rec["stop_lsn"]):
            raise InvalidArgumentError(
                f"target LSN {target_lsn} is before the set's consistent point {rec['stop_lsn']}: "
                "choose a set taken before the target")
    if target_time:
        when = parse_target_time(target_time)
        stopped = rec.get("stopped")
        if when.tzinfo is not None and isinstance(stopped, int | float) and when.timestamp() < stopped:
            raise InvalidArgumentError(
                f"target time '{target_time}' is before the set's consistent point "
                f"({datetime.fromtimestamp(stopped).astimezone().isoformat(sep=' ', timespec='seconds')}): "
                "choose a set taken before the target")


def restore_db_records(repo: Repository, s: BackupSet, database: str, target_time: str, target_lsn: str,
                       socket_path: str, target_path: str = "", command: str = "") -> Iterator[Record]:
    """The checked, recovery-ready record stream of `database` in set `s` (module docstring).

    `command` replaces the default restore_command (a client the database's OS user can run)."""
    if command and ("%p" not in command or "\n" in command):
        raise InvalidArgumentError(f"invalid restore_command '{command}': it must name the target file "
                                   "with %p (and the WAL file with %f), on one line")
    rec = database_of(s, database)
    check_target(rec, target_time, target_lsn)
    typed = PhysicalRecord.from_dict(rec)
    spaces = list(typed.tablespaces)
    remap: dict[int, str] = {}
    if spaces:
        if not target_path or not os.path.isabs(target_path):
            raise InvalidArgumentError(
                f"set '{s.id[:8]}' has tablespaces: the client must send its absolute target directory")
        remap = {t.oid: os.path.join(target_path, TABLESPACE_DIR, str(t.oid)) for t in spaces}
    main = recovery_stream(repo.restore_stream(s, attachment=typed.attachment), typed.labelfile, typed.spcmapfile,
                           command or restore_command(socket_path), target_time or None, target_lsn or None,
                           tablespace_remap=remap)
    return _chain(main, repo, s, spaces, consistency_wal(repo, rec))


def consistency_wal(repo: Repository, rec: dict[str, Any]) -> list[str]:
    """The archived WAL files recovery reads to reach the set's consistent point, oldest first.

    The history file of the set's timeline (none for timeline 1), then the segments from the
    set's first WAL file through the one holding its restore point (else its last WAL file),
    up to the first the archive lacks: recovery asks the archive for that one as usual.
    """
    wal = rec.get("wal") or {}
    size = int(rec.get("wal_segment_size") or walnames.DEFAULT_SEGMENT_SIZE)
    first = walnames.parse_segment(wal.get("first") or "", size)
    last = walnames.parse_segment(wal.get("last") or "", size)
    if first is None or last is None:
        return []
    tli, end = first[0], last[1]
    point = (rec.get("restore_point") or {}).get("lsn") or ""
    if point:
        end = max(end, lsn_to_int(point) // size)
    held = set(repo.list_wal())
    history = walnames.history_name(tli)
    names = [history] if tli > 1 and history in held else []
    for segno in range(first[1], end + 1):
        name = walnames.segment_name(tli, segno, size)
        if name not in held:
            break
        names.append(name)
    return names


def _chain(main: Iterator[Record], repo: Repository, s: BackupSet, spaces: list[TablespaceRecord],
           wal: list[str]) -> Iterator[Record]:
    owner = (0, 0)
    for r in main:
        if isinstance(r, EntryMeta) and r.path == b"PG_VERSION":
            owner = (r.uid, r.gid)
        yield r
    yield from _placed_wal(repo, wal, owner)
    if not spaces:
        return
    top = TABLESPACE_DIR.encode()
    yield EntryMeta(path=top, kind="dir", mode=0o700, uid=owner[0], gid=owner[1])
    for t in spaces:
        prefix = top + b"/" + str(t.oid).encode()
        yield EntryMeta(path=prefix, kind="dir", mode=0o700, uid=owner[0], gid=owner[1])
        for r in repo.restore_stream(s, attachment=t.attachment):
            if isinstance(r, EntryMeta):
                link = prefix + b"/" + r.link_to if r.link_to else b""
                r = EntryMeta(path=prefix + b"/" + r.path, kind=r.kind, mode=r.mode, uid=r.uid, gid=r.gid,
                              mtime_ns=r.mtime_ns, size=r.size, xattrs=r.xattrs, target=r.target,
                              link_to=link, rdev=r.rdev, sparse=r.sparse)
            yield r


def _placed_wal(repo: Repository, names: list[str], owner: tuple[int, int]) -> Iterator[Record]:
    """pg_wal/<name> for each of `names` from the archive, then WAL_MARKER listing them."""
    if not names:
        return
    for name in names:
        data = repo.get_wal(name)
        yield EntryMeta(path=b"pg_wal/" + name.encode(), kind="file", mode=0o600, uid=owner[0], gid=owner[1],
                        mtime_ns=time.time_ns(), size=len(data))
        yield Data(data)
    listing = "".join(f"{n}\n" for n in names).encode()
    yield EntryMeta(path=b"pg_wal/" + WAL_MARKER.encode(), kind="file", mode=0o600, uid=owner[0], gid=owner[1],
                    mtime_ns=time.time_ns(), size=len(listing))
    yield Data(listing)
