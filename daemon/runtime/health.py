"""What the operator must still see after a restart: the last set of each source that did not
succeed, and the newest WAL segment archived with the time it arrived.

A set being taken is recorded when it begins and dropped when it ends, so a set cut short by a
kill -9 or a power loss is reported at the next start as that source's last failure (unless a
set of the source committed at or after its beginning: then only the end's record was lost).

The record lives in `<state_dir>/health.json`, replaced atomically on every change, so a
kill -9 leaves the previous or the new record, never a torn one; an unreadable record is
logged and started afresh (it only feeds status and metrics, never a decision about data).
`restore_metrics` fills the Prometheus gauges at start from this record and the repository's
sets, so alerts on the age of the last success neither fire falsely nor go blind.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from cairn.fsio.durable import write_atomic
from cairn.store.model import BackupSet

log = logging.getLogger(__name__)

FILE_NAME = "health.json"
MAX_MESSAGE = 500


@dataclass(frozen=True)
class Failure:
    level: str
    time: float
    message: str
    status: str = "failed"


class HealthRecord:
    """Last failure per source and last archived WAL segment, persisted in the state directory."""

    def __init__(self, state_dir: str | None) -> None:
        self._path = os.path.join(state_dir, FILE_NAME) if state_dir else None
        self._lock = threading.Lock()
        self.failures: dict[str, Failure] = {}
        self.wal_segment = ""
        self.wal_time = 0.0
        self.running: dict[str, dict[str, Any]] = {}  # source -> {"level", "time"} of the set being taken
        self.interrupted: dict[str, dict[str, Any]] = {}  # sets a previous daemon was taking when it stopped
        self._load()
        if self.running:
            self.interrupted, self.running = self.running, {}

    def _load(self) -> None:
        if self._path is None or not os.path.exists(self._path):
            return
        try:
            with open(self._path, encoding="utf-8") as handle:
                data = json.load(handle)
            self.failures = {name: Failure(**value) for name, value in data.get("failures", {}).items()}
            self.wal_segment = str(data.get("wal", {}).get("segment", ""))
            self.wal_time = float(data.get("wal", {}).get("time", 0.0))
            self.running = {str(k): {"level": str(v["level"]), "time": float(v["time"])}
                            for k, v in data.get("running", {}).items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("unable to read '%s', starting a new one: %s", self._path, exc)
            self.failures, self.wal_segment, self.wal_time, self.running = {}, "", 0.0, {}

    def _save(self) -> None:
        if self._path is None or not os.path.isdir(os.path.dirname(self._path)):
            return
        data = {"failures": {name: asdict(f) for name, f in self.failures.items()},
                "wal": {"segment": self.wal_segment, "time": self.wal_time}, "running": self.running}
        try:
            write_atomic(self._path, json.dumps(data, indent=1).encode())
        except OSError as exc:
            log.warning("unable to write '%s': %s", self._path, exc.strerror or exc)

    def set_failed(self, source: str, level: str, message: str, status: str = "failed",
                   when: float | None = None) -> None:
        """Remember that a set of `source` did not succeed."""
        text = " ".join(message.split())[:MAX_MESSAGE] or status
        with self._lock:
            self.failures[source] = Failure(level, time.time() if when is None else when, text, status)
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
            self.set_failed(source, rec["level"], "the daemon stopped while this set was being taken (killed, "
                            "or the host went down): nothing of it was committed", status="aborted",
                            when=rec["time"])
            out.append(source)
        self.interrupted = {}
        with self._lock:
            self._save()
        return out

    def failure(self, source: str) -> Failure | None:
        with self._lock:
            return self.failures.get(source)

    def wal_stored(self, name: str, when: float | None = None) -> None:
        """Remember the newest WAL segment archived (history and other files are ignored)."""
        if len(name) != 24:
            return
        with self._lock:
            if name <= self.wal_segment:
                return
            self.wal_segment, self.wal_time = name, time.time() if when is None else when
            self._save()


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
    """Set the gauges a restart would otherwise reset: last success per source and level, last WAL."""
    for (source, level), when in last_successes(sets).items():
        metrics.last_success.labels(source, level).set(when)
    if health.wal_time:
        metrics.wal_last_archived.set(health.wal_time)
