"""How the client shows API messages: tables and lines for people, plain dicts for --json.

Paths arrive as bytes; people see them decoded as UTF-8 with undecodable bytes and control
characters escaped as `ls -b` does (\\xNN, \\n, \\t; a backslash itself as \\\\), so one
listed line is one name and no two names look alike. JSON carries them as os.fsdecode
strings, which round-trip to the same bytes.
Times are local, "YYYY-MM-DD HH:MM:SS".
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from typing import Any

from cairn.fsio.names import shown
from cairn.proto.cairn.v1 import cairn_pb2 as pb

SHORT_ID = 12


def show_path(path: bytes) -> str:
    """A path for people: UTF-8; undecodable bytes as \\xNN, control characters escaped
    (\\n, \\t, \\r, \\xNN) and a backslash doubled, so that every name is one unambiguous line."""
    return shown(path)


def json_path(path: bytes) -> str:
    return os.fsdecode(path)


def short_id(set_id: str) -> str:
    return set_id[:SHORT_ID]


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


FIRST_TIME = -62135596800.0  # 0001-01-01T00:00:00Z
LAST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z


def fmt_time(epoch: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Local time of an epoch for people; '-' for 0 and '?' for one no clock can show (nan, inf,
    outside the years 1..9999)."""
    if not epoch:
        return "-"
    if not FIRST_TIME <= epoch <= LAST_TIME:  # nan fails every comparison
        return "?"
    try:
        return time.strftime(fmt, time.localtime(epoch))
    except (OverflowError, ValueError, OSError):
        return "?"


