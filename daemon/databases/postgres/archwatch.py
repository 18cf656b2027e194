"""Watching each PostgreSQL server's own archiver: is WAL waiting, and does the server archive
into Cairn at all.

An idle server archives nothing (it switches no segment while nothing is written and
archive_timeout is 0), so the time of the last archived segment tells an idle server from a
stuck one only by guessing. The server's own view tells them apart: the finished segments
waiting for the archive (the segment of pg_current_wal_lsn() past the last archived one, on the
same timeline; 0 on a standby), pg_stat_archiver's failure count, archive_mode, and whether
archive_command reaches this repository.

- `calls_cairn(view, in_repository, here)`: archive_command archives into this repository: it
  names `wal-push` pushing to this daemon, or (a wrapper script) the server's last archived
  file is in the repository, in its cluster's name space (looked up only for a command that
  does not name `wal-push`, once per last archived file; a repository that cannot be read gives
  no verdict against it). An archive_library archives instead of archive_command: never
  Cairn's. `judge` sets a view's `archive_foreign` and `archive_elsewhere` by it.
- `push_target(command)` is the daemon a command's `cairn wal-push` reaches, found as the client
  finds it (client/connection.py): `--address`, else `--socket`, else `CAIRN_SOCKET=` set on
  the command line. `elsewhere(command, here)` names it when it is not this daemon (`here`: its
  socket, compared after resolving symbolic links, and the port of its TCP listener). A command
  that names no daemon reaches the one the server's environment gives (unknown here), and one
  that names it through the shell ($VAR, ~, a relative path) cannot be told: both are taken as
  this daemon's.
- `PendingClocks` tells, per database, since when the oldest segment still waiting for the
  archive has been seen finished: each observation that the server writes a later segment is
  remembered with its time, and the oldest segment waiting was finished by the first
  observation of a later one. A busy server whose archiver keeps up shows no wait however
  many observations find a segment in flight. The server's own word is earlier when it has one:
  the oldest `.ready` file of its archive_status directory (walarchive.oldest_ready) is when
  that file began to wait, so a backlog from before this daemon started keeps its start (the
  clock remembers it). Where the server does not let that directory be listed, a daemon that
  starts with a backlog counts from its first observation, and `problems` says so.
- `ArchiverSampler` is the daemon's thread that asks each configured PostgreSQL database every
  `[daemon] archiver_interval` (0: never) through a given function (status's own view), keeps
  the latest view per database for the metrics (`figures()`), and logs a server it cannot ask
  once, and once more when it answers again, never per sample.

What always holds: a sample is bounded (connect and statement timeouts, walarchive.py) and runs
in its own thread, so nothing else waits for a slow server; the views never change a server.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cairn import walnames
from cairn.daemon.databases.postgres.walarchive import DatabaseArchive
from cairn.daemon.runtime.threads import ServiceThread

log = logging.getLogger(__name__)

IDLE_RECHECK = 60.0  # seconds between looks at the configuration while sampling is off
LONG_WAIT = 900.0  # a segment waiting this long is a stuck archiver (status says so; the alert's bound)


@dataclass(frozen=True)
class Listening:
    """Where this daemon takes calls: its Unix socket ([daemon] socket) and TCP address
    ([daemon] listen; None: none)."""

    socket: str
    listen: str | None = None

    @classmethod
    def of(cls, daemon: Any) -> Listening:
        """From a DaemonConfig."""
        return cls(str(daemon.socket), daemon.listen or None)


SOCKET_VARIABLE = "CAIRN_SOCKET="
_OPERATORS = set("();<>|&")


def push_target(command: str) -> tuple[str, str] | None:
    """("address", HOST:PORT) or ("socket", PATH): the daemon the `cairn wal-push` of
    archive_command reaches; None when it names none, names it through the shell, or the command
    cannot be split (module docstring)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an unbalanced quote: the shell would refuse it too
        return None
    if "wal-push" not in words:
        return None
    at = words.index("wal-push")
    start = max((i + 1 for i, w in enumerate(words[:at]) if set(w) <= _OPERATORS), default=0)
    end = next((i for i in range(at, len(words)) if set(words[i]) <= _OPERATORS), len(words))
    found: dict[str, str] = {}
    for i, word in enumerate(words[:at]):  # `export CAIRN_SOCKET=...` before it, or on its own command
        if word.startswith(SOCKET_VARIABLE) and (i >= start or (i and words[i - 1] == "export")):
            found["variable"] = word[len(SOCKET_VARIABLE):]
    own = words[start:end]
    for i, word in enumerate(own):
        for option in ("socket", "address"):
            flag = f"--{option}"
            if word == flag and i + 1 < len(own):
                found[option] = own[i + 1]
            elif word.startswith(flag + "="):
                found[option] = word[len(flag) + 1:]
    for kind, key in (("address", "address"), ("socket", "socket"), ("socket", "variable")):
        value = found.get(key, "")
        if value:  # an empty one counts as not given, as in the client
            shell = value.startswith("~") or any(c in value for c in "$`")
            if shell or (kind == "socket" and not os.path.isabs(value)):
                return None
            return kind, value
    return None


