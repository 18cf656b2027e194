"""The daemon's service core: the domain operations that the RPC layer exposes.

`CairnService` holds the current `Config`, the open `Repository` and the `JobManager`, and
speaks only domain types (BackupSet, TreeEntry, Progress, ...); it knows nothing of gRPC.
Its operations live in one part per responsibility, each in its own module: status
(`status.py`), backups (`backups.py`), reading and restoring files (`restores.py`), databases
and WAL (`databases.py`), verify, prune, retention and keys (`maintenance.py`); the state and
checks they share are in `part.py`. This module builds the state and owns the lifecycle.
What always holds: a backup runs as a job (one per source, in its own thread); reads run in
the caller's thread alongside it; a read-only daemon refuses every write with
FAILED_PRECONDITION; the configuration is swapped whole on reload, never edited in place.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from cairn.daemon.databases.postgres import archwatch, walarchive
from cairn.daemon.operations import hostname
from cairn.daemon.operations.backups import BackupPart
from cairn.daemon.operations.databases import DatabasePart
from cairn.daemon.operations.maintenance import MaintenancePart
from cairn.daemon.operations.part import NextRunsFn
from cairn.daemon.operations.restores import RestorePart
from cairn.daemon.operations.status import StatusPart
from cairn.daemon.runtime.config import Config
from cairn.daemon.runtime.health import HealthRecord, StateRoom
from cairn.daemon.scheduling.jobs import JobManager
from cairn.store.repository import Repository


class CairnService(StatusPart, BackupPart, RestorePart, DatabasePart, MaintenancePart):
    """Domain operations of the daemon over one repository and the current configuration."""

    def __init__(
        self,
        config: Config,
        repo: Repository,
        *,
        next_runs: NextRunsFn | None = None,
        metrics: Any = None,
    ) -> None:
        self._config = config
        self.repo = repo
        self.jobs = JobManager(on_done=self._job_done)
        self._next_runs = next_runs
        self._metrics = metrics  # a cairn.daemon.runtime.metrics.Metrics, or None
        self._started = time.time()
        self._machine = socket.gethostname()
        self._machine_id = hostname.machine_id()  # recorded in each set (daemon/operations/hostname.py)
        self._boot_id = hostname.boot_id()  # so is the boot: clones that kept the machine id differ there
        self.retention: Any = None  # the RetentionRunner (cairn.daemon.scheduling.retention) when gc is scheduled
        self._lock = threading.Lock()
        self.archive = walarchive.ArchiveHealth()  # WAL pushes seen by this daemon, for status
        self.archiver_clocks = archwatch.PendingClocks()  # since when each server's WAL waits (status, metrics)
        self.tracker: Any = None  # the daemon's ChangeTracker (cairn.daemon.changes.tracker) when it watches
        self.state_room: StateRoom | None = None  # whether the state directory takes writes (set by the daemon)
        self.journal_waiting: str | None = None  # why the change journal is not started yet (a full state directory)
        self.health = HealthRecord(None if config.daemon.read_only else config.daemon.state_dir)

    # ---- configuration ----

    @property
    def config(self) -> Config:
        return self._config

    def reload(self, config: Config) -> None:
        """Use `config` from now on; running jobs keep the request they started with."""
        with self._lock:
            self._config = config

    def set_next_runs(self, next_runs: NextRunsFn | None) -> None:
        self._next_runs = next_runs

    # ---- lifecycle ----

    def shutdown(self) -> None:
        """Refuse new jobs and cancel the running ones; a prune or repair waiting for the
        repository lock stops waiting."""
        self.jobs.shutdown()
        self.repo.locks.stopping.set()

    def stopping(self) -> bool:
        """True once `shutdown` began (the daemon stops)."""
        return self.repo.locks.stopping.is_set()

    def wait_idle(self, timeout: float) -> bool:
        return self.jobs.wait_idle(timeout)