def fmt_age(seconds: float) -> str:
    """A duration for people ('42s', '5m', '3h', '12d'); '?' for one measured from a time no clock
    can show (nan, inf, more than 3,000 years)."""
    if not abs(seconds) < 1e11:  # nan fails the comparison
        return "?"
    seconds = int(max(0, seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 file', '2 files', '0 files' (`many` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


SHOWN_ENTRY_PROBLEMS = 20  # entries a restore could not write, named one per line; the rest counted


def restore_problem_lines(problems: list[str], shown: int = SHOWN_ENTRY_PROBLEMS) -> list[str]:
    """The warnings a restore prints for `problems`: every problem that is not about one entry
    (such as pg_control withheld), and the first `shown` entries that could not be restored;
    the rest in one line, counted by their reason. A full file system fails every entry after
    it, and thousands of lines would bury what matters (--json still lists every one)."""
    entry = [p for p in problems if p.startswith("unable to restore '")]
    other = [p for p in problems if not p.startswith("unable to restore '")]
    rest = entry[shown:]
    if not rest:
        return entry + other
    reasons: dict[str, int] = {}
    for p in rest:
        reason = p.rsplit(": ", 1)[-1]
        reasons[reason] = reasons.get(reason, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    said = ", ".join(f"{reason} ({n})" for reason, n in top[:3]) + (", ..." if len(top) > 3 else "")
    counted = f"{plural(len(rest), 'more entry', 'more entries')} could not be restored: {said} " \
              "(--json lists every one)"
    return entry[:shown] + [counted] + other


def restore_problem_hint(problems: list[str], delta: bool = False) -> str | None:
    """What to do after a restore that could not write some entries because the target's file
    system is full (or over quota): make room, then let a delta finish it."""
    if not any(p.endswith(("No space left on device", "Disk quota exceeded")) for p in problems):
        return None
    how = "run the same delta again" if delta else "run the same restore again with --delta"
    return f"make room on the target's file system, then {how}: it writes only what is missing"


def fmt_duration(seconds: float) -> str:
    """A configured duration for people: 300 -> '5m', 90 -> '90s', 7200 -> '2h'."""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


# ---- sets ----


def changed(s: pb.SetInfo) -> int:
    return s.stats.added + s.stats.modified + s.stats.deleted


def set_extra(s: pb.SetInfo) -> dict[str, Any]:
    """A set's extra metadata (errors, notes, databases, ...); empty when absent or malformed."""
    try:
        extra = json.loads(s.extra_json) if s.extra_json else {}
    except ValueError:
        return {}
    return extra if isinstance(extra, dict) else {}


def set_dict(s: pb.SetInfo) -> dict[str, Any]:
    st = s.stats
    extra = set_extra(s)
    return {
        "id": s.id,
        "source": s.source,
        "level": s.level,
        "requested_level": s.requested_level,
        "base": s.base or None,
        "time_start": s.time_start,
        "time_end": s.time_end,
        "hostname": s.hostname,
        "paths": [json_path(p) for p in s.paths],
        "tags": list(s.tags),
        "note": s.note,
        "status": s.status,
        "stats": {
            "files": st.files,
            "dirs": st.dirs,
            "bytes_total": st.bytes_total,
            "added": st.added,
            "modified": st.modified,
            "deleted": st.deleted,
            "bytes_read": st.bytes_read,
            "bytes_added": st.bytes_added,
            "chunks_added": st.chunks_added,
            "fuzzy": st.fuzzy,
            "files_walked": st.files_walked if st.HasField("files_walked") else None,
        },
        "fuzzy_paths": [json_path(p) for p in s.fuzzy_paths],
        "extra": extra,
    }


SET_COLUMNS = ("ID", "TIME", "END", "SOURCE", "LEVEL", "BASE", "HOST", "FILES", "SIZE", "CHANGED", "ADDED", "STATUS",
               "DATABASES", "TAGS")


def set_databases(s: pb.SetInfo) -> list[str]:
    """Names of the databases a set holds (restorable one by one with restore-db)."""
    extra = set_extra(s)
    recs = extra.get("databases")
    if not isinstance(recs, list):
        recs = [extra["database"]] if isinstance(extra.get("database"), dict) else []
    return [str(r["name"]) for r in recs if isinstance(r, dict) and r.get("name")]


def set_row(s: pb.SetInfo, known: set[str] | None = None, damaged: frozenset[str] | set[str] = frozenset()
            ) -> tuple[str, ...]:
    """One row of `cairn sets`; a base among the `damaged` (unreadable) set ids is shown as damaged,
    one not among `known` set ids otherwise as pruned."""
    base = "-"
    if s.base:
        base = short_id(s.base)
        if s.base in damaged:
            base += " (damaged)"
        elif known is not None and s.base not in known:
            base += " (pruned)"
    return (
        short_id(s.id),
        fmt_time(s.time_start),
        fmt_time(s.time_end, "%H:%M:%S"),
        s.source,
        s.level,
        base,
        s.hostname or "-",
        str(s.stats.files),
        human_bytes(s.stats.bytes_total),
        str(changed(s)),
        human_bytes(s.stats.bytes_added),
        s.status,
        ",".join(set_databases(s)) or "-",
        ",".join(s.tags) or "-",
    )


def table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns separated by two spaces."""
    rows = list(rows)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return lines


class Columns:
    """Rows printed as they come, in left-aligned columns separated by two spaces, as `table`
    without its header: each column is as wide as the widest cell seen so far (at least its
    header), so a listing printed in batches is aligned as one table when its first batch holds
    the widest cells, and a wider cell later only widens the lines after it. Holds no rows."""

    def __init__(self, header: tuple[str, ...]) -> None:
        self.widths = [len(h) for h in header]

    def lines(self, rows: Iterable[tuple[str, ...]]) -> list[str]:
        """The lines of one batch of rows (the widths grown to its widest cells first)."""
        rows = list(rows)
        for row in rows:
            for i, cell in enumerate(row):
                if len(cell) > self.widths[i]:
                    self.widths[i] = len(cell)
        return ["  ".join(cell.ljust(self.widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


class JsonArray:
    """A JSON array written element by element through `write` (text, no newline added): the
    same text `dumps` gives of the whole list, without holding it. `close()` ends it."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.count = 0

    def extend(self, items: Iterable[Any]) -> None:
        """Write `items` (a batch: one write) after those before."""
        pieces = []
        for item in items:
            text = "\n".join("  " + line for line in dumps(item).split("\n"))  # JSON escapes newlines in strings
            pieces.append(("[\n" if self.count == 0 else ",\n") + text)
            self.count += 1
        if pieces:
            self.write("".join(pieces))

    def close(self) -> None:
        self.write("\n]\n" if self.count else "[]\n")


class JsonObjectWithArray:
    """A JSON object written in whole lines through `out` (one call per batch, no newline at its
    end: `out` adds it, as the client's `out` does): the `head` keys, then `key` as an array
    whose elements come in batches (`extend`), then the keys `close(tail)` is given. Together
    the lines are the text `dumps` gives of the whole object; only the last element is held
    (its comma depends on whether another comes)."""

    _MARK = "\x00items\x00"

    def __init__(self, out: Callable[[str], None], head: dict[str, Any], key: str) -> None:
        self.out, self.head, self.key = out, head, key
        self.count = 0
        self._held: str | None = None

    def _parts(self, tail: dict[str, Any]) -> tuple[str, str]:
        """The text before the array's first element and after its last (no newline at either end)."""
        text = dumps({**self.head, self.key: [self._MARK], **tail})
        i = text.index(json.dumps(self._MARK))
        return text[:i].rstrip(" ").removesuffix("\n"), text[i + len(json.dumps(self._MARK)):].removeprefix("\n")

    def extend(self, items: Iterable[Any]) -> None:
        lines = []
        for item in items:
            text = "\n".join("    " + line for line in dumps(item).split("\n"))  # JSON escapes newlines in strings
            if self.count == 0:
                lines.append(self._parts({})[0])
            elif self._held is not None:
                lines.append(self._held + ",")
            self._held = text
            self.count += 1
        if lines:
            self.out("\n".join(lines))

    def close(self, tail: dict[str, Any]) -> None:
        if self.count == 0:
            self.out(dumps({**self.head, self.key: [], **tail}))
            return
        self.out(f"{self._held}\n{self._parts(tail)[1]}")
        self._held = None


class JsonObjectWithArrays:
    """A JSON object written in whole lines through `out` (one call per batch, no newline at its
    end: `out` adds it): the `head` keys, then each of `keys` as an array whose elements come
    in batches (`extend(key, items)`, the keys in their order; a key never extended is an
    empty array). Together the lines are the text `dumps` gives of the whole object; only the
    last element is held (its comma depends on whether another comes)."""

    def __init__(self, out: Callable[[str], None], head: dict[str, Any], keys: Iterable[str]) -> None:
        self.out, self.head, self.keys = out, head, list(keys)
        self._next = -1  # the first key not finished yet (-1: nothing written)
        self._open = -1  # the key whose array is open ("[" written)
        self._held: str | None = None

    def _finish_to(self, i: int, lines: list[str]) -> None:
        """Write what comes before key `i`'s array: the head, and the arrays of the keys before it."""
        if self._next < 0:
            head = dumps(self.head).split("\n")[:-1] if self.head else ["{"]
            if self.head:
                head[-1] += ","
            lines += head
            self._next = 0
        for j in range(self._next, i):
            comma = "," if j < len(self.keys) - 1 else ""
            if j == self._open:
                lines += [self._held or "", "  ]" + comma]
                self._held = None
            else:
                lines.append(f"  {json.dumps(self.keys[j])}: []{comma}")
        self._next = max(self._next, i)

    def extend(self, key: str, items: Iterable[Any]) -> None:
        i = self.keys.index(key)
        lines: list[str] = []
        for item in items:
            if i < self._next:
                raise ValueError(f"the array of '{key}' is written already")
            text = "\n".join("    " + line for line in dumps(item).split("\n"))  # JSON escapes newlines in strings
            if self._open != i:
                self._finish_to(i, lines)
                lines.append(f"  {json.dumps(key)}: [")
                self._open = i
            elif self._held is not None:
                lines.append(self._held + ",")
            self._held = text
        if lines:
            self.out("\n".join(lines))

    def close(self) -> None:
        lines: list[str] = []
        self._finish_to(len(self.keys), lines)
        self.out("\n".join([*lines, "}"]))


def set_summary(s: pb.SetInfo) -> str:
    """One line about a finished set."""
    base = f", base {short_id(s.base)}" if s.base else ""
    took = max(0.0, s.time_end - s.time_start)
    return (
        f"{s.level} set of source '{s.source}'{base} done in {took:.1f}s: "
        f"{s.stats.added} added, {s.stats.modified} modified, {s.stats.deleted} deleted; "
        f"{plural(s.stats.files, 'file')}, {human_bytes(s.stats.bytes_total)}, {human_bytes(s.stats.bytes_added)} new"
        f"{walked_read(s.stats)}"
    )


def walked_read(st: pb.SetStats) -> str:
    """What a set walked and read, apart from its totals; empty for sets that do not record it."""
    if not st.HasField("files_walked"):
        return ""
    return f"; walked {plural(st.files_walked, 'file')}, read {human_bytes(st.bytes_read)}"


# ---- trees ----

_KIND_CHAR = {"dir": "d", "symlink": "l", "fifo": "p", "chardev": "c", "blockdev": "b", "socket": "s"}


def mode_string(kind: str, mode: int) -> str:
    """'drwxr-xr-x' style, from the entry kind and its permission bits."""
    return _KIND_CHAR.get(kind, "-") + stat.filemode(stat.S_IFREG | (mode & 0o7777))[1:]


def mtime_of(e: pb.TreeEntry) -> int:
    """An entry's mtime in ns (cairn.proto.wire, imported on first use: most commands list no entries)."""
    from cairn.proto.wire import mtime_of as of

    return of(e)


def entry_dict(e: pb.TreeEntry) -> dict[str, Any]:
    return {
        "path": json_path(e.path),
        "name": json_path(e.name),
        "kind": e.kind,
        "mode": e.mode & 0o7777,
        "uid": e.uid,
        "gid": e.gid,
        "mtime_ns": mtime_of(e),
        "size": e.size,
        "target": json_path(e.target) if e.target else None,
    }


def entry_row(e: pb.TreeEntry, full_path: bool) -> tuple[str, ...]:
    name = show_path(e.path if full_path else e.name)
    if e.kind == "dir":
        name += "/"
    if e.target:
        name += " -> " + show_path(e.target)
    mtime = fmt_time(mtime_of(e) / 1e9)
    return (mode_string(e.kind, e.mode), str(e.uid), str(e.gid), str(e.size), mtime, name)


# ---- status ----


def status_dict(reply: pb.StatusReply, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    d = reply.daemon
    return {
        "daemon": {
            "version": d.version,
            "pid": d.pid,
            "started": d.started,
            "repository": d.repository,
            "read_only": d.read_only,
            "config": d.config_path or None,
            "hostname": d.hostname,
            "warnings": list(d.warnings),
        },
        "sources": [
            {
                "name": s.name,
                "paths": [json_path(p) for p in s.paths],
                "configured": s.configured,
                "host": s.host or None,
                "watch": s.watch,
                "journal": s.journal,
                "journal_state": s.journal_state or None,
                "journal_reasons": list(s.journal_reasons),
                "oldest_unprotected_age": s.oldest_unprotected_age if s.HasField("oldest_unprotected_age") else None,
                "pending_paths": s.pending_paths,
                "watches": s.watches,
                "sets": s.sets,
                "last": {ls.level: set_dict(ls.set) for ls in s.last},
                "running": job_dict(s.running) if s.HasField("running") else None,
                "next_runs": {n.level: n.time for n in s.next_runs},
                **health_dict(s, now),
                **window_dict(s),
            }
            for s in reply.sources
        ],
        "archive": archive_dict(reply.archive) if reply.HasField("archive") else None,
        "retention": {
            "schedule": reply.retention.schedule,
            "host": reply.retention.host,
            "next_run": reply.retention.next_run,
            "last_run": reply.retention.last_run or None,
            "last_result": reply.retention.last_result or None,
        } if reply.HasField("retention") else None,
    }


def rpo_exceeded(s: pb.SourceStatus, now: float) -> bool | None:
    """Whether the source's RPO is not met now (None: it has no RPO). With no successful set it
    is not. Where the daemon follows the source's changes (`unprotected_tracked`) it is not met
    while a change no set holds has waited longer than the RPO: a quiet source whose last set is
    old loses nothing. Otherwise (no journal, an older daemon) the last success must be younger
    than the RPO."""
    if not s.rpo:
        return None
    if not s.last_success:
        return True
    if s.unprotected_tracked:
        return s.HasField("unprotected_since") and now - s.unprotected_since > s.rpo
    return now - s.last_success > s.rpo


def health_dict(s: pb.SourceStatus, now: float) -> dict[str, Any]:
    """A source's last success and failure and its RPO, for --json."""
    f = s.last_failure
    age = now - s.last_success if s.last_success else None
    return {
        "last_success": s.last_success or None,
        "last_success_age": age,
        "rpo": s.rpo or None,
        "rpo_exceeded": rpo_exceeded(s, now),
        "unprotected_since": s.unprotected_since if s.HasField("unprotected_since") else None,
        "last_failure": {"time": f.time, "level": f.level, "status": f.status, "message": f.message}
        if s.HasField("last_failure") else None,
        # the last failure is the source's latest word (kept for reference once a set succeeds)
        "failing": s.HasField("last_failure") and f.time > s.last_success,
    }


def window_dict(s: pb.SourceStatus) -> dict[str, Any]:
    """A source's quiesce window open now, and one this daemon thawed at start, for --json."""
    w, r = s.window, s.recovered_window
    return {
        "window": {"mode": w.mode, "state": w.state, "opened": w.opened, "frozen": w.frozen or None,
                   "deadline": w.deadline, "max_window": w.max_window, "levels": w.levels,
                   "levels_started": w.levels_started, "job": w.job or None, "level": w.level or None}
        if s.HasField("window") else None,
        "recovered_window": {"mode": r.mode, "opened": r.opened or None, "thawed": r.thawed,
                             "thaw_hooks": r.thaw_hooks, "message": r.message}
        if s.HasField("recovered_window") else None,
    }


WINDOW_STATES = {"freezing": "FREEZING (freeze hooks running)", "frozen": "FROZEN",
                 "thawing": "thawing (thaw hooks running)"}


def window_lines(s: pb.SourceStatus, now: float) -> list[str]:
    """The source's open quiesce window (what is frozen, since when, until when at the latest, for
    which set), and the window a previous daemon left open that this one thawed at start."""
    lines = []
    if s.HasField("window"):
        w = s.window
        text = (f"  window: {w.mode}, {WINDOW_STATES.get(w.state, w.state)} since {fmt_time(w.opened)} "
                f"({fmt_age(now - w.opened)} ago); thawed by {fmt_time(w.deadline)} at the latest "
                f"(in {fmt_age(w.deadline - now)}, max_window {fmt_duration(w.max_window)})")
        if w.levels > 1:
            text += f"; {w.levels_started} of {w.levels} freeze levels begun"
        if w.job:
            text += f"; for the {w.level} set of job {w.job}"
        lines.append(text)
    if s.HasField("recovered_window"):
        r = s.recovered_window
        mode = f"{r.mode} window" if r.mode in ("cold", "hot") else "window"
        since = f" (open since {fmt_time(r.opened)})" if r.opened else ""
        lines.append(f"  window: thawed at start {fmt_time(r.thawed)} ({fmt_age(now - r.thawed)} ago): the previous "
                     f"daemon left its {mode} open{since}; {plural(r.thaw_hooks, 'thaw hook')} ran")
    return lines


def health_lines(s: pb.SourceStatus, now: float) -> list[str]:
    """The last success against the RPO, and the last failure, of one source."""
    if s.last_success:
        text = f"  last success: {fmt_time(s.last_success)} ({fmt_age(now - s.last_success)} ago)"
    else:
        text = "  last success: none"
    exceeded = rpo_exceeded(s, now)
    if exceeded is not None:
        waited = (f": a change no set holds has waited {fmt_age(now - s.unprotected_since)}"
                  if s.unprotected_tracked and s.HasField("unprotected_since") and s.last_success else "")
        text += f"; RPO {fmt_duration(s.rpo)} EXCEEDED{waited}" if exceeded else f"; within RPO {fmt_duration(s.rpo)}"
    lines = [text]
    if s.HasField("last_failure"):
        f = s.last_failure
        newer = ", after the last success" if f.time > s.last_success else ""
        lines.append(f"  last failure: {fmt_time(f.time)} ({fmt_age(now - f.time)} ago{newer}), "
                     f"{f.level} {f.status}: {f.message}")
    return lines


def archive_dict(a: pb.ArchiveStatus) -> dict[str, Any]:
    """WAL archiving health for --json."""
    return {
        "last_segment": a.last_segment or None,
        "last_time": a.last_time or None,
        "pushed": a.pushed,
        "failures": a.failures,
        "last_failure": a.last_failure or None,
        "last_failure_time": a.last_failure_time or None,
        "segments": a.segments,
        "wal_namespaces": a.wal_namespaces,
        "databases": [
            {
                "name": d.name,
                "error": d.error or None,
                "current_segment": d.current_segment or None,
                "last_archived": d.last_archived or None,
                "last_archived_time": d.last_archived_time or None,
                "failed_count": d.failed_count,
                "last_failed": d.last_failed or None,
                "last_failed_time": d.last_failed_time or None,
                "lag_segments": d.lag_segments,
                "system_id": d.system_id or None,
                "namespace_segments": d.namespace_segments,
                "nothing_archived": d.nothing_archived,
                "in_recovery": d.in_recovery,
                "archive_mode": d.archive_mode or None,
                "archive_command": d.archive_command if d.archive_mode else None,
                "archive_library": d.archive_library or None,
                "archive_foreign": d.archive_foreign,
                "archive_elsewhere": d.archive_elsewhere or None,
                "pending_since": d.pending_since or None,
                "ready_since": d.ready_since or None,
                "ready_unlisted": d.ready_unlisted or None,
            }
            for d in a.databases
        ],
    }


def archive_lines(a: pb.ArchiveStatus, now: float) -> list[str]:
    """The WAL archiving lines of `cairn status` (none when nothing was ever archived or configured)."""
    if not a.segments and not a.pushed and not a.failures and not a.databases:
        return []
    last = a.last_segment or "none"
    if a.last_time:
        last += f" ({fmt_age(now - a.last_time)} ago)"
    spaces = f" of {a.wal_namespaces} clusters" if a.wal_namespaces > 1 else ""
    lines = ["", f"WAL archive: {plural(a.segments, 'segment')}{spaces}, last {last}; {a.pushed} stored, "
                 f"{a.failures} failed since start"]
    if a.last_failure:
        lines.append(f"  last failure {fmt_age(now - a.last_failure_time)} ago: {a.last_failure}")
    for d in a.databases:
        if d.error:
            lines.append(f"  database {d.name}: unable to ask the server: {d.error}")
            continue
        when = f" ({fmt_age(now - d.last_archived_time)} ago)" if d.last_archived_time else ""
        if d.nothing_archived:  # no lag to tell but what the archiver failed on
            lag = f", lag {plural(d.lag_segments, 'segment')}" if d.lag_segments else ""
            # its name space holds segments: statistics reset by a crash, say, not a new server
            since = " since the server's statistics began" if d.namespace_segments else " yet"
            done = f"nothing archived{since}{lag}"
        else:
            done = f"archived {d.last_archived}{when}, lag {plural(d.lag_segments, 'segment')}"
        writing = f"writing {d.current_segment}" if not d.in_recovery else "in recovery (no WAL of its own)"
        text = f"  database {d.name}: {writing}, {done}, {plural(d.failed_count, 'failure')}"
        if d.last_failed:
            text += f" (last {d.last_failed}, {fmt_age(now - d.last_failed_time)} ago)"
        if d.system_id:
            text += f"; system {d.system_id}: {plural(d.namespace_segments, 'segment')} archived"
        lines.append(text)
        lines += [f"  database {d.name}: {problem}" for problem in archiver_problems(d, now)]
    return lines


STUCK_AFTER = 900  # seconds a finished segment may wait before status calls archiving stuck (the alert's bound)


def archiver_problems(d: pb.DatabaseArchive, now: float) -> list[str]:
    """What an operator must hear of one server's archiving, one line each: archive_mode off,
    an archive_command that does not reach this repository, segments waiting for the archive."""
    out = []
    if d.archive_mode and d.archive_mode not in ("on", "always"):
        out.append(f"archive_mode is {d.archive_mode}: the server archives no WAL (set archive_mode = on "
                   "and restart it)")
    elif d.archive_foreign:
        if d.archive_library:
            how = f"archive_library '{d.archive_library}' archives instead of archive_command"
        elif d.archive_elsewhere:  # it calls wal-push, with another daemon's socket or address
            how = f"archive_command '{d.archive_command}' pushes to another daemon, at {d.archive_elsewhere}"
        else:
            how = f"archive_command '{d.archive_command}' does not call 'cairn wal-push'"
        out.append(f"{how}: its WAL does not reach this repository")
    if d.pending_since and not d.in_recovery:
        waited = now - d.pending_since
        stuck = "; archiving is STUCK" if waited >= STUCK_AFTER else ""
        out.append(f"{plural(d.lag_segments, 'finished segment')} waiting for the archive, the oldest since "
                   f"{fmt_time(d.pending_since)} ({fmt_age(waited)}){stuck}")
        if d.ready_unlisted:  # the server did not say when its backlog began
            out.append(f"the wait is counted from this daemon's first look at the backlog, which may have begun "
                       f"earlier: {d.ready_unlisted}")
    return out


def job_dict(j: pb.JobInfo) -> dict[str, Any]:
    return {
        "id": j.id,
        "source": j.source,
        "level": j.level,
        "reason": j.reason,
        "started": j.started,
        "progress": progress_dict(j.progress) if j.HasField("progress") else None,
    }


def progress_dict(p: pb.Progress) -> dict[str, Any]:
    return {
        "phase": p.phase,
        "files_done": p.files_done,
        "files_total": p.files_total,
        "bytes_done": p.bytes_done,
        "bytes_total": p.bytes_total,
        "current_path": json_path(p.current_path),
    }


def progress_text(p: pb.Progress) -> str:
    files = f"{p.files_done}/{p.files_total}" if p.files_total else str(p.files_done)
    size = f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}" if p.bytes_total else human_bytes(p.bytes_done)
    return f"{p.phase}: {files} files, {size}"


def status_lines(reply: pb.StatusReply, now: float) -> list[str]:
    d = reply.daemon
    mode = " (read-only)" if d.read_only else ""
    lines = [
        f"cairnd {d.version} on {d.hostname}, pid {d.pid}, up {fmt_age(now - d.started)}",
        f"repository: {d.repository}{mode}",
    ]
    if d.config_path:
        lines.append(f"config: {d.config_path}")
    lines += [f"warning: {w}" for w in d.warnings]
    if not reply.sources:
        lines.append("no sources")
    for s in reply.sources:
        paths = ", ".join(show_path(p) for p in s.paths) or "-"
        where = "" if s.configured else f" (not configured; known from the sets of host '{s.host}')" if s.host \
            else " (not configured; known from its sets)"
        lines.append("")
        lines.append(f"source {s.name}{where}: {paths}")
        if s.journal:
            lines.append(f"  journal: {s.journal}")
        if s.journal_state:
            pending = "nothing"
            if s.HasField("oldest_unprotected_age"):
                pending = (f"{plural(s.pending_paths, 'pending path')}, "
                           f"oldest change {fmt_age(s.oldest_unprotected_age)} old")
            lines.append(f"  unprotected: {pending}; watches: {s.watches}")
        if s.HasField("running"):
            j = s.running
            text = f"  running: {j.level} backup ({j.reason}) for {fmt_age(now - j.started)}"
            if j.HasField("progress"):
                text += f", {progress_text(j.progress)}"
            lines.append(text)
        lines += window_lines(s, now)
        lines.append(f"  sets: {s.sets}")
        lines += health_lines(s, now)
        for ls in s.last:
            lines.append(
                f"  last {ls.level + ':':<13} {short_id(ls.set.id)}  {fmt_time(ls.set.time_start)}  {ls.set.status}"
            )
        for n in s.next_runs:
            lines.append(f"  next {n.level + ':':<13} {fmt_time(n.time)}")
    if reply.HasField("archive"):
        lines += archive_lines(reply.archive, now)
    if reply.HasField("retention"):
        lines += retention_lines(reply.retention, now)
    return lines


# ---- verify / prune ----


def problem_line(p: pb.CheckProblem, most: int = 3) -> str:
    """A check problem for people: its message, then the sets and paths it hurts (the first few)."""
    text = p.message
    if p.sets and list(p.sets) != [p.object_id]:  # (a damaged set object names itself already)
        more = f" and {len(p.sets) - most} more" if len(p.sets) > most else ""
        text += f" (set{'s' if len(p.sets) > 1 else ''} {', '.join(short_id(x) for x in p.sets[:most])}{more}"
        if p.paths:
            more = f" and {len(p.paths) - most} more" if len(p.paths) > most else ""
            text += f"; {', '.join(show_path(x) or '/' for x in p.paths[:most])}{more}"
        text += ")"
    return text


def report_dict(r: pb.CheckReport) -> dict[str, Any]:
    def problem(p: pb.CheckProblem) -> dict[str, Any]:
        return {
            "message": p.message,
            "object_id": p.object_id or None,
            "sets": list(p.sets),
            "paths": [json_path(x) for x in p.paths],
        }

    return {
        "ok": r.ok,
        "errors": [problem(p) for p in r.errors],
        "warnings": [problem(p) for p in r.warnings],
        "notes": [problem(p) for p in r.notes],
        "sets_checked": r.sets_checked,
        "packs_checked": r.packs_checked,
        "chunks_checked": r.chunks_checked,
        "bytes_read": r.bytes_read,
        "advice": r.advice or None,
    }


def lock_dict(x: pb.LockInfo) -> dict[str, Any]:
    return {"name": x.name, "host": x.host, "pid": x.pid, "purpose": x.purpose, "time": x.time,
            "description": x.description}


def prune_dict(r: pb.PruneReply) -> dict[str, Any]:
    return {
        "dry_run": r.dry_run,
        "forgotten": list(r.forgotten),
        "kept": list(r.kept),
        "packs_deleted": r.packs_deleted,
        "packs_rewritten": r.packs_rewritten,
        "bytes_freed": r.bytes_freed,
        "decisions": [
            {"set": d.set, "keep": d.keep, "reasons": list(d.reasons), "host": d.host, "source": d.source,
             "level": d.level, "time": d.time}
            for d in r.decisions
        ],
        "wal_forgotten": list(r.wal_forgotten),
        "waiting": {"packs": r.waiting_packs, "bytes": r.waiting_bytes, "on": list(r.waiting_on)},
    }


REPAIR_HINT = ("take a full backup of every source (`cairn backup --level full`; on every host sharing the "
               "repository): it stores the dropped data again, and older sets that reference it restore again")


def repair_index_dict(r: pb.RepairIndexReport) -> dict[str, Any]:
    changed = bool(r.entries_missing or r.entries_damaged)
    return {
        "dry_run": r.dry_run,
        "read_data": r.read_data,
        "packs_listed": r.packs_listed,
        "packs_read": r.packs_read,
        "entries_dropped_missing": r.entries_missing,
        "missing_packs": list(r.missing_packs),
        "entries_dropped_damaged": r.entries_damaged,
        "damaged_packs": list(r.damaged_packs),
        "blobs_added": r.blobs_added,
        "unindexed_packs": list(r.unindexed_packs),
        "blobs_copied": r.blobs_copied,
        "trees_restored": r.trees_restored,
        "blobs_indexed": r.blobs_indexed,
        "index_files_replaced": r.index_files_replaced,
        "damaged_index_files": list(r.damaged_index_files),
        "index_file": r.index_file or None,
        "hint": REPAIR_HINT if changed else None,
    }


def repair_index_lines(r: pb.RepairIndexReport) -> list[str]:
    """What repair index found and did, for people: one line per pack concerned, then the totals."""
    would = r.dry_run
    drop, add = ("would drop", "would add") if would else ("dropped", "added")
    lines = [f"pack '{p[:8]}..' is missing" for p in r.missing_packs]
    lines += [f"pack '{p[:8]}..' holds damaged blobs" for p in r.damaged_packs]
    lines += [f"pack '{p[:8]}..' was not indexed" for p in r.unindexed_packs]
    lines += [f"index file '{n[:8]}..' is unreadable" for n in r.damaged_index_files]
    read = f"read {r.packs_read} of {plural(r.packs_listed, 'pack')}"
    lines.append(f"{read}; {drop} {plural(r.entries_missing, 'index entry', 'index entries')} of missing packs "
                 f"and {plural(r.entries_damaged, 'damaged blob')}, {add} {plural(r.blobs_added, 'blob')} "
                 f"of unindexed packs")
    if r.blobs_copied:
        lines.append(f"{'would copy' if would else 'copied'} {plural(r.blobs_copied, 'good blob')} out of the "
                     "damaged packs, which leave the index (prune deletes them)")
    if r.trees_restored:
        lines.append(f"{'would store' if would else 'stored'} {plural(r.trees_restored, 'lost tree')} again from "
                     "the daemon's cache, where good copies are kept")
    replaced = "would replace" if would else "replaced"
    lines.append(f"{replaced} {plural(r.index_files_replaced, 'index file')}; the index "
                 f"{'would name' if would else 'names'} {plural(r.blobs_indexed, 'blob')}")
    if r.entries_missing or r.entries_damaged:
        lines.append(f"hint: {REPAIR_HINT}")
    return lines


def repair_sets_dict(r: pb.RepairSetsReply) -> dict[str, Any]:
    return {
        "dry_run": r.dry_run,
        "removed": [{"set": x.set, "reason": x.reason} for x in r.removed],
        "kept": r.kept,
        "newer": list(r.newer),
        "refused": [{"set": x.set, "reason": x.reason} for x in r.refused],
        "restored": [{"set": x.set, "reason": x.reason} for x in r.restored],
    }


def repair_sets_lines(r: pb.RepairSetsReply) -> list[str]:
    verb = "would remove" if r.dry_run else "removed"
    lines = [f"{verb} set {x.set}: {x.reason}" for x in r.removed]
    lines += [f"{'would put back' if r.dry_run else 'put back'} set {x.set} from the daemon's cache, where a good "
              f"copy is kept: {x.reason}" for x in r.restored]
    lines += [f"kept set {n}: written by a newer version of cairn" for n in r.newer]
    lines += [f"kept set {x.set}: the store refuses to read it ({x.reason}); if that is damage, remove "
              f"sets/{x.set} from the repository by hand" for x in r.refused]
    restored = f", {'would put back' if r.dry_run else 'put back'} {len(r.restored)}" if r.restored else ""
    lines.append(f"{verb} {plural(len(r.removed), 'unreadable set')}{restored}, kept {plural(r.kept, 'readable set')}")
    return lines


def repair_wal_dict(r: pb.RepairWalReply) -> dict[str, Any]:
    return {
        "dry_run": r.dry_run,
        "removed": [{"name": x.name, "reason": x.reason} for x in r.removed],
        "kept": r.kept,
        "refused": [{"name": x.name, "reason": x.reason} for x in r.refused],
    }


def repair_wal_lines(r: pb.RepairWalReply) -> list[str]:
    verb = "would remove" if r.dry_run else "removed"
    lines = [f"{verb} WAL catalog entry {x.name}: {x.reason}" for x in r.removed]
    lines += [f"kept WAL catalog entry {x.name}: the store refuses to read it ({x.reason}); if that is damage, "
              f"remove wal/{x.name} from the repository by hand" for x in r.refused]
    if any(x.reason.endswith("its data is lost") for x in r.removed):  # readable, but its chunks are gone
        removed = plural(len(r.removed), "WAL catalog entry that cannot be read or whose data is lost",
                         "WAL catalog entries that cannot be read or whose data is lost")
    else:
        removed = plural(len(r.removed), "unreadable WAL catalog entry", "unreadable WAL catalog entries")
    lines.append(f"{verb} {removed}, kept {plural(r.kept, 'readable entry', 'readable entries')}")
    return lines


def decision_where(d: pb.RetentionDecision) -> str:
    """host/source, level and time of a retention decision, for people."""
    return f"{d.host or '-'}/{d.source} {d.level} {fmt_time(d.time)}"


def retention_lines(r: pb.RetentionStatus, now: float) -> list[str]:
    """The scheduled retention lines of `cairn status`."""
    lines = ["", f"retention + gc: \"{r.schedule}\" for host {r.host}, next {fmt_time(r.next_run)}"]
    if r.last_run:
        lines.append(f"  last run {fmt_age(now - r.last_run)} ago: {r.last_result}")
    return lines
# ---- check-db ----


def check_db_dict(r: pb.CheckDbReply) -> dict[str, Any]:
    return {"ok": r.ok, "segment": r.segment or None, "seconds": r.seconds,
            "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in r.steps]}


def check_db_lines(name: str, r: pb.CheckDbReply) -> list[str]:
    lines = [f"{'ok  ' if s.ok else 'FAIL'} {s.name}: {s.detail}" for s in r.steps]
    lines.append(f"database {name}: " + ("ready for consistent sets" if r.ok else "NOT ready"))
    return lines


def verify_counts(r: pb.CheckReport) -> str:
    """What a check covered, without the counts that are zero because they were not checked."""
    parts = [plural(r.sets_checked, "set")]
    if r.packs_checked:
        parts.append(plural(r.packs_checked, "pack"))
    if r.chunks_checked:
        parts.append(plural(r.chunks_checked, "chunk"))
    text = ", ".join(parts) + " checked"
    if r.bytes_read:
        text += f", {human_bytes(r.bytes_read)} read"
    return text
