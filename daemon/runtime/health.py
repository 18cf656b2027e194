"""What the operator must still see after a restart: the last set of each source that did not
succeed, and the newest WAL segment archived with the time it arrived.

A set being taken is recorded when it begins and dropped when it ends, so a set cut short by a
kill -9 or a power loss is reported at the next start as that source's last failure (unless a
set of the source committed at or after its beginning: then only the end's record was lost).

A quiesce window the daemon found left open at start and could not thaw (a required thaw hook
failed: its record is kept, daemon/windows/quiesce.py) is recorded as the source's last failure
with status "thaw failed" and `pending_thaw` set (`settle_thaws`). It stays so until a thaw of
that window succeeds: the "aborted" report of the set that was running does not replace it, and
a later set's failure (refused while the thaw still fails) is recorded as "thaw failed" too,
saying the application may still be stopped. Each window of the source retries that thaw when
it opens and tells the records this process keeps for its state directory (`leftover_thaw`):
still failing, the report is renewed; thawed, or no window left over, it is dropped. A later
start that finds the window thawed drops it too (`settle_thaws`).

Scheduled retention and garbage collection (daemon/scheduling/retention.py) keeps its last run
here too (`gc_last`: when it started, the result line, whether it was interrupted), so status
shows it after a restart, and the run in progress (`gc_begin` .. `gc_end`): a run the previous
daemon never ended (killed, the host went down, or cut by the exit of a stop that could not
wait for it) becomes, at the next start, the last run, "interrupted" (`settle_gc`).

Whether the state directory can take writes at all is the other half of the operator's view
(`StateRoom`): a full file system under it is one health problem, named the same way
everywhere (`state directory '/var/lib/cairn' is full: no space left on device`), found by
writing a small probe file there (at most once a second), so it clears by itself once there is
room. What needs to write state refuses with that line while it holds (`StateRoom.require`);
reads, status and restores go on.

The record lives in `<state_dir>/health.json`, replaced atomically on every change, so a
kill -9 leaves the previous or the new record, never a torn one; an unreadable record is
logged and started afresh (it only feeds status and metrics, never a decision about data).
Every field is checked on load (types, finite times within the years 1970..9999, a WAL segment
name of 24 hex digits): an entry that does not fit is dropped with a log line, the rest is kept.
`restore_metrics` fills the Prometheus gauges at start from this record and the repository's
sets, so alerts on the age of the last success neither fire falsely nor go blind.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

from cairn.errors import FailedPreconditionError
from cairn.fsio.durable import write_atomic
from cairn.store.model import BackupSet

log = logging.getLogger(__name__)

FILE_NAME = "health.json"
MAX_MESSAGE = 500
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: a later time in the record is not a time
THAW_FAILED = "thaw failed"
UNSAVED_REPEAT = 600  # seconds between two lines about the record's writes failing for one reason
STILL_STOPPED = "the application may still be stopped"
SEGMENT = re.compile(r"[0-9A-Fa-f]{24}")
NOT_THAWED = f"; the quiesce window a previous daemon left open has not thawed yet: {STILL_STOPPED}"


@dataclass(frozen=True)
class Failure:
    level: str
    time: float
    message: str
    status: str = "failed"
    pending_thaw: bool = False  # a window left open by a previous daemon did not thaw at start


@dataclass(frozen=True)
class GcRun:
    """A run of scheduled retention and garbage collection: when it started and its result line."""

    time: float
    result: str
    interrupted: bool = False  # cut short by a stop (or a crash): the next run does it again


GC_CUT = ("interrupted: the daemon stopped while it ran (killed, or the host went down); the repository is "
          "consistent (garbage collection is crash-safe: what it did stays done) and the next run does the rest")


class _Bad(ValueError):
    """An entry of the record that does not fit; its message says which field and why."""


def _time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"{what} is not a number: {value!r:.40}")
    t = float(value)
    if not math.isfinite(t) or not 0.0 <= t <= MAX_TIME:
        raise _Bad(f"{what} is out of range: {value!r:.40}")
    return t


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what} is not a string: {value!r:.40}")
    return value


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _Bad(f"'{key}' is not an object")
    return value


def _failure(v: Any) -> Failure:
    if not isinstance(v, dict):
        raise _Bad("not an object")
    pending = v.get("pending_thaw", False)
    if not isinstance(pending, bool):
        raise _Bad(f"pending_thaw is not a boolean: {pending!r:.40}")
    return Failure(level=_text(v.get("level"), "level"), time=_time(v.get("time"), "time"),
                   message=_text(v.get("message"), "message")[:MAX_MESSAGE],
                   status=_text(v.get("status", "failed"), "status"), pending_thaw=pending)


def _gc(v: Any) -> tuple[GcRun | None, float | None]:
    """The retention table: (its last run, the start of a run that never ended)."""
    if not isinstance(v, dict):
        raise _Bad("not an object")
    last, running = v.get("last"), v.get("running")
    run = None
    if last is not None:
        if not isinstance(last, dict):
            raise _Bad("last is not an object")
        interrupted = last.get("interrupted", False)
        if not isinstance(interrupted, bool):
            raise _Bad(f"interrupted is not a boolean: {interrupted!r:.40}")
        run = GcRun(_time(last.get("time"), "time"), _text(last.get("result"), "result")[:MAX_MESSAGE], interrupted)
    return run, None if running is None else _time(running, "running")


def _running(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Bad("not an object")
    return {"level": _text(v.get("level"), "level"), "time": _time(v.get("time"), "time")}


class HealthRecord:
    """Last failure per source and last archived WAL segment, persisted in the state directory."""

    def __init__(self, state_dir: str | None) -> None:
        self._path = os.path.join(state_dir, FILE_NAME) if state_dir else None
        # failing writes: (reason, when last said, failures since, failures in all)
        self._unsaved: tuple[str, float, int, int] | None = None
        self._lock = threading.Lock()
        self.failures: dict[str, Failure] = {}
        self.wal_segment = ""
        self.wal_time = 0.0
        self.running: dict[str, dict[str, Any]] = {}  # source -> {"level", "time"} of the set being taken
        self.interrupted: dict[str, dict[str, Any]] = {}  # sets a previous daemon was taking when it stopped
        self.gc_last: GcRun | None = None  # the last retention run, of this daemon or an earlier one
        self.gc_running: float | None = None  # start of the retention run in progress
        self.gc_cut: float | None = None  # start of a retention run a previous daemon never ended (settle_gc)
        self._load()
        self.gc_cut, self.gc_running = self.gc_running, None
        if self.running:
            self.interrupted, self.running = self.running, {}
        self._home = os.path.abspath(state_dir) if state_dir else None
        if state_dir:  # the windows of this process report their leftover thaws here (`leftover_thaw`)
            with _live_lock:
                _live.add(self)

    def _load(self) -> None:
        if self._path is None or not os.path.exists(self._path):
            return
        try:
            with open(self._path, encoding="utf-8") as handle:
                data = json.load(handle)
            if not isinstance(data, dict):
                raise _Bad("not a JSON object")
        except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
            log.warning("unable to read '%s', starting a new one: %s", self._path,
                        getattr(exc, "strerror", None) or exc)
            return
        self.failures = self._entries(data, "failures", _failure)
        self.running = self._entries(data, "running", _running)
        if "gc" in data:
            try:
                self.gc_last, self.gc_running = _gc(data["gc"])
            except _Bad as exc:
                log.warning("'%s': dropped the last retention run: %s", self._path, exc)
        try:
            wal = _table(data, "wal")
            segment = _text(wal.get("segment", ""), "wal segment")
            if segment and not SEGMENT.fullmatch(segment):
                raise _Bad(f"wal segment is not a segment name: {segment!r:.40}")
            when = _time(wal.get("time", 0.0), "wal time")
            self.wal_segment, self.wal_time = segment, when
        except _Bad as exc:
            log.warning("'%s': dropped the last archived WAL segment: %s", self._path, exc)

    def _entries(self, data: dict[str, Any], key: str, parse: Any) -> dict[str, Any]:
        """The valid entries of table `key` (source name -> entry); each bad one is logged and dropped."""
        try:
            table = _table(data, key)
        except _Bad as exc:
            log.warning("'%s': dropped %s", self._path, exc)
            return {}
        out = {}
        for name, value in table.items():
            try:
                out[name] = parse(value)
            except _Bad as exc:
                log.warning("'%s': dropped the %s entry of source '%s': %s", self._path, key, name[:100], exc)
        return out

    def _save(self) -> None:
        if self._path is None or not os.path.isdir(os.path.dirname(self._path)):
            return
        # sets a previous daemon was taking stay recorded until settle_interrupted reported them
        data = {"failures": {name: asdict(f) for name, f in self.failures.items()},
                "wal": {"segment": self.wal_segment, "time": self.wal_time},
                "running": {**self.interrupted, **self.running}}
        gc_running = self.gc_running if self.gc_running is not None else self.gc_cut  # reported until settled
        if self.gc_last is not None or gc_running is not None:
            data["gc"] = {"last": asdict(self.gc_last) if self.gc_last is not None else None, "running": gc_running}
        try:
            write_atomic(self._path, json.dumps(data, indent=1).encode())
        except OSError as exc:
            self._unwritten(str(exc.strerror or exc))
            return
        if self._unsaved is not None:
            log.info("'%s' written again (%d writes had failed)", self._path, self._unsaved[3])
            self._unsaved = None

    def _unwritten(self, reason: str) -> None:
        """Log a failed write of the record once, then again only when the reason changes or
        every UNSAVED_REPEAT seconds with the count since: on a full state directory every set
        and WAL segment saves the record, and a line for each buries the log."""
        now = time.monotonic()
        total = self._unsaved[3] + 1 if self._unsaved is not None else 1
        if self._unsaved is not None and self._unsaved[0] == reason and now - self._unsaved[1] < UNSAVED_REPEAT:
            self._unsaved = (reason, self._unsaved[1], self._unsaved[2] + 1, total)
            return
        again = f" ({self._unsaved[2]} more failed writes since the last line)" if self._unsaved else ""
        log.warning("unable to write '%s': %s%s; said again in %d minutes or when the reason changes",
                    self._path, reason, again, UNSAVED_REPEAT // 60)
        self._unsaved = (reason, now, 0, total)

    def set_failed(self, source: str, level: str, message: str, status: str = "failed",
                   when: float | None = None) -> None:
        """Remember that a set of `source` did not succeed. While the window a previous daemon left
        open has not thawed (a pending thaw), it is recorded as "thaw failed" and stays pending."""
        text = " ".join(message.split())[:MAX_MESSAGE] or status
        with self._lock:
            old = self.failures.get(source)
            pending = old is not None and old.pending_thaw
            if pending:
                status = THAW_FAILED
                if STILL_STOPPED not in text:
                    text = text[:MAX_MESSAGE - len(NOT_THAWED)] + NOT_THAWED
            self.failures[source] = Failure(level, time.time() if when is None else when, text, status,
                                            pending_thaw=pending)
            self._save()

    def thaw_retried(self, source: str, error: str | None) -> None:
        """A window of `source` opened: `error` says why the thaw of the window a previous daemon
        left open still fails (the source's last failure, "thaw failed"); None when it thawed now
        or none was left (a pending thaw is then no longer shown)."""
        with self._lock:
            old = self.failures.get(source)
            if error is None:
                if old is not None and old.pending_thaw:
                    del self.failures[source]
                    self._save()
                return
            level = str(self.running.get(source, {}).get("level") or (old.level if old else "window"))
            text = " ".join(error.split())[:MAX_MESSAGE]
            self.failures[source] = Failure(level, time.time(), text, THAW_FAILED, pending_thaw=True)
            self._save()

    def begin(self, source: str, level: str) -> None:
        """A set of `source` is being taken: if the daemon stops before `end`, the next start
        reports it (`settle_interrupted`)."""
        with self._lock:
            self.running[source] = {"level": level, "time": time.time()}
            self._save()

    def end(self, source: str) -> None:
        with self._lock:
            if self.running.pop(source, None) is not None:
                self._save()

    def settle_interrupted(self, sets: list[BackupSet]) -> list[str]:
        """At start: every set the previous daemon was taking when it stopped, and that did not
        commit (no set of its source began at or after it), becomes the source's last failure,
        "aborted". `sets`: this host's sets. Returns the sources so reported."""
        out = []
        for source, rec in sorted(self.interrupted.items()):
            if any(x.source == source and x.time_start >= rec["time"] - 1.0 for x in sets):
                continue  # it committed; only the record of its end was lost
            pending = self.failure(source)
            if pending is not None and pending.pending_thaw and pending.time >= rec["time"]:
                continue  # its window did not thaw at this start: that stays what status shows
            self.set_failed(source, rec["level"], "the daemon stopped while this set was being taken (killed, "
                            "or the host went down): nothing of it was committed", status="aborted",
                            when=rec["time"])
            out.append(source)
        self.interrupted = {}
        with self._lock:
            self._save()
        return out

    def gc_begin(self, started: float) -> None:
        """A retention run began: if the daemon stops before `gc_end`, the next start says so."""
        with self._lock:
            self.gc_running = started
            self._save()

    def gc_end(self, run: GcRun) -> None:
        """The retention run ended (done, failed, or interrupted by the stop): it is the last run."""
        with self._lock:
            self.gc_last, self.gc_running = run, None
            self._save()

    def settle_gc(self) -> GcRun | None:
        """At start: a retention run the previous daemon never ended becomes the last run,
        interrupted (GC_CUT), unless a later one is recorded. Returns it (None: there was none)."""
        with self._lock:
            cut, self.gc_cut = self.gc_cut, None
            if cut is None:
                return None
            if self.gc_last is None or self.gc_last.time < cut:
                self.gc_last = GcRun(cut, GC_CUT, interrupted=True)
            self._save()
            return self.gc_last

    def settle_thaws(self, failed: dict[str, str]) -> None:
        """At start, after the thaw of the windows a previous daemon left open: `failed` maps each
        source whose thaw failed to the error. Each becomes the source's last failure ("thaw
        failed", `pending_thaw`), of the level of the set that was running (else "window"); a
        source whose earlier failed thaw has succeeded since (no record left) is no longer shown."""
        with self._lock:
            changed = False
            for source, f in list(self.failures.items()):
                if f.pending_thaw and source not in failed:
                    del self.failures[source]
                    changed = True
            for source, error in failed.items():
                level = str(self.interrupted.get(source, {}).get("level") or "window")
                text = " ".join(f"the quiesce window of source '{source}' left open by the previous daemon did "
                                f"not thaw at start, {STILL_STOPPED}: {error}".split())[:MAX_MESSAGE]
                self.failures[source] = Failure(level, time.time(), text, THAW_FAILED, pending_thaw=True)
                changed = True
            if changed:
                self._save()

    def failure(self, source: str) -> Failure | None:
        with self._lock:
            return self.failures.get(source)

    def all_failures(self) -> dict[str, Failure]:
        """Each source's last set that did not succeed."""
        with self._lock:
            return dict(self.failures)

    def wal_stored(self, name: str, when: float | None = None) -> None:
        """Remember the newest WAL segment archived (history and other files are ignored)."""
        if len(name) != 24:
            return
        with self._lock:
            if name <= self.wal_segment:
                return
            self.wal_segment, self.wal_time = name, time.time() if when is None else when
            self._save()


NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
PROBE = ".room-probe"  # written and removed again by StateRoom
PROBE_EVERY = 1.0  # seconds a probe's answer is reused
ROOM_HINT = "free room on its file system: cairnd goes on by itself once there is some, no restart needed"


def no_room(exc: BaseException) -> bool:
    """True when `exc` is a full file system or an exhausted quota (also as SQLite reports one)."""
    if isinstance(exc, OSError) and exc.errno in NO_ROOM:
        return True
    text = str(exc)
    return "No space left" in text or "database or disk is full" in text or "Disk quota exceeded" in text


class StateRoom:
    """Whether the state directory can take a write now (see the module doc)."""

    def __init__(self, state_dir: str, clock: Any = time.monotonic) -> None:
        self.state_dir = state_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = -math.inf
        self._problem: str | None = None

    def problem(self, fresh: bool = False) -> str | None:
        """None when a small file can be written there (and synced); else the one-line problem.
        Answers from the last probe when it is less than PROBE_EVERY old (unless `fresh`)."""
        with self._lock:
            now = self._clock()
            if fresh or now - self._checked >= PROBE_EVERY:
                self._problem = self._probe()
                self._checked = now
            return self._problem

    def _probe(self) -> str | None:
        path = os.path.join(self.state_dir, PROBE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"\0" * 4096)  # a page: what a journal batch or a record needs at least
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in NO_ROOM:
                return f"state directory '{self.state_dir}' is full: {os.strerror(exc.errno).lower()}"
            return None  # not a question of room (gone, refused): those who write say what it is
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        return None

    def require(self, what: str) -> None:
        """Raise FailedPreconditionError("unable to <what>: state directory '...' is full: no
        space left on device") while the state directory has no room."""
        problem = self.problem(fresh=True)  # room freed a moment ago is room
        if problem is not None:
            raise FailedPreconditionError(f"unable to {what}: {problem}", hint=ROOM_HINT)


_live: weakref.WeakSet[HealthRecord] = weakref.WeakSet()  # the records this process keeps (of a state dir)
_live_lock = threading.Lock()


def leftover_thaw(state_dir: str, source: str, error: str | None) -> None:
    """What a window of `source` found when it opened (daemon/windows/quiesce.py): `error`, why
    the thaw of the window a previous daemon left open still fails; None when that thaw
    succeeded now or none was left. Kept by every record this process keeps for `state_dir`
    (`HealthRecord.thaw_retried`); without one (a read-only daemon, a tool) nothing shows it."""
    home = os.path.abspath(state_dir)
    with _live_lock:
        records = [r for r in _live if r._home == home]
    for record in records:
        record.thaw_retried(source, error)


def last_successes(sets: list[BackupSet]) -> dict[tuple[str, str], float]:
    """{(source, level): end time of its newest set that did not fail}."""
    out: dict[tuple[str, str], float] = {}
    for s in sets:
        status = s.extra.get("status") if isinstance(s.extra, dict) else None
        if status == "failed":
            continue
        key = (s.source, s.level)
        out[key] = max(out.get(key, 0.0), s.time_end)
    return out


def restore_metrics(metrics: Any, sets: list[BackupSet], health: HealthRecord) -> None:
    """Set the gauges a restart would otherwise reset: last success per source and level, each
    source's last failure (the record keeps one per source; a thaw that failed, also one left
    pending by a window a previous daemon did not thaw, sets the thaw failure's), last WAL."""
    for (source, level), when in last_successes(sets).items():
        metrics.last_success.labels(source, level).set(when)
    for source, failure in health.all_failures().items():
        if failure.status != THAW_FAILED:  # as counted live: a set whose thaw failed was committed
            metrics.last_failure.labels(source, failure.level).set(failure.time)
        else:
            metrics.record_thaw_failure(source, failure.time)
    if health.wal_time:
        metrics.wal_last_archived.set(health.wal_time)