def elsewhere(command: str, here: Listening) -> str:
    """The daemon archive_command's `cairn wal-push` reaches ("unix socket 'PATH'" or "address
    'HOST:PORT'") when it is not this one; "" when it is this one or cannot be told."""
    target = push_target(command)
    if target is None:
        return ""
    kind, value = target
    if kind == "socket":
        if os.path.realpath(value) == os.path.realpath(here.socket):
            return ""
        return f"unix socket '{value}'"
    port = _port(value)
    if here.listen and (port is None or _port(here.listen) in (port, 0, None)):
        return ""  # the host is not judged: the server may reach this daemon by any of its names
    return f"address '{value}'"


def _port(address: str) -> int | None:
    tail = address.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def calls_cairn(view: DatabaseArchive, in_repository: Callable[[str, str], bool],
                here: Listening | None = None) -> bool:
    """archive_command archives into this repository (see the module docstring);
    `in_repository(namespace, name)` tells whether the repository holds that WAL file; `here`
    (None: not judged) is where this daemon listens."""
    if view.archive_library:
        return False
    if "wal-push" in view.archive_command:
        return here is None or not elsewhere(view.archive_command, here)
    if not (view.last_archived and view.system_id):
        return False
    try:
        return in_repository(view.system_id, view.last_archived)
    except Exception:  # noqa: BLE001 - unable to look (a store that does not answer): no false alarm
        log.debug("unable to look for %s in the repository", view.last_archived, exc_info=True)
        return True


def judge(view: DatabaseArchive, in_repository: Callable[[str, str], bool],
          here: Listening | None = None) -> DatabaseArchive:
    """`view` with `archive_foreign` (not calls_cairn) and `archive_elsewhere` (the other daemon
    its wal-push reaches, or "")."""
    other = elsewhere(view.archive_command, here) if here is not None and not view.archive_library else ""
    return replace(view, archive_elsewhere=other, archive_foreign=bool(other) or not calls_cairn(view, in_repository))


class PendingClock:
    """Since when the oldest segment waiting for the archive of one server has been finished."""

    def __init__(self) -> None:
        self._timeline = -1
        self._seen: list[tuple[int, float]] = []  # (segment written, first seen), segment rising

    def observe(self, current_segment: str, pending: int, now: float, ready_since: float = 0.0) -> float:
        """The time the oldest of the `pending` finished segments before `current_segment` was
        first seen finished, or `ready_since` (when the server's oldest `.ready` file was made;
        0.0: not known) when that is earlier; 0.0 when nothing waits."""
        cur = walnames.parse_segment(current_segment) if current_segment else None
        if cur is None or pending <= 0:
            self._seen.clear()
            return 0.0
        timeline, segno = cur
        if timeline != self._timeline:
            self._timeline, self._seen = timeline, []
        if not self._seen or self._seen[-1][0] < segno:
            self._seen.append((segno, now))
        oldest = segno - pending  # the oldest segment waiting
        while len(self._seen) > 1 and self._seen[0][0] <= oldest:
            self._seen.pop(0)  # seen before the oldest one waiting was finished: no evidence for it
        first, when = self._seen[0]
        since = when if first > oldest else now
        if 0.0 < ready_since < since:
            # the oldest segment waiting was finished before this daemon saw it (a backlog from before
            # it started): remember that the segment after it was being written then
            self._seen = [(oldest + 1, ready_since), *(seen for seen in self._seen if seen[0] > oldest + 1)]
            since = ready_since
        return since


FOUND_KEPT = 64  # answers of `PendingClocks.found` remembered


