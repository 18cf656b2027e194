"""restore-db: the record stream of a set's database, prepared for recovery from the WAL archive.

`restore_db_records(repo, s, database, ...)` checks the request against the set (the set holds
that database; the target time or LSN parses and is not before the set's consistent point),
then returns the set's copy of the data directory (attachment 'db:<name>') passed through
`pgrecovery.recovery_stream`: backup_label and tablespace_map byte-exact from the set,
recovery.signal, and recovery settings with `restore_command` = `cairn wal-fetch %f %p`
(naming the daemon's socket explicitly, since the server's OS user has its own default) and
the target — the set's own consistent point ('immediate') unless a time or an LSN is given, or
the end of the WAL archive (`target_end`: no recovery_target* setting) — on the set's own
timeline ('current'), then promotion. A time without a zone is the local time
of the daemon's host; it is written with that offset. Tablespaces follow under
`cairn_tablespaces/<oid>/` of the target, and the tablespace map points there (the client sends
its absolute target directory for that).

The WAL the set needs to reach its consistent point — its start segment through the segment of
its restore point, and the history file of its timeline — is placed in pg_wal/ as part of the
stream, together with WAL_MARKER listing those names. PostgreSQL asks restore_command for every
file before it looks in pg_wal/; `cairn wal-fetch` answers at once for a name the marker lists
and pg_wal/ holds (exit 3: recovery then reads pg_wal/'s copy, identical to the archived one), so
recovery to the set's own point needs no round trip to the daemon. The default restore_command
gives those answers in the shell already (local_answers), so no interpreter starts for them. Later WAL (a time or LSN
beyond the set, or to its end) still comes from the archive. Without a target pg_wal/ also holds OWN_POINT:
recovery then stops within the placed WAL, so wal-fetch answers at once for any later segment
(PostgreSQL reads ahead one segment) instead of asking the daemon; history files still come from
the archive (a new timeline must not collide with one archived there). recovery_end_command
removes OWN_POINT when recovery ends, so a later recovery of the same directory (a standby made
from it) fetches every segment again.

What always holds: every check runs before the first record is produced (`check_restore_db`
runs them alone, for `restore --databases` to check every database before it writes any);
errors are NotFoundError (no such database in the set), InvalidArgumentError (bad time or LSN)
or FailedPreconditionError (a segment the set needs for its consistent point, or its target
needs on the set's timeline, missing from the archive; a target time past the archive; with
`target_end`, a segment missing after the set on its timeline while later ones are archived,
unless `accept_wal_gap` takes recovery up to that gap).
global/pg_control (PG_CONTROL) is the stream's last file, after the placed WAL and the
tablespaces: PostgreSQL refuses to start without it, so a restore cut short anywhere (a kill of
the client or the daemon, a full disk) never leaves a directory it would start on and recover
with files missing. `write_local` writes it only once every other file is complete, and not at
all when one of them could not be restored (cairn.fsio.pgcontrol.ControlLast, which the client
uses the same way when it writes the stream itself).

Local restores (`write_local`): when the client runs on the daemon's host it may ask the daemon
to write the data directory itself, so the data never crosses gRPC. The client proves the
target is its own with a claim file (cairn.fsio.claims.check_claim: the target directory
holds only `.cairn-claim-<nonce>`, made by root or by the daemon's own user). Anything else is
refused with FailedPreconditionError "local write ..." before anything is written, and the
client streams.
The daemon writes with fsio.writer.ParallelTreeWriter (a pool of LOCAL_WRITERS threads creates and
writes several files at once, each in order; every guarantee of TreeWriter holds), and the stream
it writes may carry lanes (fsio.records) when the caller passes the writer's LaneGauge.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cairn import walnames
from cairn.daemon.databases.engine import KIND_POSTGRES, PhysicalRecord, TablespaceRecord, record_dicts, records_of
from cairn.daemon.databases.postgres.recovery import AUTO_CONF, int_to_lsn, lsn_to_int, recovery_stream
from cairn.daemon.databases.postgres.walarchive import (
    database_records,
    fetch_wal,
    missing_segments,
    newest_archived,
    record_namespace,
)
from cairn.fsio.claims import check_claim
from cairn.fsio.pgcontrol import PG_CONTROL, ControlLast
from cairn.fsio.records import Data, EntryMeta, LaneData, LaneEnd, LaneGauge, Record
from cairn.fsio.writer import ParallelTreeWriter, WriteStats
from cairn.store.errors import CairnError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from cairn.store.model import BackupSet, Progress
from cairn.store.repository import Repository

TABLESPACE_DIR = "cairn_tablespaces"
WAL_MARKER = walnames.WAL_MARKER  # in pg_wal/: the WAL files restore-db placed there, one a line
OWN_POINT = walnames.OWN_POINT  # in pg_wal/: recovery stops at the set's consistent point
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"  # names wal-fetch's prefetch spool (client/walfetch.py)
SHELL_WAIT_TICKS = 300  # restore_command waits up to 3 s for a segment being prefetched
MAX_PLACED_NAMED = 128  # placed WAL files the restore_command answers in the shell (more: the client does)
OWN_POINT_AHEAD = 4  # segments after the placed WAL that the shell answers while OWN_POINT holds


def cairn_executable() -> str:
    """The `cairn` client next to this interpreter, else the one on PATH, else plain 'cairn'."""
    sibling = os.path.join(os.path.dirname(sys.executable), "cairn")
    if os.access(sibling, os.X_OK):
        return sibling
    return shutil.which("cairn") or "cairn"


def restore_command(socket_path: str, executable: str | None = None, system_id: str = "",
                    fetch_with: str = "") -> str:
    """restore_command for recovery: `cairn --socket S wal-fetch [--system-id N] %f %p`, or with
    `fetch_with` (a client on another host: its own cairn and connection options) that instead
    of `cairn --socket S`.

    The socket is always named: PostgreSQL runs the command as its own OS user, whose default
    socket (under its home or XDG_RUNTIME_DIR) is not the daemon's. The system identifier names
    the cluster's WAL name space in the repository.
    """
    ident = f" --system-id {int(system_id)}" if system_id else ""
    if fetch_with:
        return f"{check_fetch_with(fetch_with)} wal-fetch{ident} %f %p"
    exe = executable or cairn_executable()
    return f"{shlex.quote(exe)} --socket {shlex.quote(socket_path)} wal-fetch{ident} %f %p"


def check_fetch_with(prefix: str) -> str:
    """A client's `cairn` command prefix for restore_command: one line of shell words, no '%'
    (PostgreSQL's placeholders), starting with an absolute path."""
    try:
        words = shlex.split(prefix)
    except ValueError:
        words = []
    if not words or not os.path.isabs(words[0]) or any(c in prefix for c in "%\n\r\0"):
        raise InvalidArgumentError("invalid fetch_with: a one-line cairn command prefix with an absolute path "
                                   "and no '%' is needed")
    return prefix


def prefetching_restore_command(socket_path: str, executable: str | None = None, system_id: str = "",
                                placed: Sequence[str] = (), own_point: bool = False,
                                segment_size: int = walnames.DEFAULT_SEGMENT_SIZE, fetch_with: str = "") -> str:
    """restore_command that first takes a segment from wal-fetch's prefetch spool with a plain
    `mv` (a rename; no interpreter starts), else runs `cairn wal-fetch` (restore_command).

    The spool is pg_wal/cairn-prefetch/<boot id> (client/walfetch.py): the shell reads the boot
    id with its `read` builtin, so a spool written before a crash of the machine is never used.
    A segment the prefetcher is fetching right now (its `.<name>.tmp` exists) is waited for in
    the shell, up to SHELL_WAIT_TICKS times 10 ms, instead of starting the client.

    Before that, the shell answers what `cairn wal-fetch` would answer without the archive
    (exit 1, so PostgreSQL reads pg_wal/): the WAL files `placed` in pg_wal/ by restore-db
    while pg_wal/ holds them, timeline 1's history file (never exists) and, while pg_wal/ holds
    OWN_POINT, the OWN_POINT_AHEAD segments after the last placed one (recovery stops before
    them; PostgreSQL reads ahead). No interpreter starts for those either."""
    take = "mv -f \"$s/%f\" %p 2>/dev/null"
    wait = (f"i=0; while [ ! -e \"$s/%f\" ] && [ -e \"$s/.%f.tmp\" ] && [ $i -lt {SHELL_WAIT_TICKS} ]; "
            "do sleep 0.01; i=$((i+1)); done")
    return (f"{local_answers(placed, own_point, segment_size)}"
            f"{{ read -r b 2>/dev/null <{BOOT_ID_FILE} && s=\"pg_wal/cairn-prefetch/$b\" && "
            f"{{ {take} || {{ {wait}; {take}; }}; }}; }} || "
            f"{restore_command(socket_path, executable, system_id, fetch_with)}")


def local_answers(placed: Sequence[str], own_point: bool, segment_size: int = walnames.DEFAULT_SEGMENT_SIZE) -> str:
    """The shell `case` of prefetching_restore_command that answers "not in the archive, read
    pg_wal/" for WAL files the archive is not needed for ('' when there are none to name).
    Only names of WAL files are interpolated (checked here), so nothing else reaches the shell."""
    names = [n for n in placed if walnames.is_wal_file_name(n) and n != walnames.NO_HISTORY][:MAX_PLACED_NAMED]
    arms = [f"{walnames.NO_HISTORY}) exit 1;;"]
    if names:
        arms.append(f"{'|'.join(names)}) [ -f pg_wal/%f ] && exit 1;;")
    segments = [n for n in names if walnames.parse_segment(n, segment_size) is not None]
    if own_point and segments:
        tli, segno = walnames.parse_segment(segments[-1], segment_size) or (0, 0)
        ahead = [walnames.segment_name(tli, segno + i, segment_size) for i in range(1, OWN_POINT_AHEAD + 1)]
        arms.append(f"{'|'.join(ahead)}) [ -e pg_wal/{OWN_POINT} ] && exit 1;;")
    return f"case %f in {' '.join(arms)} esac; "


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
        raise NotFoundError(f"set '{s.id[:8]}' holds no database '{database}'{held_databases(s)}")
    if rec.get("attachment") not in s.attachments:
        raise NotFoundError(f"set '{s.id[:8]}' holds no data directory of database '{database}'")
    return rec


def held_databases(s: BackupSet) -> str:
    """' (it holds database 'a' (postgres), 'b' (command))': every database of the set with its
    kind, base backups and dumps alike ('' when it holds none), for a message."""
    named = [f"'{d['name']}' ({d.get('kind') or KIND_POSTGRES})" for d in record_dicts(s.extra) if d.get("name")]
    return f" (it holds database {', '.join(named)})" if named else ""


def _iso_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)


