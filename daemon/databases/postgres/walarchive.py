"""WAL archive health and continuity: what `cairn status` and `cairn verify` say about WAL.

- `ArchiveHealth` counts the daemon's WAL pushes (stored, refused or failed) and remembers the
  newest segment and the last failure; `snapshot(repo)` adds what the repository holds.
- `server_archiver(conn)` reads pg_stat_archiver and the server's current segment (the lag
  in segments between what the server writes and what reached the archive). A server that has
  archived nothing yet says so (`nothing_archived`) rather than a lag it cannot know: its lag
  counts only the segments its archiver tried and failed, from the failed one on. A server in
  recovery (a standby) writes no WAL of its own: no current segment, lag 0.
- `database_archiver(db)` adds the server's archive settings (archive_mode, archive_command,
  archive_library) and when the oldest WAL file waiting in its archive_status directory became
  ready (`oldest_ready`) for status and the daemon's archiver sampler (archwatch.py), bounded by
  a connect and a statement timeout.
- `oldest_ready(conn)` reads that time with pg_ls_archive_statusdir() (PostgreSQL 12 on,
  superuser or pg_monitor), as the file's age on the server's clock, so the hosts' clocks need
  not agree; where the function is absent or not permitted it says why instead, and the
  backlog is then timed by the daemon's own looks (archwatch.PendingClock).
- `continuity_problems(repo, sets)` checks, for each set holding a database, that WAL is
  archived without gaps on the set's timeline from its first segment onward, and on each
  later timeline that branched off it (from its switch point, per the timeline's .history
  file); a gap inside a set's own range (first..last) means the set cannot be restored, a later
  one only that point-in-time recovery past it is lost. Each problem names the sets it hurts in
  that way (a gap hurting some sets fatally and others only for recovery past it is two problems).
- `database_records(extra)` lists what a set records per database (`extra['databases']`, or
  the single `extra['database']` of older sets).
- `wait_for_wal(repo, records, timeouts, cancel)` waits until the repository holds every
  segment of each record's range (first..last, the segment holding the stop LSN): a set is
  committed only after that, so no set is ever visible without the WAL it needs. Past the
  bound it raises DeadlineError naming the first missing segment.

- `check_complete_segment`: a pushed segment is a whole one (not empty, and as long as its own
  header says), so a truncated copy never takes the name of the segment recovery needs.
- `push_namespace` / `fetch_wal` / `write_wal_into`: each cluster's WAL is archived in its own
  repository name space, its system identifier (read from a segment's page header, or given by the client for
  history and backup files); a fetch falls back to the flat name space of older archives, but
  never to a segment another server wrote.

What always holds: names are compared as (timeline, segment number) with the segment size
each set recorded, within the record's name space (its system identifier) and the flat one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cairn import walnames
from cairn.store.errors import (
    AbortedError,
    CairnError,
    CorruptionError,
    DeadlineError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from cairn.store.model import BackupSet, CheckProblem

SEGMENT_RE, HISTORY_RE = walnames.SEGMENT_RE, walnames.HISTORY_RE  # WAL names: cairn.walnames
DEFAULT_SEGMENT_SIZE = walnames.DEFAULT_SEGMENT_SIZE
parse_segment, segment_name = walnames.parse_segment, walnames.segment_name
MAX_GAPS_REPORTED = 20


@dataclass
class ArchiveSnapshot:
    """Archiving health as status shows it."""

    last_segment: str = ""
    last_time: float = 0.0
    pushed: int = 0
    failures: int = 0
    last_failure: str = ""
    last_failure_time: float = 0.0
    segments: int = 0
    databases: list[DatabaseArchive] = field(default_factory=list)
    namespaces: int = 0  # WAL name spaces (clusters) in the repository, the flat one not counted


@dataclass
class DatabaseArchive:
    """One configured server's archiver as status shows it (pg_stat_archiver, server_archiver())."""

    name: str
    error: str = ""  # set when the server could not be asked
    current_segment: str = ""
    last_archived: str = ""
    last_archived_time: float = 0.0
    failed_count: int = 0
    last_failed: str = ""
    last_failed_time: float = 0.0
    lag_segments: int = 0  # finished segments not archived yet
    system_id: str = ""  # the server's WAL name space in the repository
    namespace_segments: int = 0  # WAL segments in that name space
    nothing_archived: bool = False  # pg_stat_archiver names no archived segment (since its statistics began)
    in_recovery: bool = False  # a standby: it writes no WAL of its own, nothing of its own waits
    archive_mode: str = ""  # the server's archive_mode (off, on, always); "" when not read
    archive_command: str = ""
    archive_library: str = ""  # set, it archives through a module, not archive_command
    archive_foreign: bool = False  # archive_command does not archive into this repository (archwatch.calls_cairn)
    archive_elsewhere: str = ""  # the other daemon archive_command's wal-push reaches (archwatch.elsewhere); "" if none
    pending_since: float = 0.0  # when the oldest segment waiting for the archive was seen finished (0: none)
    ready_since: float = 0.0  # when the oldest file in the server's archive_status became ready (0: none, or unlisted)
    ready_unlisted: str = ""  # why the server's archive_status could not be listed (oldest_ready); "" when it could

    @property
    def archiving_on(self) -> bool:
        """archive_mode lets the server archive (on, or always)."""
        return self.archive_mode in ("on", "always")


