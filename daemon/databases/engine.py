"""The boundary between the window/capture code and the databases it captures.

A `DatabaseEngine` captures one configured `[[database]]` into a set's write session. The
capture code (daemon/windows/capture.py) drives every engine through the same steps:

- `prepare()` — before the window opens (nothing frozen yet): connect, check rights and tools,
  run a command database's `check`, read facts. A database that cannot be captured fails the
  set here, before any freeze; `cancel()` may be called meanwhile (the set was cancelled).
- `start(label)` — begin the capture. An engine whose `starts_early` is true (the physical
  PostgreSQL engine: pg_backup_start's checkpoint needs no quiet application) is started
  before the freeze in cold mode; every other start runs inside the window.
- `capture(sess, check)` — store what the database holds into the session as attachments
  (`check()` raises once the window's deadline passed or the set was cancelled).
- `stop(timeout)` — end the capture (pg_backup_stop and a restore point; nothing for dumps).
- `describe()` — the typed, frozen record of what the set holds for this database.
- `server_dirs()` — after `prepare()`: the directories the database server itself writes
  while it runs (a data directory and its tablespaces; none for a dump). A cold window does
  not count writes there as the application's: WAL replay repairs them.
- `cancel()` — from another thread: stop whatever runs now (the window's deadline and a
  cancelled set — the daemon stopping — use it: a dump tool is killed, a statement cancelled).
- `close()` — release connections and processes; always called.

Records (`PhysicalRecord`, `DumpRecord`) are serialised with `to_dict()` into the set: under
`extra['databases']` (in capture order, as sets always had) and into the metadata of the
database's main attachment (`attachments[name]['database']`). `records_of(s)` reads them
back as typed records — the one place that knows the stored shape; older sets (one
`extra['database']`, no kind) read as physical records.

What always holds: `from_dict(r.to_dict()) == r` for every record; a record's `kind` says which
engine restores it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cairn.errors import CorruptionError
from cairn.store.model import BackupSet
from cairn.store.snapshots.session import BackupSession

KIND_POSTGRES = "postgres"
KIND_PG_DUMP = "pg_dump"
KIND_COMMAND = "command"
DUMP_KINDS = (KIND_PG_DUMP, KIND_COMMAND)


def attachment_name(database: str) -> str:
    """The set attachment holding a database's data directory or dump."""
    return f"db:{database}"


def tablespace_attachment(database: str, oid: int) -> str:
    """The set attachment holding one tablespace directory of a database."""
    return f"db:{database}:tblspc:{oid}"


@dataclass(frozen=True)
class TablespaceRecord:
    """One tablespace of a physical capture and the attachment holding it."""

    oid: int
    name: str
    location: str
    attachment: str


@dataclass(frozen=True)
class PhysicalRecord:
    """What a base backup of a PostgreSQL cluster recorded (kind 'postgres')."""

    name: str
    attachment: str
    start_lsn: str
    stop_lsn: str
    timeline: int
    system_identifier: str
    server_version: str
    server_version_num: int
    wal_segment_size: int
    labelfile: bytes
    spcmapfile: bytes
    restore_point_name: str
    restore_point_lsn: str
    wal_first: str
    wal_last: str
    started: float
    stopped: float
    tablespaces: tuple[TablespaceRecord, ...] = ()
    kind: str = KIND_POSTGRES

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "attachment": self.attachment,
            "start_lsn": self.start_lsn,
            "stop_lsn": self.stop_lsn,
            "timeline": self.timeline,
            "system_identifier": self.system_identifier,
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "wal_segment_size": self.wal_segment_size,
            "labelfile": base64.b64encode(self.labelfile).decode("ascii"),
            "spcmapfile": base64.b64encode(self.spcmapfile).decode("ascii"),
            "restore_point": {"name": self.restore_point_name, "lsn": self.restore_point_lsn},
            "wal": {"first": self.wal_first, "last": self.wal_last},
            "started": self.started,
            "stopped": self.stopped,
            "tablespaces": [{"oid": t.oid, "name": t.name, "location": t.location, "attachment": t.attachment}
                            for t in self.tablespaces],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhysicalRecord:
        point = d.get("restore_point") or {}
        wal = d.get("wal") or {}
        return cls(
            name=str(d["name"]), attachment=str(d.get("attachment") or attachment_name(str(d["name"]))),
            start_lsn=str(d.get("start_lsn") or ""), stop_lsn=str(d.get("stop_lsn") or ""),
            timeline=int(d.get("timeline") or 1), system_identifier=str(d.get("system_identifier") or ""),
            server_version=str(d.get("server_version") or ""),
            server_version_num=int(d.get("server_version_num") or 0),
            wal_segment_size=int(d.get("wal_segment_size") or 16 * 1024 * 1024),
            labelfile=base64.b64decode(d.get("labelfile") or ""),
            spcmapfile=base64.b64decode(d.get("spcmapfile") or ""),
            restore_point_name=str(point.get("name") or ""), restore_point_lsn=str(point.get("lsn") or ""),
            wal_first=str(wal.get("first") or ""), wal_last=str(wal.get("last") or ""),
            started=float(d.get("started") or 0.0), stopped=float(d.get("stopped") or 0.0),
            tablespaces=tuple(TablespaceRecord(int(t["oid"]), str(t.get("name") or ""), str(t.get("location") or ""),
                                               str(t.get("attachment") or tablespace_attachment(str(d["name"]),
                                                                                                int(t["oid"]))))
                              for t in d.get("tablespaces") or ()),
        )