def parse_target_time(text: str) -> datetime:
    """A target time like '2025-03-01 12:00:00+01' (ISO 8601), or followed by a time zone name as
    PostgreSQL's own log lines print it ('2025-03-01 12:00:00.123 UTC', '... Europe/Berlin': any
    name of the system's tz database). Without a zone it is the local time of the daemon's host
    (the time it returns carries that zone's offset then)."""
    t = text.strip()
    expected = "expected a time like '2025-03-01 12:00:00+01:00' or '2025-03-01 12:00:00 UTC'"
    try:
        when = _iso_time(t)
    except ValueError:
        stamp, _, zone = t.rpartition(" ")
        try:
            when = _iso_time(stamp.strip())
        except ValueError:
            raise InvalidArgumentError(f"invalid target time '{text}': {expected}") from None
        if when.tzinfo is not None:
            raise InvalidArgumentError(f"invalid target time '{text}': it has an offset and a time zone") from None
        name = zone.upper() if zone.upper() in ("UTC", "GMT") else zone
        try:
            when = when.replace(tzinfo=ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgumentError(
                f"invalid target time '{text}': unknown time zone '{zone}' (give an offset like +02:00 or a "
                "zone name like Europe/Berlin; abbreviations other than UTC and GMT are ambiguous)") from None
    return when if when.tzinfo is not None else when.astimezone()


def check_target(rec: dict[str, Any], target_time: str, target_lsn: str,
                 earlier: Callable[[float | None, int | None], str] | None = None) -> str:
    """Refuse a malformed target, or one before the set's consistent point (never reachable;
    `earlier(time, lsn)` then names the set to take instead, for the message). Returns the
    target time as recovery_target_time gets it, with its zone's offset ('' for none): a time
    given without a zone is the daemon host's local time, not the restored server's."""
    if target_time and target_lsn:
        raise InvalidArgumentError("give at most one of --target-time and --target-lsn")
    if target_lsn:
        if lsn_to_int(target_lsn) < lsn_to_int(rec["stop_lsn"]):
            raise InvalidArgumentError(
                f"target LSN {target_lsn} is before the set's consistent point {rec['stop_lsn']}: "
                "choose a set taken before the target" + (earlier(None, lsn_to_int(target_lsn)) if earlier else ""))
    if not target_time:
        return ""
    when = parse_target_time(target_time)
    stopped = rec.get("stopped")
    if isinstance(stopped, int | float) and when.timestamp() < stopped:
        raise InvalidArgumentError(
            f"target time '{target_time}' is before the set's consistent point "
            f"({datetime.fromtimestamp(stopped).astimezone().isoformat(sep=' ', timespec='microseconds')}): "
            "choose a set taken before the target" + (earlier(when.timestamp(), None) if earlier else ""))
    return when.isoformat(sep=" ")


def earlier_set(repo: Repository, s: BackupSet, database: str) -> Callable[[float | None, int | None], str]:
    """For check_target's message: the newest set of `s`'s host and source whose copy of
    `database` is consistent before a target time or LSN (" (set 'ab12..', consistent at T, is
    the newest that is)"), or that there is none. Reads the set list only when a target was
    refused; '' when it cannot be read (the refusal stands without the name)."""

    def name(when: float | None, lsn: int | None) -> str:
        best: tuple[float, BackupSet] | None = None
        try:
            sets = repo.list_sets()
        except CairnError:
            return ""
        for other in sets:
            if other.hostname != s.hostname or other.source != s.source:
                continue
            rec = next((r for r in database_records(other.extra) if r.get("name") == database), None)
            stopped = rec.get("stopped") if rec else None
            if rec is None or rec.get("attachment") not in other.attachments or \
                    not isinstance(stopped, int | float):
                continue
            if when is not None and stopped > when:
                continue
            if lsn is not None and (not rec.get("stop_lsn") or lsn_to_int(str(rec["stop_lsn"])) > lsn):
                continue
            if best is None or stopped > best[0]:
                best = (stopped, other)
        if best is None:
            return f"; no set of source '{s.source}' on host '{s.hostname}' holds database '{database}' consistent " \
                   "before it"
        shown = datetime.fromtimestamp(best[0]).astimezone().isoformat(sep=" ", timespec="seconds")
        return f" (set '{best[1].id[:12]}', consistent at {shown}, is the newest that is)"

    return name


CLOCK_SKEW = 120.0  # seconds the database host's and the store's clocks may differ by


def check_reachable(repo: Repository, rec: dict[str, Any], database: str, target_time: str) -> None:
    """Refuse a target time that recovery could not reach: later than the newest segment the
    archive holds for the database (every record archived is older than its segment's store
    time), beyond a margin for clock skew. PostgreSQL would otherwise replay the whole archive
    and only then fail ("recovery ended before configured recovery target was reached")."""
    newest = newest_archived(repo, record_namespace(rec))
    if newest is None:
        return
    name, stored = newest
    if parse_target_time(target_time).timestamp() > stored + CLOCK_SKEW:
        at = datetime.fromtimestamp(stored).astimezone().isoformat(sep=" ", timespec="seconds")
        raise FailedPreconditionError(
            f"target time '{target_time}' is later than the newest WAL archived for database '{database}' "
            f"({name}, stored {at}): recovery could not reach it; choose an earlier time, or --target-end to "
            "recover everything archived")


def check_restore_db(repo: Repository, s: BackupSet, database: str, target_time: str, target_lsn: str,
                     target_path: str = "", command: str = "", target_timeline: str = "current",
                     fetch_with: str = "", target_end: bool = False,
                     accept_wal_gap: bool = False) -> tuple[dict[str, Any], str]:
    """Every check of a restore-db of `database` in `s` that needs nothing but the set and the
    WAL catalog (module docstring; also what `restore --databases` asks for each database before
    it writes anything). Returns (the set's record of the database, the target time as
    recovery_target_time gets it)."""
    if fetch_with:
        check_fetch_with(fetch_with)  # before anything is read
    if command and ("%p" not in command or "\n" in command):
        raise InvalidArgumentError(f"invalid restore_command '{command}': it must name the target file "
                                   "with %p (and the WAL file with %f), on one line")
    if target_end and (target_time or target_lsn):
        raise InvalidArgumentError("give at most one of --target-time, --target-lsn and --target-end")
    if accept_wal_gap and not target_end:
        raise InvalidArgumentError("--accept-wal-gap only goes with --target-end")
    rec = database_of(s, database)
    checked = check_target(rec, target_time, target_lsn, earlier_set(repo, s, database))
    if not command:  # a restore_command of the operator's own may read another archive
        check_consistency_wal(repo, s, rec, database)
        if checked:
            check_reachable(repo, rec, database, target_time)
        if target_timeline in ("", "current"):
            check_no_gap_before(repo, rec, database, checked, target_lsn)
            if target_end and not accept_wal_gap:
                check_end_without_gap(repo, rec, database)
    if PhysicalRecord.from_dict(rec).tablespaces and (not target_path or not os.path.isabs(target_path)):
        raise InvalidArgumentError(
            f"set '{s.id[:8]}' has tablespaces: the client must send its absolute target directory")
    return rec, checked


def restore_db_records(repo: Repository, s: BackupSet, database: str, target_time: str, target_lsn: str,
                       socket_path: str, target_path: str = "", command: str = "",
                       lanes: LaneGauge | None = None, target_timeline: str = "current",
                       fetch_with: str = "", manifest: bool = False, target_end: bool = False,
                       accept_wal_gap: bool = False) -> Iterator[Record]:
    """The checked, recovery-ready record stream of `database` in set `s` (module docstring).
    With `target_end` recovery goes to the end of the WAL archive (no time or LSN with it); a
    gap after the set on its own timeline, with later segments archived, is refused unless
    `accept_wal_gap` (recovery then stops at the gap and promotes there).
    With `lanes` (the daemon's own writer) the data directory's large files come as lanes;
    recovery follows `target_timeline` ('current': the set's own, 'latest', or an id).
    With `manifest` the set's files come as a manifest (chunk ids, no content: a delta restore,
    deltadb.py) and the files recovery needs that the set does not hold as they are (the
    recovery settings, backup_label, ...) with their content; the placed WAL is left out.

    `command` replaces the default restore_command (a client the database's OS user can run);
    `fetch_with` is the prefix the default one runs wal-fetch with (a client on another host)."""
    rec, checked = check_restore_db(repo, s, database, target_time, target_lsn, target_path, command,
                                    target_timeline, fetch_with, target_end, accept_wal_gap)
    target_time = checked
    typed = PhysicalRecord.from_dict(rec)
    spaces = list(typed.tablespaces)
    remap: dict[int, str] = {}
    if spaces:
        remap = {t.oid: os.path.join(target_path, TABLESPACE_DIR, str(t.oid)) for t in spaces}
    wal = consistency_wal(repo, rec)
    own_point = not (target_time or target_lsn or target_end)
    size = int(rec.get("wal_segment_size") or walnames.DEFAULT_SEGMENT_SIZE)
    data_dir = repo.restore_stream(s, attachment=typed.attachment, lanes=None if manifest else lanes,
                                   manifest=manifest)
    if manifest:
        data_dir = _with_conf_content(data_dir, repo, s, typed.attachment)
    main = recovery_stream(data_dir, typed.labelfile, typed.spcmapfile,
                           command or prefetching_restore_command(socket_path, system_id=record_namespace(rec),
                                                                  placed=wal, own_point=own_point, segment_size=size,
                                                                  fetch_with=fetch_with),
                           target_time or None,
                           target_lsn or None, "end" if target_end else "immediate", tablespace_remap=remap,
                           extra_settings=None if not own_point else
                           {"recovery_end_command": f"rm -f pg_wal/{OWN_POINT}"},
                           target_timeline=target_timeline)
    return _chain(main, repo, s, spaces, [] if manifest else wal, own_point=own_point,
                  namespace=record_namespace(rec), manifest=manifest)


def _with_conf_content(records: Iterator[Record], repo: Repository, s: BackupSet,
                       attachment: str) -> Iterator[Record]:
    """A manifest stream whose postgresql.auto.conf carries its content (recovery_stream merges
    the recovery settings into it), read from the set."""
    for rec in records:
        if isinstance(rec, EntryMeta) and rec.path == AUTO_CONF and rec.kind == "file" and rec.chunks:
            data = b"".join(repo.read_chunks(s, list(rec.chunks), attachment))  # type: ignore[arg-type]
            yield dataclasses.replace(rec, chunks=(), chunk_sizes=(), size=len(data), sparse=False)
            if data:
                yield Data(data)
        else:
            yield rec


def restore_db_totals(s: BackupSet, database: str) -> tuple[int, int]:
    """(files, bytes) a restore of `database` in `s` writes: its data directory attachment and
    its tablespaces, as the set recorded them (the WAL recovery reads is fetched later)."""
    typed = PhysicalRecord.from_dict(database_of(s, database))
    files = size = 0
    for name in (typed.attachment, *(t.attachment for t in typed.tablespaces)):
        att = s.attachments.get(name) or {}
        files += int(att.get("files") or 0)
        size += int(att.get("bytes_total") or 0)
    return files, size


def check_consistency_wal(repo: Repository, s: BackupSet, rec: dict[str, Any], database: str) -> None:
    """Refuse (FailedPreconditionError) a set whose archive lacks a segment between its first WAL
    file and the one holding its stop LSN: recovery could not reach the set's consistent point
    on any target, and the server started on the directory would stop at that segment. A set
    is committed only once every one of them is archived, so a missing one was lost or deleted
    since (`cairn verify` names every gap)."""
    wal = rec.get("wal") or {}
    missing = missing_segments(set(repo.list_wal(record_namespace(rec))), [rec])
    if missing:
        raise FailedPreconditionError(
            f"WAL segment {missing[0][1]} of database '{database}' is not in the archive: set '{s.id[:8]}' needs "
            f"every segment from {wal.get('first')} to {wal.get('last')} to reach its consistent point, and "
            "PostgreSQL could not recover a directory restored from it, so none is written",
            hint="cairn verify names every gap in the WAL archive; restore another set")


def check_no_gap_before(repo: Repository, rec: dict[str, Any], database: str, target_time: str,
                        target_lsn: str) -> None:
    """Refuse (FailedPreconditionError) a target time or LSN on the set's own timeline that
    recovery cannot reach because the archive lacks a segment of that timeline between the set
    and the target (lost or deleted since): PostgreSQL would stop at the gap ("recovery ended
    before configured recovery target was reached") and not start. Only what is certain: an LSN
    at or past the missing segment, or a time later than the store's time of a segment that
    follows it (segments are written in order, so the missing one is older still)."""
    if not (target_time or target_lsn):
        return
    found = first_gap_after(repo, rec)
    if found is None:
        return
    gap, tli, size, stored = found
    name = walnames.segment_name(tli, gap, size)
    if target_lsn:
        needed = lsn_to_int(target_lsn) // size >= gap
        what = f"LSN {target_lsn}"
    else:
        when = parse_target_time(target_time).timestamp()
        needed = any(t + CLOCK_SKEW < when for n, t in stored.items() if n > gap)
        what = f"time '{target_time}'"
    if needed:
        raise FailedPreconditionError(
            f"WAL segment {name} of database '{database}' is not in the archive, and recovery to {what} needs it "
            f"(the archive holds later segments of timeline {tli}): PostgreSQL would stop there without reaching "
            "the target; choose a target before it",
            hint="cairn verify names every gap in the WAL archive")


def first_gap_after(repo: Repository, rec: dict[str, Any]) -> tuple[int, int, int, dict[int, float]] | None:
    """The first segment missing from the archive after the set's last WAL file on the set's
    timeline, when a later segment of that timeline is archived (a gap, not the archive's end):
    (its segment number, the timeline, the segment size, and the cluster's own segments after
    the set's last -> the store's time of each); None when there is no such gap. A segment
    counts as archived when a fetch finds it (the flat name space of older archives too)."""
    size = int(rec.get("wal_segment_size") or walnames.DEFAULT_SEGMENT_SIZE)
    last = walnames.parse_segment(str((rec.get("wal") or {}).get("last") or ""), size)
    if last is None:
        return None
    tli, namespace = last[0], record_namespace(rec)
    stored: dict[int, float] = {}  # the cluster's own segments after the set's last -> when the store got them
    held: set[int] = set()  # those a fetch finds (the flat name space of older archives too)
    for info in repo.backend.list_info("wal"):
        space, _, name = info.name.rpartition("@")
        seg = walnames.parse_segment(name, size) if space in (namespace, "") else None
        if seg is not None and seg[0] == tli and seg[1] > last[1]:
            held.add(seg[1])
            if space == namespace:
                stored[seg[1]] = min(info.time, stored.get(seg[1], info.time))
    gap = next((n for n in range(last[1] + 1, max(stored, default=last[1])) if n not in held), None)
    return None if gap is None else (gap, tli, size, stored)


def check_end_without_gap(repo: Repository, rec: dict[str, Any], database: str) -> None:
    """Refuse (FailedPreconditionError) recovery to the end of the archive (--target-end) on the
    set's own timeline when the archive lacks a segment after the set and holds later ones (lost
    or deleted since): PostgreSQL would stop at the gap and promote, silently without everything
    archived after it. The message names the first missing segment and the point recovery
    reaches (the start of that segment); --accept-wal-gap takes that point explicitly."""
    found = first_gap_after(repo, rec)
    if found is None:
        return
    gap, tli, size, _ = found
    name = walnames.segment_name(tli, gap, size)
    reach = int_to_lsn(gap * size)
    raise FailedPreconditionError(
        f"WAL segment {name} of database '{database}' is not in the archive, and the archive holds later "
        f"segments of timeline {tli}: recovery to the end of the archive would stop at {reach} and promote "
        "without them",
        hint=f"to recover up to {reach} and promote there all the same, add --accept-wal-gap; cairn verify "
             "names every gap in the WAL archive")


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
    held = set(repo.list_wal(record_namespace(rec)))
    history = walnames.history_name(tli)
    names = [history] if tli > 1 and history in held else []
    for segno in range(first[1], end + 1):
        name = walnames.segment_name(tli, segno, size)
        if name not in held:
            break
        names.append(name)
    return names


def _segno(name: str, per_xlogid: int) -> int:
    return int(name[8:16], 16) * per_xlogid + int(name[16:24], 16)


def _chain(main: Iterator[Record], repo: Repository, s: BackupSet, spaces: list[TablespaceRecord],
           wal: list[str], own_point: bool = False, namespace: str = "", manifest: bool = False) -> Iterator[Record]:
    """The data directory, the placed WAL and the tablespaces, then PG_CONTROL (module docstring)."""
    owner = (0, 0)
    control: list[Record] = []  # PG_CONTROL's entry and content, held back to the end
    holding = False
    for r in main:
        if isinstance(r, EntryMeta):
            if r.path == b"PG_VERSION":
                owner = (r.uid, r.gid)
            holding = r.path == PG_CONTROL
        if holding and not isinstance(r, (LaneData, LaneEnd)):  # lanes name their own file
            control.append(r)
            continue
        yield r
    yield from placed_wal(repo, wal, owner, own_point, namespace)
    yield from _tablespaces(repo, s, spaces, owner, manifest)
    yield from control


def _tablespaces(repo: Repository, s: BackupSet, spaces: list[TablespaceRecord], owner: tuple[int, int],
                 manifest: bool) -> Iterator[Record]:
    if not spaces:
        return
    top = TABLESPACE_DIR.encode()
    yield EntryMeta(path=top, kind="dir", mode=0o700, uid=owner[0], gid=owner[1])
    for t in spaces:
        prefix = top + b"/" + str(t.oid).encode()
        yield EntryMeta(path=prefix, kind="dir", mode=0o700, uid=owner[0], gid=owner[1])
        for r in repo.restore_stream(s, attachment=t.attachment, manifest=manifest):
            if isinstance(r, EntryMeta):
                link = prefix + b"/" + r.link_to if r.link_to else b""
                r = EntryMeta(path=prefix + b"/" + r.path, kind=r.kind, mode=r.mode, uid=r.uid, gid=r.gid,
                              mtime_ns=r.mtime_ns, size=r.size, xattrs=r.xattrs, target=r.target,
                              link_to=link, rdev=r.rdev, sparse=r.sparse, chunks=r.chunks,
                              chunk_sizes=r.chunk_sizes)
            yield r


def placed_wal(repo: Repository, names: list[str], owner: tuple[int, int],
                own_point: bool = False, namespace: str = "") -> Iterator[Record]:
    """pg_wal/<name> for each of `names` from the archive, then WAL_MARKER listing them (and,
    when recovery stops at the set's own point, the empty file OWN_POINT: no later segment is
    ever needed)."""
    if not names:
        return
    for name in names:
        data = fetch_wal(repo, name, namespace)
        yield EntryMeta(path=b"pg_wal/" + name.encode(), kind="file", mode=0o600, uid=owner[0], gid=owner[1],
                        mtime_ns=time.time_ns(), size=len(data))
        yield Data(data)
    listing = "".join(f"{n}\n" for n in names).encode()
    yield EntryMeta(path=b"pg_wal/" + WAL_MARKER.encode(), kind="file", mode=0o600, uid=owner[0], gid=owner[1],
                    mtime_ns=time.time_ns(), size=len(listing))
    yield Data(listing)
    if own_point:
        yield EntryMeta(path=b"pg_wal/" + OWN_POINT.encode(), kind="file", mode=0o600, uid=owner[0],
                        gid=owner[1], mtime_ns=time.time_ns(), size=0)


# Threads writing a local restore (several files at once, each in order): one per two cores, and
# at least two, so that a large file's writes (one thread at a time: a buffered write holds the
# file's inode lock) overlap the small files around it instead of queueing them. Where the
# kernel's copies into the page cache are slow, one writer was the restore's bottleneck (one core
# busy, the other two-thirds idle): two restored the standard corpus in 1.9-2.3 s against
# 2.9-3.2 s. More than that is not faster: each short system call hands the interpreter's lock
# over (docs/restore.md has the figures).
LOCAL_WRITERS = max(2, (os.cpu_count() or 2) // 2)


def write_local(records: Iterator[Record], target_path: str, nonce: str,
                cancelled: Callable[[], bool] | None = None,
                progress: Callable[[Progress], None] | None = None, lanes: LaneGauge | None = None) -> WriteStats:
    """Write a restore-db stream into the client's target directory (after check_claim); stop
    early (the directory stays incomplete, as a streamed restore cut short) once `cancelled()`.
    `progress` hears the files and bytes passed to the writer, at most every 0.2 s."""
    claim = check_claim(target_path, nonce)
    try:
        os.unlink(claim)  # the first write: a daemon that may not write there (a sandbox) stops here
    except OSError as exc:
        raise FailedPreconditionError(
            f"local write to '{target_path}' refused: the daemon cannot write there: {exc.strerror}") from None
    writer = ParallelTreeWriter(target_path, overwrite=False, workers=LOCAL_WRITERS, lanes=lanes)
    try:
        files = size = 0
        shown = 0.0
        last = ControlLast(writer)  # PG_CONTROL: only after all others are complete, and not if one failed
        for i, rec in enumerate(records):
            if not last.admit(rec):
                continue
            writer.apply(rec)
            if isinstance(rec, (Data, LaneData)):
                size += len(rec.data)
            elif isinstance(rec, EntryMeta) and rec.kind == "file":
                files += 1
            if progress is not None and time.monotonic() - shown >= 0.2:
                shown = time.monotonic()
                progress(Progress("restore", files, 0, size, 0))
            if cancelled is not None and i % 256 == 255 and cancelled():
                # as a failure: finish() would complete the open file (zeros to its size, the
                # set's mode and mtime), and a later `--delta --quick` would take it as whole
                writer.abort()
                writer.stats.errors.append("the client went away: the restore is incomplete")
                return writer.stats
    except BaseException:
        writer.abort()  # no file whose content did not all arrive stays behind looking complete
        raise
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()
    return writer.finish()