class ArchiveHealth:
    """Counts of WAL pushes seen by this daemon (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_segment = ""
        self._last_time = 0.0
        self._pushed = 0
        self._failures = 0
        self._last_failure = ""
        self._last_failure_time = 0.0

    def stored(self, name: str) -> None:
        """A push of `name` was stored. The last segment is the one stored last, not the greatest
        name: names do not order across timelines (a restored copy archiving timeline 2 beside
        the original on 1) or across the clusters sharing a repository."""
        with self._lock:
            self._pushed += 1
            if SEGMENT_RE.match(name):
                self._last_segment, self._last_time = name, time.time()

    def failed(self, name: str, message: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_failure = f"{name}: {message}"
            self._last_failure_time = time.time()

    def snapshot(self, wal_names: list[str]) -> ArchiveSnapshot:
        segs = [n for n in wal_names if SEGMENT_RE.match(n)]
        newest = max(segs, default="")
        with self._lock:
            last, when = self._last_segment, self._last_time
            if not last:
                last, when = newest, 0.0  # archived before this daemon started
            return ArchiveSnapshot(last_segment=last, last_time=when, pushed=self._pushed,
                                   failures=self._failures, last_failure=self._last_failure,
                                   last_failure_time=self._last_failure_time, segments=len(segs))


STATEMENT_TIMEOUT_MS = 5000  # a server that takes a connection but does not answer holds status this long


def database_archiver(db: Any, connect_timeout: int = 2) -> DatabaseArchive:
    """server_archiver() and the archive settings of a configured database, or its `error` when
    it cannot be asked."""
    from cairn.daemon.databases.postgres.connection import PgConnection  # psycopg2 only when a database is configured

    try:
        with PgConnection.open(db.dsn, name=db.name, connect_timeout=connect_timeout, check_rights=False,
                               require_archiving=False) as conn:
            conn.query(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            out = server_archiver(conn)
            out.update(archive_settings(conn))
            out.update(oldest_ready(conn))
            try:
                out["system_id"] = walnames.namespace_of(
                    conn.query_one("SELECT system_identifier FROM pg_control_system()")[0])
            except CairnError:
                pass  # status then shows no name space for it
            return DatabaseArchive(name=db.name, **out)
    except CairnError as exc:
        return DatabaseArchive(name=db.name, error=exc.message)


def database_records(extra: Any) -> list[dict[str, Any]]:
    """Every physical database record of a set (base backup + WAL), in capture order; dumps
    (daemon/databases/dump.py) need no WAL and are left out."""
    from cairn.daemon.databases.engine import KIND_POSTGRES, record_dicts

    return [r for r in record_dicts(extra) if (r.get("kind") or KIND_POSTGRES) == KIND_POSTGRES]


def segments_needed(rec: dict[str, Any]) -> list[str]:
    """The segment names from a database record's first WAL segment to its last (inclusive)."""
    size = int(rec.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
    wal = rec.get("wal") or {}
    first, last = parse_segment(str(wal.get("first", "")), size), parse_segment(str(wal.get("last", "")), size)
    if first is None or last is None or first[0] != last[0] or last[1] < first[1]:
        return [str(n) for n in (wal.get("first"), wal.get("last")) if n]
    return [segment_name(first[0], n, size) for n in range(first[1], last[1] + 1)]


def missing_segments(names: set[str], recs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """(record, segment) for every needed segment that is not among `names`."""
    return [(rec, seg) for rec in recs for seg in segments_needed(rec) if seg not in names]


def _by_namespace(recs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in recs:
        out.setdefault(record_namespace(rec), []).append(rec)
    return out


WAL_POLL = 0.05
WAL_POLL_MAX = 0.5


def wait_for_wal(repo: Any, recs: list[dict[str, Any]], timeouts: dict[str, float],
                 cancel: threading.Event | None = None, diagnose: Any = None) -> float:
    """Block until `repo` holds every segment `recs` need; return the seconds waited.

    `timeouts` maps a database name to its bound (wal_timeout); `diagnose(name)` may return a
    short text about the server's archiver for the error message."""
    start = time.monotonic()
    delay = WAL_POLL
    while True:
        missing = [m for ns, group in _by_namespace(recs).items()
                   for m in missing_segments(set(repo.list_wal(ns)), group)]
        if not missing:
            return time.monotonic() - start
        rec, seg = missing[0]
        name = str(rec.get("name", "?"))
        waited = time.monotonic() - start
        bound = timeouts.get(name, 600.0)
        if waited >= bound:
            why = ""
            if diagnose is not None:
                try:
                    why = diagnose(name) or ""
                except Exception:  # noqa: BLE001 - the diagnosis is a courtesy
                    why = ""
            raise DeadlineError(
                f"WAL segment {seg} of database '{name}' did not reach the archive within {bound:g}s "
                f"(the set needs every segment up to its stop LSN {rec.get('stop_lsn', '?')}); the set is "
                f"not committed: check that archive_command runs 'cairn wal-push %p'{'; ' + why if why else ''}")
        pause = min(delay, max(0.0, bound - waited))
        if cancel is not None:
            if cancel.wait(pause):
                raise AbortedError(f"backup cancelled while waiting for WAL segment {seg} of database '{name}'")
        else:
            time.sleep(pause)
        delay = min(WAL_POLL_MAX, delay * 1.5)


def wal_system_identifier(data: bytes) -> int | None:
    """The system identifier in a WAL segment's first (long) page header; None if it has none."""
    return walnames.segment_system_identifier(data)


def record_namespace(rec: dict[str, Any]) -> str:
    """The repository WAL name space of a database record: its cluster's system identifier."""
    try:
        return walnames.namespace_of(rec.get("system_identifier"))
    except CairnError:
        return ""


def _is_segment_file(name: str) -> bool:
    return bool(SEGMENT_RE.match(name) or (name.endswith(".partial") and SEGMENT_RE.match(name[:-8])))


def newest_archived(repo: Any, namespace: str) -> tuple[str, float] | None:
    """(name, time) of the WAL segment stored last in `namespace` (or the flat name space older
    archives used), by the store's own modification times; None when it holds none."""
    newest: tuple[str, float] | None = None
    for info in repo.backend.list_info("wal"):
        space, _, name = info.name.rpartition("@")
        if space in (namespace, "") and _is_segment_file(name) and (newest is None or info.time > newest[1]):
            newest = (name, info.time)
    return newest


# What a refused push of a WAL file archived with other content means for the server (the store's
# message says what was refused): the archived copy stays, and the archiver does not move on.
OTHER_CONTENT_HINT = ("the archived copy is kept; PostgreSQL retries this file, holding it and every later one in "
                      "pg_wal, until it archives: two servers with one system identifier on one timeline (a data "
                      "directory copied and started apart) must not archive into one repository")


def push_namespace(name: str, data: bytes, namespace: str = "") -> str:
    """The name space a pushed WAL file goes to: the system identifier in a segment's page
    header (it must agree with `namespace` when both are given), else `namespace` (history and
    backup files carry no header: the client names it), else "" (the flat name space)."""
    namespace = walnames.namespace_of(namespace) if namespace else ""
    found = wal_system_identifier(data) if _is_segment_file(name) else None
    if found is None:
        return namespace
    if namespace and str(found) != namespace:
        raise InvalidArgumentError(
            f"WAL segment {name} was written by the server with system identifier {found}, "
            f"not {namespace}: check the --system-id of this archive_command")
    return str(found)


def check_complete_segment(name: str, data: bytes) -> None:
    """Refuse a segment (or `.partial`, the whole segment file too) that is empty, or shorter or
    longer than the segment size its own long page header gives: stored under the segment's name
    it would break every recovery that reads it, and the complete segment, different content
    under that name, could then never be archived. Content without a WAL header is not judged."""
    if not _is_segment_file(name):
        return
    if not data:
        raise InvalidArgumentError(f"WAL segment {name} is empty: it is not archived (push the complete segment)")
    if wal_system_identifier(data) is None:
        return
    size = int.from_bytes(data[32:36], "little")  # xlp_seg_size (cairn.walnames: the header's layout)
    if len(data) != size:
        raise InvalidArgumentError(
            f"WAL segment {name} holds {len(data)} bytes, but its header gives the segment size {size}: "
            "a truncated copy is not archived (push the complete segment)")
    why = walnames.segment_header_mismatch(name, data)
    if why is not None:
        raise InvalidArgumentError(f"WAL segment {name} is not archived: {why} (push the file under its own name)")


def fetch_wal(repo: Any, name: str, namespace: str = "") -> bytes:
    """WAL file `name` of `namespace` (a flat entry when the name space lacks it, unless that
    entry is a segment another server wrote: then NotFoundError, as for a missing file)."""
    found, data = repo.get_wal_entry(name, namespace)
    if namespace and not found and _is_segment_file(name):
        _refuse_foreign(name, namespace, data)
    _refuse_misfiled(name, found, data)
    return data


HEADER_BYTES = 8192  # more than a long page header, which names the server that wrote the segment


def write_wal_into(repo: Any, name: str, namespace: str, fd: int) -> int:
    """Write WAL file `name` of `namespace` to `fd` from its start (found as `fetch_wal` finds
    it, with the same refusal of another server's flat segment, decided before any byte is
    written); returns the bytes written. Chunk by chunk: no copy of the whole file is held. The
    content is checked after the last chunk; on any error the file is cut back to empty, so it
    never holds part of a segment."""
    found, pieces = repo.stream_wal_entry(name, namespace)
    written = 0
    foreign = bool(namespace and not found and _is_segment_file(name))

    def judge(first: bytes) -> None:  # before its first byte is written
        if foreign:
            _refuse_foreign(name, namespace, first)
        _refuse_misfiled(name, found, first)

    try:
        head = b""
        checked = not _is_segment_file(name)
        for piece in pieces:
            if not checked:  # the first page header names the server and the segment (enough bytes of it first)
                head += piece
                if len(head) < HEADER_BYTES:
                    continue
                piece, head, checked = head, b"", True
                judge(piece)
            written += _write_at(fd, piece, written)
        if head:
            judge(head)
            written += _write_at(fd, head, written)
        os.ftruncate(fd, written)  # a claim longer than the content leaves nothing behind
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        raise
    return written


def _refuse_foreign(name: str, namespace: str, data: bytes) -> None:
    owner = wal_system_identifier(data)
    if owner is not None and str(owner) != namespace:
        raise NotFoundError(f"WAL file '{namespace}/{name}' is not in the archive (the flat entry of that "
                            f"name belongs to system {owner})")


def _refuse_misfiled(name: str, found: str, data: bytes) -> None:
    """A catalog entry whose content is another segment than its name (a damaged or swapped
    entry in a repository whose entries are not bound to their names) is damage, refused
    before recovery reads it: recovery would take the wrong page for the end of WAL."""
    why = walnames.segment_header_mismatch(name, data) if _is_segment_file(name) else None
    if why is not None:
        where = f"{found}/{name}" if found else name
        raise CorruptionError(f"unable to read WAL file '{where}': {why}",
                              hint="run 'cairn verify --read-data' to find every such entry, then 'cairn repair wal'")


def _write_at(fd: int, data: bytes, offset: int) -> int:
    view, done = memoryview(data), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def check_wal_owner(repo: Any, rec: dict[str, Any]) -> None:
    """Refuse a set whose first or last WAL segment, as a restore would fetch it, was written by
    another server. Each cluster archives into its own name space (its system identifier), so
    this holds by construction; it can fire only for a segment of an older flat archive, or for
    a name space holding another cluster's segment. Raises FailedPreconditionError naming both."""
    if getattr(repo, "write_only", False):
        return  # it reads no WAL; segments in a name space were checked against their header when pushed
    wal = rec.get("wal") or {}
    want = str(rec.get("system_identifier", ""))
    namespace = record_namespace(rec)
    for name in dict.fromkeys(str(n) for n in (wal.get("last"), wal.get("first")) if n):
        try:
            found = wal_system_identifier(repo.get_wal(name, namespace))
        except NotFoundError:
            continue  # wait_for_wal found it in the name space; a concurrent retention is not ours to judge
        if found is not None and want and str(found) != want:
            raise FailedPreconditionError(
                f"WAL segment {name} in the repository belongs to another server (system identifier {found}, "
                f"database '{rec.get('name', '?')}' is {want}); the set is not committed")


def archive_settings(conn: Any) -> dict[str, str]:
    """The server's archive_mode, archive_command and archive_library (PostgreSQL 15 on; "" before)."""
    mode, command, library = conn.query_one(
        "SELECT current_setting('archive_mode'), current_setting('archive_command'), "
        "coalesce(current_setting('archive_library', true), '')")
    return {"archive_mode": str(mode), "archive_command": str(command), "archive_library": str(library)}


STATUS_DIR_FUNCTION = "pg_catalog.pg_ls_archive_statusdir()"


def oldest_ready(conn: Any) -> dict[str, Any]:
    """When the oldest WAL file waiting for the archive became ready, from the server's own
    archive_status directory: `ready_since` (this host's clock; 0.0 when nothing is ready), or
    `ready_unlisted`, why the directory cannot be listed (see the module docstring). A `.ready`
    file is made when its segment is finished and renamed to `.done` once it is archived, so
    its modification time is when the segment began to wait, whenever the daemon first looked."""
    try:
        usable, role, ident = conn.query_one(
            f"SELECT CASE WHEN to_regprocedure('{STATUS_DIR_FUNCTION}') IS NULL THEN NULL "
            f"ELSE has_function_privilege('{STATUS_DIR_FUNCTION}', 'EXECUTE') END, "
            "current_user, quote_ident(current_user)")
        if usable is None:
            return {"ready_unlisted": "the server has no pg_ls_archive_statusdir() (it came with PostgreSQL 12)"}
        if not usable:
            return {"ready_unlisted": f"role '{role}' may not run pg_ls_archive_statusdir() "
                                      f"(GRANT pg_monitor TO {ident})"}
        (age,) = conn.query_one(
            "SELECT extract(epoch FROM now() - min(modification))::float8 "
            f"FROM {STATUS_DIR_FUNCTION} WHERE right(name, 6) = '.ready'")
    except CairnError as exc:
        return {"ready_unlisted": f"unable to list the server's archive_status directory: {exc.message}"}
    return {"ready_since": 0.0 if age is None else time.time() - max(0.0, float(age))}


def server_archiver(conn: Any) -> dict[str, Any]:
    """pg_stat_archiver of a server and its current segment; `conn` is a PgConnection. A server
    in recovery has no current segment of its own (pg_current_wal_lsn() is refused there): its
    lag is 0 and `in_recovery` says why. The current segment is the one the next record goes
    to: right after a switch, the next segment. pg_walfile_name() of a position on a segment
    boundary names the segment before it (the one the switch finished), so it is asked one byte
    further; else an idle server's unarchived last segment would not count as waiting."""
    row = conn.query_one(
        "SELECT CASE WHEN pg_is_in_recovery() THEN '' "
        "ELSE pg_walfile_name(pg_current_wal_lsn() + 1) END, "
        "coalesce(last_archived_wal, ''), "
        "coalesce(extract(epoch FROM last_archived_time), 0)::float8, failed_count, "
        "coalesce(last_failed_wal, ''), coalesce(extract(epoch FROM last_failed_time), 0)::float8, "
        "pg_is_in_recovery() FROM pg_stat_archiver")
    current, archived, archived_time, failed, last_failed, failed_time, in_recovery = row
    lag = 0
    cur, arc = parse_segment(current), parse_segment(archived)
    if cur is not None and arc is not None and cur[0] == arc[0]:
        lag = max(0, cur[1] - arc[1] - 1)  # the current segment is still being written
    elif cur is not None and not archived:
        # Nothing archived: what waits is known only once the archiver tried a segment and failed
        # (it takes them in order, so from that one up to the current one); until then there is
        # no lag to tell, and `nothing_archived` says why.
        tried = parse_segment(last_failed)
        if tried is not None and tried[0] == cur[0]:
            lag = max(0, cur[1] - tried[1])
    return {"current_segment": current, "last_archived": archived, "last_archived_time": float(archived_time),
            "failed_count": int(failed), "last_failed": last_failed, "last_failed_time": float(failed_time),
            "lag_segments": lag, "nothing_archived": not archived, "in_recovery": bool(in_recovery)}


def _switch_points(histories: dict[int, bytes]) -> dict[int, list[tuple[int, int]]]:
    """timeline -> [(ancestor timeline, LSN where the next timeline branched off it)], oldest first."""
    out: dict[int, list[tuple[int, int]]] = {}
    for tli, text in histories.items():
        steps = []
        for line in text.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit() and "/" in parts[1]:
                hi, lo = parts[1].split("/", 1)
                try:
                    steps.append((int(parts[0]), (int(hi, 16) << 32) | int(lo, 16)))
                except ValueError:
                    continue
        out[tli] = steps
    return out


def continuity_problems(repo: Any, sets: list[BackupSet]) -> list[CheckProblem]:
    """Gaps in archived WAL that sets depend on (see the module docstring). Each database's WAL
    is looked for in its cluster's name space and the flat one (what a restore fetches). A gap
    is reported once for the sets it makes unrestorable (inside their own range) and once for
    the sets that only lose point-in-time recovery past it, each naming its sets."""
    db_recs = [(s, rec) for s in sets for rec in database_records(s.extra)]
    if not db_recs:
        return []
    gaps: dict[tuple[str, int, int], _Gap] = {}
    by_space: dict[str, list[tuple[BackupSet, dict[str, Any]]]] = {}
    for s, rec in db_recs:
        by_space.setdefault(record_namespace(rec), []).append((s, rec))
    for namespace, group in sorted(by_space.items()):
        _namespace_gaps(repo, namespace, group, gaps)
    out = []
    for (namespace, t, start), gap in sorted(gaps.items()):
        where = f" of system {namespace}" if namespace else ""
        for fatal, ids in ((True, gap.fatal), (False, gap.pitr)):
            if ids:
                out.append(CheckProblem(message=_gap_message(t, start, gap.end, gap.size, fatal, where, ids),
                                        object_id=segment_name(t, start, gap.size), sets=tuple(ids)))
    return out[:MAX_GAPS_REPORTED]


@dataclass
class _Gap:
    """One run of missing segments, and the sets it hurts: `fatal` cannot be restored at all,
    `pitr` only lose point-in-time recovery past it."""

    end: int
    size: int
    fatal: list[str] = field(default_factory=list)
    pitr: list[str] = field(default_factory=list)


def _namespace_gaps(repo: Any, namespace: str, db_recs: list[tuple[BackupSet, dict[str, Any]]],
                    gaps: dict[tuple[str, int, int], _Gap]) -> None:
    names = repo.list_wal(namespace)
    histories: dict[int, bytes] = {}
    for n in names:
        m = HISTORY_RE.match(n)
        if m:
            try:
                histories[int(m.group(1), 16)] = repo.get_wal(n, namespace)
            except Exception:  # noqa: BLE001 - an unreadable history file is reported by the data check
                continue
    switches = _switch_points(histories)
    for s, rec in db_recs:
        size = int(rec.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
        have = _segments_by_timeline(names, size)
        first = parse_segment(str(rec.get("wal", {}).get("first", "")), size)
        last = parse_segment(str(rec.get("wal", {}).get("last", "")), size)
        if first is None:
            continue
        tli = first[0]
        ranges = [(tli, first[1])]
        for later, steps in switches.items():
            for ancestor, lsn in steps:
                # `later` descends from the set's timeline when it branched off it after the set began
                if ancestor == tli and lsn // size >= first[1]:
                    ranges.append((later, lsn // size))
        for t, start in ranges:
            segs = have.get(t, set())
            top = max(segs, default=start - 1)
            if last is not None and t == last[0]:
                top = max(top, last[1])
            gap_start = None
            for segno in range(start, top + 2):
                missing = segno <= top and segno not in segs
                if missing and gap_start is None:
                    gap_start = segno
                elif not missing and gap_start is not None:
                    # fatal only for a set whose own range (first..last) the gap cuts
                    fatal = last is not None and t == last[0] and gap_start <= last[1]
                    gap = gaps.setdefault((namespace, t, gap_start), _Gap(end=segno - 1, size=size))
                    ids = gap.fatal if fatal else gap.pitr
                    if s.id not in gap.fatal + gap.pitr:
                        ids.append(s.id)
                    gap_start = None


def _segments_by_timeline(names: list[str], size: int) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for n in names:
        p = parse_segment(n, size)
        if p is not None:
            out.setdefault(p[0], set()).add(p[1])
    return out


SETS_NAMED = 5  # sets a gap message names; more are counted (every id is in the problem's `sets`)


def _gap_message(tli: int, first: int, last: int, size: int, fatal: bool, where: str = "",
                 set_ids: list[str] | None = None) -> str:
    what = segment_name(tli, first, size)
    if last > first:
        what += f" .. {segment_name(tli, last, size)} ({last - first + 1} segments)"
    ids = set_ids or []
    named = ", ".join(i[:12] for i in ids[:SETS_NAMED]) + (f" and {len(ids) - SETS_NAMED} more"
                                                           if len(ids) > SETS_NAMED else "")
    if fatal:
        effect = f"set {named} cannot be restored" if len(ids) == 1 else f"sets {named} cannot be restored"
    else:
        effect = (f"{'set' if len(ids) == 1 else 'sets'} {named}: point-in-time recovery past the gap is "
                  "impossible (restoring to the set's own point still works)")
    return f"WAL is not continuous on timeline {tli}: {what} missing from the archive{where}; {effect}"
