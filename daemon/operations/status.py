"""What `cairn status` shows: the daemon, and each source's sets, job, journal and schedule.

The shape is typed (`DaemonState`, `SourceState`); the gRPC adapter maps it to the wire.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cairn import __version__
from cairn.daemon.operations.part import ServicePart
from cairn.daemon.runtime.config import SourceConfig
from cairn.daemon.runtime.health import Failure
from cairn.daemon.scheduling.jobs import BackupJob
from cairn.store.model import BackupSet

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DaemonState:
    version: str
    pid: int
    started: float
    repository: str
    read_only: bool
    config_path: str
    hostname: str


@dataclass(frozen=True)
class SourceState:
    name: str
    paths: tuple[str, ...]
    configured: bool
    watch: bool
    journal: str
    last: dict[str, BackupSet]
    running: BackupJob | None
    next_runs: dict[str, float]
    sets: int
    journal_state: str = ""  # complete, rescan, or empty when the source is not tracked
    journal_reasons: tuple[str, ...] = ()
    oldest_unprotected_age: float | None = None
    pending_paths: int = 0
    watches: int = 0
    last_failure: Failure | None = None  # daemon/runtime/health.py
    rpo: float | None = None
    last_success: float = 0.0


def set_status(s: BackupSet) -> str:
    """The one-word status of a committed set: what it records, else 'fuzzy' or 'ok'."""
    status = s.extra.get("status") if isinstance(s.extra, dict) else None
    if isinstance(status, str) and status:
        return status
    return "fuzzy" if s.stats.fuzzy_paths else "ok"


class StatusPart(ServicePart):
    """The daemon's and its sources' state, read without side effects."""

    def status(self) -> tuple[DaemonState, list[SourceState]]:
        """The daemon and every source: configured ones first, then those only known from sets."""
        config = self._config
        daemon = DaemonState(
            version=__version__,
            pid=os.getpid(),
            started=self._started,
            repository=config.repository.path,
            read_only=config.daemon.read_only,
            config_path=config.path or "",
            hostname=self._hostname,
        )
        sets = self.repo.list_sets()
        running = self.jobs.running()
        next_runs = self._collect_next_runs()
        names = [s.name for s in config.sources]
        names += sorted({s.source for s in sets} - set(names))
        configured = {s.name: s for s in config.sources}
        states = []
        for name in names:
            own = [s for s in sets if s.source == name]
            src = configured.get(name)
            states.append(
                SourceState(
                    name=name,
                    paths=src.paths if src else (own[-1].paths if own else ()),
                    configured=src is not None,
                    watch=bool(src and src.watch),
                    **self._journal_view(src),
                    last={s.level: s for s in own},  # oldest first, so the latest per level wins
                    running=running.get(name),
                    next_runs=next_runs.get(name, {}),
                    sets=len(own),
                    last_failure=self.health.failure(name),
                    rpo=src.rpo if src else None,
                    last_success=max((s.time_end for s in own if set_status(s) != "failed"), default=0.0),
                )
            )
        return daemon, states

    def _journal_view(self, src: SourceConfig | None) -> dict[str, Any]:
        """The change journal's state of a configured source, as SourceState fields."""
        if src is None:
            return {"journal": ""}
        if self.tracker is None or not src.watch:
            why = "read-only daemon" if self._config.daemon.read_only else "watch = false"
            return {"journal": f"not tracked ({why}): sets walk and compare with the base"}
        try:
            st = self.tracker.status(src.name)
        except Exception:
            log.exception("unable to read the change journal state of source '%s'", src.name)
            return {"journal": "unknown (the change journal could not be read)"}
        reasons = tuple(st["reasons"])
        text = "complete" if st["state"] == "complete" else "rescan pending: " + "; ".join(reasons)
        return {
            "journal": text,
            "journal_state": st["state"],
            "journal_reasons": reasons,
            "oldest_unprotected_age": st["oldest_unprotected_age"],
            "pending_paths": int(st["pending_paths"]),
            "watches": int(st["watches"]),
        }

    def _collect_next_runs(self) -> dict[str, dict[str, float]]:
        """The scheduler's next runs as {source: {level: epoch seconds}}."""
        if self._next_runs is None:
            return {}
        try:
            raw = self._next_runs() or {}
        except Exception:
            log.exception("unable to compute next scheduled runs")
            return {}
        out: dict[str, dict[str, float]] = {}
        for source, levels in raw.items():
            for level, when in (levels or {}).items():
                if isinstance(when, datetime):
                    out.setdefault(source, {})[level] = when.timestamp()
                elif isinstance(when, int | float):
                    out.setdefault(source, {})[level] = float(when)
        return out