@dataclass(frozen=True)
class DumpRecord:
    """What a dump engine recorded (kind 'pg_dump' or 'command').

    `layout` is 'stream' (the attachment holds one file, `stream_file`, the tool's stdout) or
    'directory' (the attachment is the directory the tool wrote). `bytes` is the dump's size.
    """

    name: str
    kind: str
    attachment: str
    layout: str
    tool: str
    started: float
    stopped: float
    bytes: int
    stream_file: str = ""
    server_version: str = ""
    jobs: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "attachment": self.attachment, "layout": self.layout,
            "tool": self.tool, "started": self.started, "stopped": self.stopped, "bytes": self.bytes,
            "stream_file": self.stream_file, "server_version": self.server_version, "jobs": self.jobs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DumpRecord:
        return cls(
            name=str(d["name"]), kind=str(d["kind"]), attachment=str(d["attachment"]), layout=str(d["layout"]),
            tool=str(d.get("tool") or ""), started=float(d.get("started") or 0.0),
            stopped=float(d.get("stopped") or 0.0), bytes=int(d.get("bytes") or 0),
            stream_file=str(d.get("stream_file") or ""), server_version=str(d.get("server_version") or ""),
            jobs=int(d.get("jobs") or 1),
        )


DatabaseRecord = PhysicalRecord | DumpRecord


def record_from_dict(d: dict[str, Any]) -> DatabaseRecord:
    """The typed record of one stored database record (no kind: a physical record of an older set)."""
    try:
        kind = d.get("kind") or KIND_POSTGRES
        if kind == KIND_POSTGRES:
            return PhysicalRecord.from_dict(d)
        if kind in DUMP_KINDS:
            return DumpRecord.from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptionError(f"unable to read the record of database '{d.get('name', '?')}': {exc}") from None
    raise CorruptionError(f"unable to read the record of database '{d.get('name', '?')}': unknown kind '{kind}'")


def record_dicts(extra: Any) -> list[dict[str, Any]]:
    """The stored database records of a set's extra, in capture order (older sets: one record)."""
    if not isinstance(extra, dict):
        return []
    many = extra.get("databases")
    if isinstance(many, list):
        return [r for r in many if isinstance(r, dict)]
    one = extra.get("database")
    return [one] if isinstance(one, dict) else []


def records_of(s: BackupSet) -> list[DatabaseRecord]:
    """Every database a set holds, as typed records, in capture order."""
    return [record_from_dict(d) for d in record_dicts(s.extra) if d.get("name")]


def physical_records(s: BackupSet) -> list[PhysicalRecord]:
    """The physical (base backup + WAL) records of a set: the ones that need archived WAL."""
    return [r for r in records_of(s) if isinstance(r, PhysicalRecord)]


class DatabaseEngine(Protocol):
    """One configured database while a set captures it (see the module docstring)."""

    name: str
    kind: str
    starts_early: bool

    def prepare(self) -> None: ...

    def start(self, label: str) -> None: ...

    def capture(self, sess: BackupSession, check: Callable[[], None]) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def describe(self) -> DatabaseRecord: ...

    def server_dirs(self) -> tuple[str, ...]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...
