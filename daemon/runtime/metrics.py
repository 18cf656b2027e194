"""Prometheus metrics of the daemon, served over HTTP on a loopback address only.

All metrics live in a private CollectorRegistry (never the process-global one), so several
daemons or tests in one process do not collide. The `record_*` helpers are the only way the
rest of the daemon touches them, which keeps names and labels in this one file; the one gauge read
when it is scraped (the age of the oldest change no set holds, which grows with no event) gets
its source through `watch_unprotected`, and each PostgreSQL server's archiver as the daemon last
sampled it (daemon/databases/postgres/archwatch.py) through `watch_archivers`. The registry also
carries prometheus_client's collector of Python's garbage collections (python_gc_*: collections,
objects collected and uncollectable, per generation), the figure that shows the collector
settings of daemon/runtime/heap.py at work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from cairn.daemon.runtime.config import is_loopback, split_address
from cairn.store.errors import InvalidArgumentError
from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

log = logging.getLogger(__name__)

SUCCESS = "success"
UNPROTECTED = "cairn_source_unprotected_since_timestamp_seconds"
UNPROTECTED_HELP = ("Unix time the oldest change no committed set holds was seen, per source with an RPO "
                    "(absent: nothing waits).")
# Backup sets run from seconds (a quiet incremental) to hours (a first full).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, float("inf"))


class Metrics:
    """The daemon's counters, gauges and histograms plus their optional HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        GCCollector(registry=registry)
        per_set = ("source", "level")
        self.sets = Counter(
            "cairn_sets", "Backup sets finished, by status (success, failed, aborted).",
            (*per_set, "status"), registry=registry,
        )
        self.set_bytes_added = Counter(
            "cairn_set_bytes_added", "New (deduplicated, compressed) bytes stored by sets.",
            per_set, registry=registry,
        )
        self.set_duration = Histogram(
            "cairn_set_duration_seconds", "Wall time of backup sets.",
            per_set, buckets=DURATION_BUCKETS, registry=registry,
        )
        self.set_failures = Counter(
            "cairn_set_failures", "Backup sets that did not succeed.", per_set, registry=registry
        )
        self.last_success = Gauge(
            "cairn_last_success_timestamp_seconds",
            "Unix time the last successful set of a source and level finished.", per_set, registry=registry,
        )
        self.last_failure = Gauge(
            "cairn_last_failure_timestamp_seconds",
            "Unix time the last set of a source and level that did not succeed ended.", per_set, registry=registry,
        )
        self.last_thaw_failure = Gauge(
            "cairn_last_thaw_failure_timestamp_seconds",
            "Unix time a quiesce window of a source last failed to thaw (the application may still be "
            "stopped); a set that succeeds after it thawed again.", ("source",), registry=registry,
        )
        self.restore_bytes = Counter("cairn_restore_bytes", "File bytes sent to restores.", registry=registry)
        self.backstop_found = Counter(
            "cairn_journal_backstop_found",
            "Changed paths only a backstop scan found (the watcher missed them).",
            ("source",), registry=registry,
        )
        self.wal_archived = Counter("cairn_wal_archived", "WAL segments archived.", registry=registry)
        self.wal_archive_failures = Counter(
            "cairn_wal_archive_failures", "WAL segments that failed to archive.", registry=registry
        )
        self.wal_last_archived = Gauge(
            "cairn_wal_last_archived_timestamp_seconds", "Unix time the last WAL segment was archived.",
            registry=registry,
        )
        self.verifies = Counter(
            "cairn_verifies", "Verify runs finished, by outcome (ok, damaged, failed, cancelled).",
            ("outcome",), registry=registry,
        )
        self.verify_running = Gauge("cairn_verify_running", "Verify runs in progress.", registry=registry)
        self.started = Gauge(
            "cairn_daemon_start_timestamp_seconds", "Unix time this daemon started (absent: no daemon).",
            registry=registry,
        )
        self.started.set(time.time())
        self.rpo = Gauge(
            "cairn_source_rpo_seconds", "The configured RPO of a source (sources without one are absent).",
            ("source",), registry=registry,
        )
        self._unprotected: Callable[[], dict[str, float]] = dict
        registry.register(_Unprotected(lambda: self._unprotected()))
        self._archivers: Callable[[], dict[str, dict[str, float]]] = dict
        registry.register(_Archivers(lambda: self._archivers()))
        self._server = None
        self._server_thread: threading.Thread | None = None

    # -- recording ----------------------------------------------------------------------------

    def record_set(self, source: str, level: str, status: str, bytes_added: int = 0,
                   duration: float | None = None, finished_at: float | None = None) -> None:
        """Count one finished set; `status` is "success" or why it did not succeed."""
        self.sets.labels(source, level, status).inc()
        if bytes_added:
            self.set_bytes_added.labels(source, level).inc(bytes_added)
        if duration is not None:
            self.set_duration.labels(source, level).observe(duration)
        if status == SUCCESS:
            self.last_success.labels(source, level).set(time.time() if finished_at is None else finished_at)
        else:
            self.set_failures.labels(source, level).inc()
            self.last_failure.labels(source, level).set(time.time())

    def record_thaw_failure(self, source: str, when: float | None = None) -> None:
        """A window of `source` did not thaw (its set may have committed all the same)."""
        self.last_thaw_failure.labels(source).set(time.time() if when is None else when)

    def set_rpos(self, rpos: dict[str, float]) -> None:
        """The configured RPO per source, replacing the previous set (after a reload)."""
        self.rpo.clear()
        for source, seconds in rpos.items():
            self.rpo.labels(source).set(seconds)

    def watch_unprotected(self, since: Callable[[], dict[str, float]]) -> None:
        """Where the RPO gauge comes from: `since()` gives, per source with an RPO whose changes
        the journal follows, when its oldest change no committed set holds was seen (a source
        with nothing waiting is left out). Asked at every scrape."""
        self._unprotected = since

    def watch_archivers(self, figures: Callable[[], dict[str, dict[str, float]]]) -> None:
        """Where the archiver metrics come from: `figures()` gives, per PostgreSQL database, its
        server's archiver as last sampled (archwatch.ArchiverSampler.figures). Asked at every scrape."""
        self._archivers = figures

    def record_restore(self, nbytes: int) -> None:
        """Count bytes of file data sent to a restore."""
        self.restore_bytes.inc(nbytes)

    def record_backstop_found(self, source: str, count: int = 1) -> None:
        """Count paths found changed by a backstop scan that the journal had not recorded."""
        if count:
            self.backstop_found.labels(source).inc(count)

    def record_wal(self, ok: bool, when: float | None = None) -> None:
        """Count one WAL archive attempt."""
        if ok:
            self.wal_archived.inc()
            self.wal_last_archived.set(time.time() if when is None else when)
        else:
            self.wal_archive_failures.inc()

    def record_verify_start(self) -> None:
        """One more verify is running."""
        self.verify_running.inc()

    def record_verify(self, outcome: str) -> None:
        """A verify ended: "ok", "damaged" (it found errors), "failed" or "cancelled"."""
        self.verify_running.dec()
        self.verifies.labels(outcome).inc()

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    # -- HTTP endpoint ------------------------------------------------------------------------

    def start_http(self, address: str) -> tuple[str, int]:
        """Serve /metrics on `address` ("127.0.0.1:9721"; port 0 picks one); return (host, port).

        Raises InvalidArgumentError for a non-loopback address: metrics name sources and
        paths' owners' activity and are not meant for the network.
        """
        host, port = split_address(address)
        if not is_loopback(host):
            raise InvalidArgumentError(
                f"refusing to serve metrics on '{address}': expected a loopback address"
            )
        if self._server is not None:
            raise InvalidArgumentError("the metrics endpoint is already running")
        bind_host = "127.0.0.1" if host == "localhost" else host
        self._server, self._server_thread = start_http_server(port, addr=bind_host, registry=self.registry)
        return bind_host, self._server.server_port

    def stop_http(self) -> None:
        """Stop the HTTP endpoint if it runs."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(5)
            self._server_thread = None


class _Unprotected:
    """The UNPROTECTED gauge, read from the change journal when it is scraped (a change's age
    grows without an event to record it)."""

    def __init__(self, since: Callable[[], dict[str, float]]) -> None:
        self._since = since

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(UNPROTECTED, UNPROTECTED_HELP, labels=("source",))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(UNPROTECTED, UNPROTECTED_HELP, labels=("source",))
        try:
            values = self._since()
        except Exception:  # a scrape shows the rest; the journal's own errors are logged where they arise
            log.exception("unable to read the oldest unprotected changes for the metrics")
            values = {}
        for source, when in sorted(values.items()):
            family.add_metric((source,), when)
        yield family


# name, help, the figure (archwatch.ArchiverSampler.figures) of each archiver metric; gauges but the counter
ARCHIVER_UP = ("cairn_wal_archiver_up", "1 when the daemon's last sample of a PostgreSQL database's archiver "
               "reached its server, 0 when it could not (the other cairn_wal_archiver metrics are then absent).", "up")
ARCHIVER_GAUGES = (
    ("cairn_wal_segments_pending", "Finished WAL segments the server has not archived yet (0 on a standby).",
     "pending"),
    ("cairn_wal_pending_since_timestamp_seconds", "Unix time the oldest WAL segment waiting for the archive began "
     "to wait (its .ready file on the server; without pg_monitor, when first seen finished; absent: none waits).",
     "pending_since"),
    ("cairn_wal_archive_mode_on", "1 when the server's archive_mode is on or always, 0 when it archives nothing.",
     "archive_mode_on"),
    ("cairn_wal_archive_command_cairn", "1 when the server's archive_command archives into this repository "
     "('cairn wal-push' to this daemon, or its last archived file is here), 0 when it does not.", "command_cairn"),
)
ARCHIVER_FAILED = ("cairn_wal_archiver_failed", "Failed archive attempts the server counts (pg_stat_archiver."
                   "failed_count; reset with the server's statistics).", "failed_count")


class _Archivers:
    """The archiver metrics of each PostgreSQL database, from the daemon's last sample of its server."""

    def __init__(self, figures: Callable[[], dict[str, dict[str, float]]]) -> None:
        self._figures = figures

    def _families(self) -> list[tuple[GaugeMetricFamily | CounterMetricFamily, str]]:
        gauges = [(GaugeMetricFamily(name, text, labels=("database",)), key)
                  for name, text, key in (ARCHIVER_UP, *ARCHIVER_GAUGES)]
        name, text, key = ARCHIVER_FAILED
        return [*gauges, (CounterMetricFamily(name, text, labels=("database",)), key)]

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for family, _ in self._families():
            yield family

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            figures = self._figures()
        except Exception:  # a scrape shows the rest
            log.exception("unable to read the sampled WAL archivers for the metrics")
            figures = {}
        families = self._families()
        for database, values in sorted(figures.items()):
            for family, key in families:
                value = values.get(key)
                if value is None or (key == "pending_since" and not value):
                    continue
                family.add_metric((database,), value)
        for family, _ in families:
            yield family
