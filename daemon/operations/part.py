"""The state and the helpers every part of the service shares.

`ServicePart` is the base of each part (status, backups, restores, databases, maintenance):
it names the state `CairnService.__init__` sets up, so a part reads as what it needs, and
holds the checks every part makes (writable, known source, known host, a set named by the
user) and the count of restored bytes for the metrics.
What always holds: a read-only daemon refuses every write with FAILED_PRECONDITION; a `host`
the user names (`--host H`) that the repository does not know is NOT_FOUND, with the hosts it
does know, before anything is read or changed for it. Known hosts: this daemon's own, every
host with a readable set in the repository, every host holding a lock object there
(`Repository.hosts`); a host whose sets were all forgotten is known no more.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from cairn.daemon.databases.postgres import archwatch, walarchive
from cairn.daemon.runtime.config import Config
from cairn.daemon.runtime.health import HealthRecord, StateRoom
from cairn.daemon.scheduling.jobs import JobManager
from cairn.fsio.records import Data, LaneData, Record
from cairn.store.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from cairn.store.locations import is_s3
from cairn.store.model import BackupSet, Progress
from cairn.store.repository import Repository

ProgressFn = Callable[[Progress], None]
HOSTS_SHOWN = 10  # known hosts an unknown host's error names; the rest are counted
NextRunsFn = Callable[[], Any]


class ServicePart:
    """What every part of the service reads; `CairnService.__init__` sets it up."""

    _config: Config
    repo: Repository
    jobs: JobManager
    health: HealthRecord
    archive: walarchive.ArchiveHealth
    archiver_clocks: archwatch.PendingClocks  # since when each server's WAL waits (status, check-db, metrics)
    tracker: Any  # the daemon's ChangeTracker (cairn.daemon.changes.tracker) when it watches
    retention: Any  # the RetentionRunner (cairn.daemon.scheduling.retention) when gc is scheduled
    state_room: StateRoom | None = None  # whether the state directory takes writes (None: not checked)
    journal_waiting: str | None = None  # why the change journal is not started yet, else None
    _metrics: Any  # a cairn.daemon.runtime.metrics.Metrics, or None
    _next_runs: NextRunsFn | None
    _started: float
    _machine: str
    _machine_id: str
    _boot_id: str
    _lock: threading.Lock

    @property
    def hostname(self) -> str:
        """The host name this daemon's sets record."""
        return self._hostname

    @property
    def _hostname(self) -> str:
        """The host name sets record: [daemon] host, else the machine's."""
        return self._config.daemon.host or self._machine

    def resolve(self, ref: str, source: str = "", host: str = "") -> BackupSet:
        """The set named by a full id, a unique prefix or 'latest' (per source; with no `host`,
        this host's newest, see store/snapshots/sets.py resolve)."""
        if not ref:
            raise InvalidArgumentError("no set given: name a set id, a unique prefix or 'latest'")
        if source:
            self._require_known_source(source)
        self._require_known_host(host)
        return self.repo.get_set(ref, source or None, host or None, own_host=self._hostname,
                                 own_machine=self._machine_id)

    def refuse_own_places(self, target: str, delete: bool = False) -> None:
        """Refuse a target the daemon would write (a local restore, a delta) that is, or lies in,
        its repository or state directory; with `delete` (extras removed) also one that holds
        either, or its socket. A delta with --delete into the state directory removed the running
        daemon's journal and lock."""
        places = [("state directory", self._config.daemon.state_dir, True),
                  ("socket", self._config.daemon.socket, False)]  # only its own file: others may share its directory
        if not is_s3(self._config.repository.path):
            places.append(("repository", self._config.repository.path, True))
        t = os.path.realpath(target)
        for what, place, whole in places:
            p = os.path.realpath(place)
            inside = whole and (t == p or t.startswith(p.rstrip(os.sep) + os.sep))
            holds = delete and p.startswith(t.rstrip(os.sep) + os.sep)
            if inside or holds:
                raise FailedPreconditionError(
                    f"restore target '{target}' {'lies in' if inside else 'holds'} the daemon's {what} ('{place}'): "
                    "the daemon never restores there", hint="choose a target outside the daemon's own directories")

    def _require_writable(self, what: str) -> None:
        if self._config.daemon.read_only:
            raise FailedPreconditionError(
                f"the daemon serves the repository read-only: {what} is not possible",
                hint="restart cairnd without --read-only",
            )

    def _require_state_room(self, what: str) -> None:
        """Refuse what must write the state directory while its file system is full: one line
        naming the directory and "no space left" (daemon/runtime/health.py, StateRoom)."""
        if self.state_room is not None:
            self.state_room.require(what)

    def _require_known_source(self, source: str) -> None:
        if any(s.name == source for s in self._config.sources):
            return
        if self.repo.list_sets(source):
            return
        raise NotFoundError(f"unknown source '{source}'")

    def _require_known_host(self, host: str) -> None:
        """Refuse a `host` the repository does not know (see the module doc), naming those it does:
        a misspelt host would otherwise list no sets, prune nothing or remove no lock, and say
        nothing. A write-only daemon sees only its own sets, so it refuses any other host as such."""
        if not host or host == self._hostname:
            return
        self.repo.refuse_other_host(host, self._hostname)
        known = self.repo.hosts() | {self._hostname}
        if host in known:
            return
        names = sorted(known)
        shown = ", ".join(shown_host(h, self._hostname) for h in names[:HOSTS_SHOWN])
        more = f" and {len(names) - HOSTS_SHOWN} more" if len(names) > HOSTS_SHOWN else ""
        unreadable = len(self.repo.unreadable_sets)
        damaged = (f"; {unreadable} set object{'s' if unreadable != 1 else ''} cannot be read ('cairn verify')"
                   if unreadable else "")
        raise NotFoundError(f"unknown host '{host}': the repository holds no set or lock of it; known hosts: "
                            f"{shown}{more}{damaged}",
                            hint="a host is known while a set it took is in the repository: one whose sets were "
                                 "all forgotten is not; the HOST column of 'cairn sets' names each set's host")

    def _counted(self, records: Iterator[Record]) -> Iterator[Record]:
        """Pass records through, counting the file bytes sent for the metrics."""
        sent = 0
        try:
            for rec in records:
                if isinstance(rec, (Data, LaneData)):
                    sent += len(rec.data)
                yield rec
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
            if self._metrics is not None and sent:
                self._metrics.record_restore(sent)


def _rel(path: str) -> str:
    """A set path from user input: '/'-separated, relative to the set root."""
    return path.strip("/")


def shown_host(host: str, own: str) -> str:
    """A host name in a list for people: this daemon's own is marked."""
    return f"{host} (this daemon's)" if host == own else host