class PendingClocks:
    """One PendingClock per database, and whether the repository holds the last file each server
    archived (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clocks: dict[str, PendingClock] = {}
        self._clock = clock
        self._found: dict[tuple[str, str], bool] = {}

    def found(self, namespace: str, name: str, look: Callable[[], bool]) -> bool:
        """Whether the repository holds WAL file `name` of `namespace`: `look()` once per file (a
        server's last archived file changes only when it archives again); errors are not kept."""
        key = (namespace, name)
        with self._lock:
            if key in self._found:
                return self._found[key]
        answer = look()
        with self._lock:
            if len(self._found) >= FOUND_KEPT:
                self._found.clear()
            self._found[key] = answer
        return answer

    def observe(self, view: DatabaseArchive) -> DatabaseArchive:
        """`view` with its `pending_since` (a view that could not be read is returned as it is)."""
        if view.error:
            return view
        pending = 0 if view.in_recovery else view.lag_segments
        with self._lock:
            clock = self._clocks.setdefault(view.name, PendingClock())
            since = clock.observe(view.current_segment, pending, self._clock(), view.ready_since)
        return replace(view, pending_since=since)

    def forget(self, keep: Sequence[str]) -> None:
        """Drop the clocks of databases no longer configured."""
        with self._lock:
            for name in [n for n in self._clocks if n not in keep]:
                del self._clocks[name]


class ArchiverSampler(ServiceThread):
    """The daemon's thread that samples each PostgreSQL server's archiver (module docstring)."""

    def __init__(self, databases: Callable[[], Sequence[Any]], sample: Callable[[Any], DatabaseArchive],
                 interval: Callable[[], float]) -> None:
        super().__init__(name="archiver-sampler")
        self._databases = databases
        self._sample = sample
        self._interval = interval
        self._lock = threading.Lock()
        self._latest: dict[str, DatabaseArchive] = {}
        self._errors: dict[str, str] = {}  # the error each database's sampling last logged
        self._unlisted: dict[str, str] = {}  # why each database's archive_status could not be listed, as logged
        self._wake = threading.Event()
        self.samples = 0  # sampling rounds done (tests wait on it)

    def run_safe(self) -> None:
        while not self.stopping:
            interval = self._interval()
            if interval > 0:
                self.sample_all()
            self._wake.wait(interval if interval > 0 else IDLE_RECHECK)
            self._wake.clear()

    def request_stop(self) -> None:
        super().request_stop()
        self._wake.set()

    def poke(self) -> None:
        """Sample now, and go on with the interval the configuration gives then (after a reload)."""
        self._wake.set()

    def sample_all(self) -> None:
        """Ask every configured database once, now."""
        names = []
        for db in self._databases():
            if self.stopping:
                return
            names.append(db.name)
            try:
                view = self._sample(db)
            except Exception as exc:  # noqa: BLE001 - one database's trouble never stops the others
                log.debug("sampling the archiver of database '%s' failed", db.name, exc_info=True)
                view = DatabaseArchive(name=db.name, error=str(exc) or type(exc).__name__)
            self._note(view)
            with self._lock:
                self._latest[db.name] = view
        with self._lock:
            for gone in [n for n in self._latest if n not in names]:
                del self._latest[gone]
            self.samples += 1

    def _note(self, view: DatabaseArchive) -> None:
        """Log a database that cannot be asked once per error, and once when it answers again; and
        once that its backlog is timed from this daemon's looks (its archive_status is not listed)."""
        if not view.error and view.ready_unlisted != self._unlisted.get(view.name, ""):
            if view.ready_unlisted:
                log.warning("a WAL backlog of database '%s' is timed from this daemon's first look at it: %s",
                            view.name, view.ready_unlisted)
            self._unlisted[view.name] = view.ready_unlisted
        before = self._errors.get(view.name, "")
        if view.error and view.error != before:
            log.warning("unable to read the WAL archiver of database '%s' (retried every %s): %s", view.name,
                        f"{self._interval():g}s", view.error)
            self._errors[view.name] = view.error
        elif not view.error and before:
            log.info("the WAL archiver of database '%s' can be read again", view.name)
            del self._errors[view.name]

    def latest(self) -> dict[str, DatabaseArchive]:
        """The latest view of each database sampled (by name)."""
        with self._lock:
            return dict(self._latest)

    def figures(self) -> dict[str, dict[str, float]]:
        """Per database, what the metrics export (daemon/runtime/metrics.py, watch_archivers):
        `up` (the server answered); and when it did `pending`, `pending_since` (0: nothing
        waits), `failed_count`, `archive_mode_on`, `command_cairn`."""
        out: dict[str, dict[str, float]] = {}
        for name, view in self.latest().items():
            if view.error:
                out[name] = {"up": 0.0}
                continue
            out[name] = {
                "up": 1.0,
                "pending": 0.0 if view.in_recovery else float(view.lag_segments),
                "pending_since": view.pending_since,
                "failed_count": float(view.failed_count),
                "archive_mode_on": 1.0 if view.archiving_on else 0.0,
                "command_cairn": 0.0 if view.archive_foreign else 1.0,
            }
        return out


def problems(view: DatabaseArchive, now: float) -> list[str]:
    """What an operator must hear of a server's archiving, one line each (status, check-db)."""
    if view.error:
        return []
    out = []
    if view.archive_mode and not view.archiving_on:
        out.append(f"archive_mode is {view.archive_mode}: the server archives no WAL, so no set of it can be "
                   "restored past its own end (set archive_mode = on and restart the server)")
    elif view.archive_foreign:
        if view.archive_library:
            how = f"archive_library '{view.archive_library}' archives instead of archive_command"
        elif view.archive_elsewhere:
            how = f"archive_command '{view.archive_command}' pushes to another daemon, at {view.archive_elsewhere}"
        else:
            how = f"archive_command '{view.archive_command}' does not call 'cairn wal-push'"
        out.append(f"{how}: its WAL does not reach this repository")
    if view.pending_since and not view.in_recovery:
        waited = max(0.0, now - view.pending_since)
        what = f"{view.lag_segments} finished segment{'' if view.lag_segments == 1 else 's'}"
        long = " (too long: archiving is stuck)" if waited >= LONG_WAIT else ""
        out.append(f"{what} waiting for the archive, the oldest for {_minutes(waited)}{long}")
        if view.ready_unlisted:
            out.append(f"{UNLISTED}: {view.ready_unlisted}")
    return out


# the line under a backlog whose start the server's archive_status did not give
UNLISTED = "the wait is counted from this daemon's first look at the backlog, which may have begun earlier"


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
