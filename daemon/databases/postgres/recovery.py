"""Recovery preparation for restore-db, and PostgreSQL LSN / WAL-name / label helpers.

Turning a restored copy of a data directory into one PostgreSQL recovers from the WAL archive
needs: backup_label (the set's labelfile, byte-exact), tablespace_map when the backup had
tablespaces, recovery.signal, recovery settings merged into postgresql.auto.conf
(restore_command, the target, recovery_target_action = 'promote'), an empty pg_wal/ with
archive_status/, and no stale postmaster.pid. Two ways to get there:

- `write_recovery(target_dir, labelfile, spcmapfile, restore_command, ...)` edits a directory
  that was already restored on this host (also fixes ownership and the 0700 mode);
- `recovery_stream(records, labelfile, spcmapfile, restore_command, ...)` transforms a restore
  record stream (cairn.fsio.records) so that a client writing it with TreeWriter gets the same
  result — the way `cairn restore-db` works when data is streamed to the client.

Targets: 'immediate' (default: the set's own consistent point, i.e. its stop LSN), a time
(`target_time`, inclusive), an LSN (`target_lsn`, inclusive) or 'end' (the end of the WAL
archive: no recovery_target* setting at all, so recovery replays every segment restore_command
serves and promotes when it reports the next one missing); never more than one. The
timeline recovery follows (`recovery_target_timeline`) is the set's own ('current') unless
'latest' or a timeline id is asked for: a timeline that a restored copy archived into the same
WAL name space must not capture the recovery of a set taken on the timeline it branched from.
No psycopg2 here: this module works without a server.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from cairn import walnames
from cairn.errors import InvalidArgumentError
from cairn.fsio.durable import fsync_dir, write_atomic
from cairn.fsio.records import Data, EntryMeta, Failed, Hole, LaneData, LaneEnd, Record

RECOVERY_KEYS = (
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
)

# Files of the data directory that a restore must not bring back from the set.
DROPPED_FILES = (b"backup_label", b"tablespace_map", b"recovery.signal", b"standby.signal",
                 b"postmaster.pid", b"postmaster.opts")
AUTO_CONF = b"postgresql.auto.conf"

_LSN_RE = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
TIMELINE_CHOICES = ("current", "latest")  # besides a timeline id (a positive decimal number)
MAX_TIMELINE = 0xFFFFFFFF


@dataclass(frozen=True)
class RecoveryPlan:
    """What write_recovery wrote, for the restore-db report."""

    target_dir: str
    target: str
    settings: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()


# -- settings --------------------------------------------------------------------------------


def check_timeline(value: str) -> str:
    """A recovery_target_timeline: 'current', 'latest' or a timeline id; InvalidArgumentError else."""
    text = value.strip().lower()
    if text in TIMELINE_CHOICES:
        return text
    if re.fullmatch(r"[0-9]{1,10}", text) and 1 <= int(text) <= MAX_TIMELINE:
        return str(int(text))
    raise InvalidArgumentError(f"invalid target timeline '{value}': expected 'current', 'latest' or a timeline "
                               "id like 2")


def recovery_settings(restore_command: str, target_time: str | datetime | None = None,
                      target_lsn: str | None = None, target: str = "immediate",
                      target_timeline: str = "current") -> dict[str, str]:
    """The postgresql.auto.conf settings for a recovery to the given target on `target_timeline`
    (the set's own by default), then promotion."""
    if not restore_command.strip():
        raise InvalidArgumentError("restore_command must not be empty")
    settings = {"restore_command": restore_command}
    if target_time is not None and target_lsn is not None:
        raise InvalidArgumentError("give at most one of target time and target LSN")
    if target == "end" and (target_time is not None or target_lsn is not None):
        raise InvalidArgumentError("the end of the archive is a target of its own: give no target time or LSN "
                                   "with it")
    if target_time is not None:
        if isinstance(target_time, datetime):
            if target_time.tzinfo is None:
                raise InvalidArgumentError(f"target time '{target_time.isoformat()}' needs a time zone")
            target_time = target_time.isoformat(sep=" ")
        if not str(target_time).strip():
            raise InvalidArgumentError("empty target time")
        settings.update({"recovery_target_time": str(target_time), "recovery_target_inclusive": "on"})
    elif target_lsn is not None:
        if not _LSN_RE.match(target_lsn):
            raise InvalidArgumentError(f"invalid target LSN '{target_lsn}': expected the form '0/3000028'")
        settings.update({"recovery_target_lsn": target_lsn, "recovery_target_inclusive": "on"})
    elif target == "immediate":
        settings["recovery_target"] = "immediate"
    elif target != "end":  # 'end': no recovery_target* at all, recovery replays all the archive holds
        raise InvalidArgumentError(f"unknown recovery target '{target}': expected 'immediate' or 'end'")
    settings["recovery_target_action"] = "promote"
    settings["recovery_target_timeline"] = check_timeline(target_timeline)
    return settings


def describe_target(settings: dict[str, str]) -> str:
    """'immediate', 'time <t>', 'lsn <l>' or 'end' (of the archive) for messages."""
    if "recovery_target_time" in settings:
        return f"time {settings['recovery_target_time']}"
    if "recovery_target_lsn" in settings:
        return f"lsn {settings['recovery_target_lsn']}"
    return "immediate" if "recovery_target" in settings else "end"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def merge_auto_conf(existing: bytes, settings: dict[str, str]) -> bytes:
    """postgresql.auto.conf content: `existing` without any recovery setting, plus `settings`."""
    keep: list[bytes] = []
    for line in existing.splitlines(keepends=True):
        key = line.split(b"=", 1)[0].strip().lower().decode("utf-8", "replace")
        if key in RECOVERY_KEYS or key in settings:
            continue
        keep.append(line if line.endswith(b"\n") else line + b"\n")
    keep.append(b"# recovery settings written by cairn restore-db\n")
    keep += [f"{k} = {_conf_quote(v)}\n".encode() for k, v in settings.items()]
    return b"".join(keep)


def remap_spcmap(spcmapfile: bytes, remap: dict[int, str] | None) -> bytes:
    """tablespace_map with the locations of the oids in `remap` replaced."""
    if not remap:
        return spcmapfile
    out = []
    for line in spcmapfile.split(b"\n"):
        oid, _, _loc = line.partition(b" ")
        if oid.isdigit() and int(oid) in remap:
            line = oid + b" " + os.fsencode(remap[int(oid)])
        out.append(line)
    return b"\n".join(out)


def _check_label(labelfile: bytes) -> None:
    if not labelfile.startswith(b"START WAL LOCATION"):
        raise InvalidArgumentError(
            "labelfile is not a backup label (it must start with 'START WAL LOCATION')")


# -- on a restored directory -----------------------------------------------------------------


def _write_file(path: str, data: bytes, mode: int = 0o600) -> None:
    write_atomic(path, data, mode)


def _reset_pg_wal(target_dir: str) -> None:
    pg_wal = os.path.join(target_dir, "pg_wal")
    if os.path.islink(pg_wal) or (os.path.lexists(pg_wal) and not os.path.isdir(pg_wal)):
        os.unlink(pg_wal)  # a symlink would point into the live server's WAL directory
    os.makedirs(pg_wal, exist_ok=True)
    for name in os.listdir(pg_wal):
        p = os.path.join(pg_wal, name)
        if os.path.isdir(p) and not os.path.islink(p):
            if name != "archive_status":
                shutil.rmtree(p)
        else:
            os.unlink(p)
    status = os.path.join(pg_wal, "archive_status")
    os.makedirs(status, exist_ok=True)
    for name in os.listdir(status):
        os.unlink(os.path.join(status, name))


def write_recovery(
    target_dir: str,
    labelfile: bytes,
    spcmapfile: bytes,
    restore_command: str,
    target_time: str | datetime | None = None,
    target_lsn: str | None = None,
    target: str = "immediate",
    *,
    owner: tuple[int, int] | None = None,
    tablespace_remap: dict[int, str] | None = None,
    target_timeline: str = "current",
) -> RecoveryPlan:
    """Prepare a restored data directory for archive recovery to the target, then promotion.

    Files it writes get `owner` (uid, gid) — by default the owner of the restored PG_VERSION;
    with an explicit `owner` the whole tree is given to it. The directory ends with mode 0700.
    """
    if not os.path.isfile(os.path.join(target_dir, "PG_VERSION")):
        raise InvalidArgumentError(
            f"target '{target_dir}' is not a PostgreSQL data directory (no PG_VERSION)")
    _check_label(labelfile)
    settings = recovery_settings(restore_command, target_time, target_lsn, target, target_timeline)
    if owner is None:
        st = os.stat(os.path.join(target_dir, "PG_VERSION"))
        uid, gid = st.st_uid, st.st_gid
    else:
        uid, gid = owner

    written: list[str] = []
    # Step 1: the backup label tells recovery where to start and which checkpoint to use.
    _write_file(os.path.join(target_dir, "backup_label"), labelfile)
    written.append("backup_label")
    # Step 2: the tablespace map recreates pg_tblspc links; absent for a backup without tablespaces.
    spc_path = os.path.join(target_dir, "tablespace_map")
    if spcmapfile:
        _write_file(spc_path, remap_spcmap(spcmapfile, tablespace_remap))
        written.append("tablespace_map")
    elif os.path.lexists(spc_path):
        os.unlink(spc_path)
    # Step 3: recovery settings and the signal file that makes the server run archive recovery.
    auto = os.path.join(target_dir, "postgresql.auto.conf")
    existing = b""
    if os.path.exists(auto):
        with open(auto, "rb") as f:
            existing = f.read()
    _write_file(auto, merge_auto_conf(existing, settings))
    written.append("postgresql.auto.conf")
    _write_file(os.path.join(target_dir, "recovery.signal"), b"")
    written.append("recovery.signal")
    for stale in ("standby.signal", "postmaster.pid", "postmaster.opts"):
        p = os.path.join(target_dir, stale)
        if os.path.lexists(p):
            os.unlink(p)
    # Step 4: an empty pg_wal; every segment comes from the archive through restore_command.
    _reset_pg_wal(target_dir)
    written += ["pg_wal", "pg_wal/archive_status"]
    # Step 5: ownership and modes PostgreSQL insists on.
    if owner is not None:
        for root, dirs, files in os.walk(target_dir):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    else:
        for rel in written:
            os.chown(os.path.join(target_dir, rel), uid, gid, follow_symlinks=False)
    os.chown(target_dir, uid, gid)
    for rel in ("", "pg_wal", "pg_wal/archive_status"):
        os.chmod(os.path.join(target_dir, rel), 0o700)
    fsync_dir(target_dir)
    return RecoveryPlan(target_dir=target_dir, target=describe_target(settings), settings=settings,
                        files=tuple(written))


# -- on a restore stream ---------------------------------------------------------------------


def recovery_stream(
    records: Iterable[Record],
    labelfile: bytes,
    spcmapfile: bytes,
    restore_command: str,
    target_time: str | datetime | None = None,
    target_lsn: str | None = None,
    target: str = "immediate",
    *,
    root: bytes = b"",
    tablespace_remap: dict[int, str] | None = None,
    extra_settings: dict[str, str] | None = None,
    target_timeline: str = "current",
) -> Iterator[Record]:
    """Transform a set's restore stream of a data directory into a recoverable one.

    `root` names the data directory inside the stream (b"" when the stream is the data
    directory itself; else only records under root are kept and re-rooted). Entries of
    DROPPED_FILES and anything under pg_wal/ are left out, a pg_wal symlink becomes a
    directory, postgresql.auto.conf gets the recovery settings merged in, and backup_label,
    tablespace_map, recovery.signal and pg_wal/archive_status are added at the end with the
    owner of PG_VERSION. Settings are validated before the first record is read. The writer
    must still give the target directory itself mode 0700 (streams carry no root entry).
    """
    _check_label(labelfile)
    settings = recovery_settings(restore_command, target_time, target_lsn, target, target_timeline)
    settings.update(extra_settings or {})
    links = {b"pg_tblspc/%d" % oid: os.fsencode(where) for oid, where in (tablespace_remap or {}).items()}
    return _recovery_records(records, labelfile, remap_spcmap(spcmapfile, tablespace_remap) if spcmapfile
                             else b"", settings, root, links)


def _rerooted(records: Iterable[Record], root: bytes) -> Iterator[Record]:
    prefix = root.rstrip(b"/") + b"/"
    keep = False
    for rec in records:
        if isinstance(rec, (LaneData, LaneEnd)):  # a lane names its file: kept by its own path
            if rec.path.startswith(prefix):
                yield dataclasses.replace(rec, path=rec.path[len(prefix):])
            continue
        if isinstance(rec, EntryMeta):
            keep = rec.path.startswith(prefix)
            if not keep:
                continue
            link_to = rec.link_to[len(prefix):] if rec.link_to.startswith(prefix) else rec.link_to
            rec = _replace(rec, path=rec.path[len(prefix):], link_to=link_to)
        if keep:
            yield rec


def _replace(m: EntryMeta, **changes: object) -> EntryMeta:
    fields = {name: getattr(m, name) for name in EntryMeta.__dataclass_fields__}
    fields.update(changes)
    return EntryMeta(**fields)  # type: ignore[arg-type]


def _recovery_records(records: Iterable[Record], labelfile: bytes, spcmap: bytes,
                      settings: dict[str, str], root: bytes, links: dict[bytes, bytes]) -> Iterator[Record]:
    if root:
        records = _rerooted(records, root)
    owner = (0, 0)
    skipping = False
    conf_meta: EntryMeta | None = None
    conf = bytearray()
    seen_wal = seen_conf = seen_version = False
    dropped_lanes: set[bytes] = set()  # lanes of entries left out: their content is left out too
    conf_lane: EntryMeta | None = None  # a laned postgresql.auto.conf: merged at the end
    conf_lane_data = bytearray()
    for rec in records:
        if isinstance(rec, (LaneData, LaneEnd)):
            if rec.path in dropped_lanes:
                continue
            if conf_lane is not None and rec.path == AUTO_CONF:
                if isinstance(rec, LaneData):
                    conf_lane_data += rec.data
                elif rec.failed:
                    raise InvalidArgumentError(f"unable to restore postgresql.auto.conf: {rec.failed}")
                continue
            yield rec
            continue
        if not isinstance(rec, EntryMeta):
            if conf_meta is not None:
                if isinstance(rec, Data):
                    conf += rec.data
                elif isinstance(rec, Hole):
                    conf += b"\0" * rec.length
                elif isinstance(rec, Failed):
                    raise InvalidArgumentError(f"unable to restore postgresql.auto.conf: {rec.message}")
            elif not skipping:
                yield rec
            continue
        if conf_meta is not None:
            yield from _conf_records(conf_meta, bytes(conf), settings)
            conf_meta = None
        path = rec.path
        skipping = False
        if path == b"PG_VERSION":
            owner, seen_version = (rec.uid, rec.gid), True
        if path in DROPPED_FILES or path.startswith(b"pg_wal/"):
            skipping = True
            if rec.lane:
                dropped_lanes.add(path)
            continue
        if path == b"pg_wal":
            seen_wal = True
            if rec.kind != "dir":  # a link (initdb --waldir): a directory of PG_VERSION's owner, whoever made the link
                uid, gid = owner if seen_version else (rec.uid, rec.gid)
                rec = EntryMeta(path=b"pg_wal", kind="dir", mode=0o700, uid=uid, gid=gid, mtime_ns=rec.mtime_ns)
        if rec.kind == "symlink" and path in links:  # as tablespace_map says: never at the source's live files
            rec = _replace(rec, target=links[path])
        if path == AUTO_CONF and rec.kind == "file":
            seen_conf = True
            if rec.lane:  # its content ends somewhere later: written after everything else
                conf_lane = rec
            else:
                conf_meta = rec
            continue
        yield rec
    if conf_meta is not None:
        yield from _conf_records(conf_meta, bytes(conf), settings)
    elif conf_lane is not None:
        yield from _conf_records(dataclasses.replace(conf_lane, lane=False), bytes(conf_lane_data), settings)
    elif not seen_conf:
        yield from _new_file(AUTO_CONF, merge_auto_conf(b"", settings), owner)
    now = time.time_ns()
    uid, gid = owner
    if not seen_wal:
        yield EntryMeta(path=b"pg_wal", kind="dir", mode=0o700, uid=uid, gid=gid, mtime_ns=now)
    yield EntryMeta(path=b"pg_wal/archive_status", kind="dir", mode=0o700, uid=uid, gid=gid, mtime_ns=now)
    yield from _new_file(b"backup_label", labelfile, owner)
    if spcmap:
        yield from _new_file(b"tablespace_map", spcmap, owner)
    yield from _new_file(b"recovery.signal", b"", owner)


def _conf_records(meta: EntryMeta, existing: bytes, settings: dict[str, str]) -> Iterator[Record]:
    data = merge_auto_conf(existing, settings)
    yield _replace(meta, size=len(data), sparse=False, mtime_ns=time.time_ns())
    yield Data(data)


def _new_file(path: bytes, data: bytes, owner: tuple[int, int]) -> Iterator[Record]:
    yield EntryMeta(path=path, kind="file", mode=0o600, uid=owner[0], gid=owner[1], mtime_ns=time.time_ns(),
                    size=len(data))
    if data:
        yield Data(data)


# -- LSNs, WAL names, labels -----------------------------------------------------------------


def parse_label(labelfile: bytes) -> dict[str, str]:
    """The 'KEY: value' lines of a backup label (START WAL LOCATION, START TIMELINE, ...)."""
    out: dict[str, str] = {}
    for line in labelfile.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> 64-bit integer position."""
    if not _LSN_RE.match(lsn):
        raise InvalidArgumentError(f"invalid LSN '{lsn}': expected the form '0/3000028'")
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(pos: int) -> str:
    """64-bit position -> '16/B374D848'."""
    return f"{pos >> 32:X}/{pos & 0xFFFFFFFF:X}"


def wal_segment_name(timeline: int, lsn: str, segment_size: int = 16 * 1024 * 1024) -> str:
    """Name of the WAL segment file holding `lsn` on `timeline` (as pg_walfile_name, no server)."""
    return walnames.segment_of_lsn(timeline, lsn_to_int(lsn), segment_size)


is_wal_file_name = walnames.is_wal_file_name  # the rule lives in cairn.walnames
