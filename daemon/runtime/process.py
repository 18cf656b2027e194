"""The running daemon: its parts, the signal loop, reload and shutdown (`serve`).

Start-up order: logging, the lock of the state directory (a second daemon on it exits 1
before touching anything, see `instance`), the thaw of quiesce windows a previous run died
inside, repository and its lock, metrics endpoint, the service core, scheduler, the RPC
endpoints, then READY=1 and watchdog pings. The main thread only waits for signals: SIGHUP
reloads the configuration (an invalid file is logged and the running configuration kept),
SIGTERM/SIGINT stop: STOPPING=1, no new calls or jobs, running backups cancelled (their
database tools killed, their quiesce windows thawed; the store abandons an unfinished set
safely), a retention run stopped before its next step (logged as interrupted, not as failed),
and the process exits within daemon.shutdown_timeout whatever happens — a backup still running
then has its tools killed and its window thawed before the exit. Streaming calls
still blocked in a send after the server's grace (a suspended client) are named in one warning
and their threads are not joined at the exit. A stop that blocks past that and the time the
thaw hooks may take (`thaw_allowance`), or an interpreter's exit that hangs after a clean
stop, is ended EXIT_GRACE seconds later by an exit guard (exitguard.py), with every thread's
stack on stderr.

This module and `main` are the only ones that wire the daemon's rooms together; only `main`
imports this one, after the arguments and the configuration were found good.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from cairn import __version__
from cairn.daemon.changes.backstop import Backstop
from cairn.daemon.changes.rpo import RpoKeeper
from cairn.daemon.changes.tracker import ChangeTracker
from cairn.daemon.databases.archive import PostgresSegments
from cairn.daemon.databases.postgres.archwatch import ArchiverSampler
from cairn.daemon.databases.tools import kill_running
from cairn.daemon.operations.maintenance import restore_repair_mark
from cairn.daemon.operations.service import CairnService
from cairn.daemon.rpc.server import RpcServer
from cairn.daemon.rpc.servicer import CairnServicer
from cairn.daemon.runtime import heap, preflight
from cairn.daemon.runtime.arguments import EXIT_FAILURE, EXIT_OK, with_overrides
from cairn.daemon.runtime.config import Config, load_config
from cairn.daemon.runtime.config_schema import S3_KEYS
from cairn.daemon.runtime.exitguard import ExitGuard
from cairn.daemon.runtime.health import HealthRecord, StateRoom, no_room, restore_metrics
from cairn.daemon.runtime.instance import InstanceLock, lock_local_repository, lock_state_dir
from cairn.daemon.runtime.logs import setup_logging
from cairn.daemon.runtime.repokeys import attach_write_only_cache, open_repository
from cairn.daemon.runtime.sdnotify import Notifier, WatchdogPinger, watchdog_interval
from cairn.daemon.runtime.signals import SignalInbox
from cairn.daemon.scheduling.retention import RetentionRunner
from cairn.daemon.scheduling.scheduler import Scheduler, soonest_runs
from cairn.daemon.windows.quiesce import WindowRecovery, open_windows, recover_windows, thaw_open_windows
from cairn.errors import CairnError
from cairn.store.repository import Repository

if TYPE_CHECKING:
    from cairn.daemon.runtime.metrics import Metrics

log = logging.getLogger("cairn.daemon")

STATUS_INTERVAL = 5.0
# After the stop's own deadline: the seconds its last steps and the interpreter's exit may take.
EXIT_GRACE = 3.0
# Keys that are bound when the daemon starts; a reload that changes them only warns.
RESTART_KEYS = (
    "socket", "state_dir", "socket_mode", "socket_group", "listen", "tls_cert", "tls_key", "token_file",
    "metrics", "read_only",
)


class Daemon:
    """The running daemon: its parts, the signal loop, reload and shutdown."""

    def __init__(self, config: Config, args: argparse.Namespace) -> None:
        self.config = config
        self.args = args
        self.notifier = Notifier()
        self.repo: Repository | None = None
        self.metrics: Metrics | None = None
        self.service: CairnService | None = None
        self.scheduler: Scheduler | None = None
        self.server: RpcServer | None = None
        self.pinger: WatchdogPinger | None = None
        self.tracker: ChangeTracker | None = None
        self.rpo: RpoKeeper | None = None
        self.backstop: Backstop | None = None
        self.retention: RetentionRunner | None = None
        self.archivers: ArchiverSampler | None = None
        self._signals: collections.deque[int] = collections.deque()
        self._inbox = SignalInbox()
        self._last_status = ""
        self._locks: list[InstanceLock] = []
        self.recovered_windows: dict[str, WindowRecovery] = {}  # windows left open by a previous run, thawed at start
        self.blocked_calls = 0  # at stop: calls whose threads are blocked in a send for good (see serve)
        self.room = StateRoom(config.daemon.state_dir)  # whether the state directory takes writes
        self.journal_waits: str | None = None  # the change journal waits for room in the state directory

    # ---- start ----

    def start(self) -> None:
        cfg = self.config
        read_only = cfg.daemon.read_only
        # Check everything the configuration names before anything is created or changed.
        preflight.check_start(cfg)
        # Then: this daemon alone may use its state directory.
        self._locks.append(lock_state_dir(cfg.daemon.state_dir))
        # Then thaw every quiesce window a previous run died inside.
        self.thaw_leftover_windows()
        preflight.warn_unreachable_databases(cfg)
        preflight.warn_missing_hooks(cfg)
        preflight.warn_overlapping_sources(cfg)
        # The repository first: without it there is nothing to serve (never created here). It
        # is locked before it is read, so a second daemon on it is refused (a local one; on
        # object storage the repository's own locks are all there is).
        path = cfg.repository.path
        if os.path.isdir(path):
            self._locks.append(lock_local_repository(path, shared=read_only))
        self.repo = open_repository(cfg.repository, read_only=read_only,
                                    cache_dir=os.path.join(cfg.daemon.state_dir, "cache"),
                                    where=preflight.secret_named_at(cfg))
        attach_write_only_cache(self.repo, cfg.daemon.state_dir, cfg.repository.gc)  # a write-only key's own sets
        self.repo.locks.daemon_host = cfg.daemon.host or socket.gethostname()  # locks name hosts as sets do
        self.repo.gc_grace = cfg.repository.gc_grace  # garbage collection's margin (store/maintenance/prune.py)
        self.repo.uploads = cfg.repository.uploads  # pack uploads in flight per backup (None: backend's default)
        self.repo.set_segment_rules(PostgresSegments())  # the store is given PostgreSQL's archive rules
        restore_repair_mark(self.repo, cfg.daemon.state_dir)  # after a repair: the next sets are fulls
        # Metrics next, so the first set is counted.
        if cfg.daemon.metrics:
            from cairn.daemon.runtime.metrics import Metrics  # prometheus_client: only where metrics are served

            self.metrics = Metrics()
            host, port = self.metrics.start_http(cfg.daemon.metrics)
            log.info("metrics on http://%s:%d/metrics", host, port)
        self.service = CairnService(cfg, self.repo, metrics=self.metrics)
        self.service.recovered_windows = dict(self.recovered_windows)
        if not read_only:  # a read-only daemon writes no state: nothing to refuse
            self.service.state_room = self.room
        self.restore_metrics()
        health = self.service.health
        if health.interrupted:  # sets the previous daemon was taking when it stopped: status shows them
            host = cfg.daemon.host or socket.gethostname()
            for source in health.settle_interrupted([s for s in self.repo.list_sets() if s.hostname == host]):
                # One warning a source: a window thawed at this start already said the daemon died in it.
                level = logging.INFO if source in self.recovered_windows else logging.WARNING
                log.log(level, "source '%s': the previous daemon stopped while it took a set; nothing of it was "
                        "committed", source)
        # The change journal watches before we serve, so the first set can already use it; on a
        # full state directory it waits for room (run() starts it then), and the daemon serves.
        if not read_only:
            self._start_journal_or_wait(cfg)
            if self.metrics is not None:
                self.metrics.watch_unprotected(self._unprotected_since)
        # Timed backups only where something may be written; they start once we serve.
        if not read_only:
            # A run due while its source is busy waits for it; runs missed while stopped are caught up.
            jobs = self.service.jobs
            self.scheduler = Scheduler(cfg.schedules(), self.service.submit,
                                       running=lambda source: jobs.running().get(source),
                                       state_dir=cfg.daemon.state_dir)
            self.service.set_next_runs(self.scheduler.next_runs)
            self.service.waiting_runs = self.scheduler.waiting
            if cfg.repository.gc and not self.repo.write_only:  # a write-only key deletes nothing
                self.retention = RetentionRunner(cfg.repository.gc, self.service.run_retention,
                                                 health=self.service.health)
                self.retention.settle()  # a run the previous daemon did not finish: logged, shown in status
                self.service.retention = self.retention
        self._start_archiver_sampler()
        # Serve, then tell systemd we are ready.
        self.server = RpcServer(CairnServicer(self.service), cfg.daemon)
        self.server.start()
        if self.scheduler is not None:
            self.scheduler.start()
        for thread in (self.rpo, self.backstop, self.retention, self.archivers):
            if thread is not None:
                thread.start()
        interval = watchdog_interval()
        if interval:
            self.pinger = WatchdogPinger(self.notifier, interval, healthy=self.healthy)
            self.pinger.start()
        self.notifier.ready(self.status_text())
        log.info(
            "cairnd %s serving %s%s on %s",
            __version__, cfg.repository.path, " read-only" if read_only else "", cfg.daemon.socket,
        )
        log.info("garbage collector: thresholds %s, %d start-up objects frozen", gc.get_threshold(),
                 heap.freeze_startup())

    def _start_archiver_sampler(self) -> None:
        """The thread that samples each PostgreSQL server's archiver every [daemon] archiver_interval
        (databases and interval as the configuration says now; archwatch.py), for the metrics
        and for since when WAL waits in status."""
        service = self.service
        self.archivers = ArchiverSampler(
            lambda: [db for db in service.config.databases if db.kind == "postgres"],
            service.archiver_view, lambda: service.config.daemon.archiver_interval)
        if self.metrics is not None:
            self.metrics.watch_archivers(self.archivers.figures)

    def restore_metrics(self) -> None:
        """Gauges a restart would reset, from the repository's sets and the health record."""
        if self.metrics is not None and self.service is not None:
            host = self.config.daemon.host or socket.gethostname()  # this host's sets, not others' of one name
            restore_metrics(self.metrics, [s for s in self.repo.list_sets() if s.hostname == host], self.service.health)
            self.metrics.set_rpos({s.name: s.rpo for s in self.config.sources if s.rpo})

    def _start_journal(self, cfg: Config) -> None:
        """The change tracker (watches every watched source), RPO protection and the backstop scan."""
        service = self.service
        self.rpo = RpoKeeper(
            lambda: {s.name: s.rpo for s in service.config.sources if s.rpo and s.watch},
            self._oldest_unprotected, self._running_sources, service.submit,
        )
        self.tracker = ChangeTracker(cfg.daemon.state_dir, cfg.sources, max_watches=cfg.daemon.max_watches,
                                     on_change=self.rpo.poke)
        self.tracker.start()
        service.tracker = self.tracker
        self.backstop = Backstop(self.repo, self.tracker, lambda: service.config.sources,
                                 lambda: service.config.daemon.backstop_interval, self._running_sources,
                                 self.metrics, host=lambda: service.config.daemon.host or socket.gethostname())

    def _start_journal_or_wait(self, cfg: Config) -> None:
        """The change journal, unless the state directory is full: then the daemon starts without
        it (status, restores and reads work, sets walk their sources; quiesce windows, dumps into
        a directory and index repairs are refused, each with one line) and `run()` starts it once
        there is room again."""
        problem = self.room.problem(fresh=True)
        if problem is None:
            try:
                self._start_journal(cfg)
                return
            except CairnError as exc:  # the probe had room, the journal (its -shm file) did not
                if not no_room(exc):
                    raise
                problem = self.room.problem(fresh=True) or exc.message
        if self.tracker is not None:
            self.tracker.stop()
        self.tracker = self.rpo = self.backstop = self.service.tracker = None
        self.journal_waits = self.service.journal_waiting = problem
        log.error("%s: cairnd runs without its change journal (sets walk their sources) and refuses quiesce windows, "
                  "dumps into a directory and index repairs until there is room, which it notices by itself (no "
                  "restart needed); status, restores and reads work", problem)

    def _journal_once_room(self) -> None:
        """Start the change journal (with RPO protection and the backstop scan) that waited for
        room in the state directory, if there is some now."""
        if self.journal_waits is None or self.room.problem(fresh=True) is not None:
            return
        try:
            self._start_journal(self.config)
        except CairnError as exc:
            if self.tracker is not None:
                self.tracker.stop()
            self.tracker = self.rpo = self.backstop = self.service.tracker = None
            if exc.message != self.journal_waits:
                log.error("the change journal still cannot start: %s", exc.message)
            self.journal_waits = self.service.journal_waiting = exc.message
            return
        self.journal_waits = self.service.journal_waiting = None
        for thread in (self.rpo, self.backstop):
            if thread is not None:
                thread.start()
        log.info("state directory '%s' has room again: the change journal started (the next set of each watched "
                 "source walks it)", self.config.daemon.state_dir)

    def _oldest_unprotected(self, source: str) -> float | None:
        return self.tracker.oldest_unprotected(source) if self.tracker is not None else None

    def _unprotected_since(self) -> dict[str, float]:
        """For the metrics: per watched source with an RPO, when its oldest change no set holds
        was seen (sources with nothing waiting left out), as the RPO keeper sees it."""
        if self.tracker is None or self.service is None:
            return {}
        out = {}
        for source in self.service.config.sources:
            if source.rpo and source.watch:
                since = self._oldest_unprotected(source.name)
                if since is not None:
                    out[source.name] = since
        return out

    def _running_sources(self) -> set[str]:
        return set(self.service.jobs.running()) if self.service is not None else set()

    def thaw_leftover_windows(self) -> None:
        """Run the thaw hooks of windows left open by a daemon that died inside them (and log it).

        An unreadable record runs the thaw hooks its source's configuration names. A thaw that
        fails keeps its record (retried by the next set of the source and at the next start) and
        is the source's last failure in `cairn status` until then (health.settle_thaws); one that
        thawed is shown by `cairn status` under its source for as long as this daemon runs."""
        cfg = self.config
        configured = {s.name: s.quiesce for s in cfg.sources if s.quiesce is not None}
        failed: dict[str, str] = {}
        for rec in recover_windows(cfg.daemon.state_dir, configured=configured):
            if rec.ok:
                log.warning("source '%s': %s", rec.source, rec.summary())
                self.recovered_windows[rec.source] = rec
            else:
                log.error("source '%s': %s", rec.source, rec.summary())
                failed[rec.source] = rec.error or "a thaw hook failed"
        if not cfg.daemon.read_only:  # the status of a read-only daemon keeps no health record
            HealthRecord(cfg.daemon.state_dir).settle_thaws(failed)

    def healthy(self) -> bool:
        threads = (self.scheduler, self.rpo, self.backstop, self.retention, self.archivers)
        tracker_ok = self.tracker is None or self.tracker.healthy
        return tracker_ok and all(t is None or t.healthy for t in threads)

    def status_text(self) -> str:
        """systemd's STATUS line: the sources, each running backup (and its quiesce window, open
        now), then the next scheduled run."""
        cfg = self.config
        mode = "read-only, " if cfg.daemon.read_only else ""
        text = f"serving {mode}{len(cfg.sources)} source{'' if len(cfg.sources) == 1 else 's'}"
        if self.service is not None:
            windows = open_windows(cfg.daemon.state_dir)
            for source, job in sorted(self.service.jobs.running().items()):
                text += f"; {job.level} backup of '{source}' running {job.age():.0f}s"
                p = job.progress
                if p is not None:
                    text += f" ({p.phase}, {p.files_done} files)"
                w = windows.get(source)
                if w is not None:
                    text += f", its {w.mode} window {w.state} for {max(0.0, time.time() - w.opened):.0f}s"
        soonest = soonest_runs(self.scheduler.next_runs()) if self.scheduler is not None else None
        if soonest is not None:
            when, levels = soonest
            runs = ", ".join(f"{level} of '{source}'" for source, level in sorted(levels.items()))
            at = time.localtime(when)
            shown = time.strftime("%H:%M" if at[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M", at)
            text += f"; next: {runs} at {shown}"
        return text

    # ---- run ----

    def install_signals(self) -> None:
        self._inbox.install((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))

    def run(self) -> int:
        """Wait for signals; return the exit status once stopped."""
        while True:
            self._signals.extend(self._inbox.wait(STATUS_INTERVAL))
            if self.journal_waits is not None and not self._signals:
                self._journal_once_room()
            while self._signals:
                signum = self._signals.popleft()
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    return self.stop()
            text = self.status_text()
            if text != self._last_status:
                self._last_status = text
                self.notifier.status(text)

    # ---- reload ----

    def reload(self) -> None:
        """Load the config file again and take it whole, or refuse it whole: a file a start would
        refuse (it does not parse or validate, a source path is missing or not a directory) is
        one error line naming the problem, and the running configuration stays."""
        if self.config.path is None:
            log.info("SIGHUP: no configuration file to reload (started with --repo)")
            return
        self.notifier.reloading("reloading configuration")
        try:
            new = with_overrides(load_config(self.config.path), self.args)
            new, deferred = self._keep_bound(new)
            preflight.check_sources(new)  # what a start checks of the keys a reload takes
            if self.scheduler is not None:
                self.scheduler.reload(new.schedules())
            self._reload_retention(new)
        except CairnError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc.message)
            self.notifier.ready(f"reload failed: {exc.message}")
            return
        for key in deferred:  # only once the file is taken: a refused one changes nothing
            log.warning("%s changed: takes effect at the next start", key)
        self.config = new
        preflight.warn_missing_hooks(new)
        if self.repo is not None:
            self.repo.gc_grace = new.repository.gc_grace
            self.repo.uploads = new.repository.uploads
        self.service.reload(new)
        if self.metrics is not None:
            self.metrics.set_rpos({s.name: s.rpo for s in new.sources if s.rpo})
        if self.tracker is not None:
            self.tracker.reload(new.sources)
        if self.rpo is not None:
            self.rpo.poke()
        if self.archivers is not None:
            self.archivers.poke()  # a changed archiver_interval or set of databases, at once
        setup_logging(new.daemon.log_level)
        log.info("configuration reloaded from %s: %d sources", new.path, len(new.sources))
        self.notifier.ready(self.status_text())

    def _reload_retention(self, new: Config) -> None:
        """Follow a changed [repository] gc: reschedule, start or stop the retention thread."""
        if self.scheduler is None or self.repo.write_only:  # read-only, write-only: nothing is forgotten here
            return
        if new.repository.gc and self.retention is not None:
            self.retention.reload(new.repository.gc)
        elif new.repository.gc:
            self.retention = RetentionRunner(new.repository.gc, self.service.run_retention, health=self.service.health)
            self.service.retention = self.retention
            self.retention.start()
        elif self.retention is not None:
            self.retention.request_stop()
            self.retention = self.service.retention = None

    def _keep_bound(self, new: Config) -> tuple[Config, list[str]]:
        """`new` with what was bound at start kept (repository, sockets, ...), and the keys whose
        change the file asks for but that take effect only at the next start."""
        old = self.config
        changed = ["repository.path"] if new.repository.path != old.repository.path else []
        changed += [f"repository.{key}" for key in S3_KEYS  # the object-store client is made at start
                    if getattr(new.repository, key) != getattr(old.repository, key)]
        kept = {}
        for key in RESTART_KEYS:
            if getattr(new.daemon, key) != getattr(old.daemon, key):
                changed.append(f"daemon.{key}")
            kept[key] = getattr(old.daemon, key)
        repository = dataclasses.replace(new.repository, path=old.repository.path)
        return dataclasses.replace(new, repository=repository, daemon=dataclasses.replace(new.daemon, **kept)), changed

    def release_locks(self) -> None:
        """Let another daemon have the repository and the state directory."""
        while self._locks:
            self._locks.pop().release()

    # ---- stop ----

    def stop(self) -> int:
        """Stop within shutdown_timeout: no new calls or jobs, cancel backups, close the repository.
        Whatever blocks on the way, the process ends EXIT_GRACE seconds after that (exitguard)."""
        allowed = self.config.daemon.shutdown_timeout + thaw_allowance(self.config)  # thaws may follow the deadline
        guard = ExitGuard(allowed + EXIT_GRACE, EXIT_FAILURE, "the stop", last_steps=_last_steps)
        # systemd's TimeoutStopSec must not kill the stop before it could thaw the windows: it is
        # extended to the whole bound, the interpreter's exit after a clean stop included.
        self.notifier.stopping("stopping", needs=allowed + 2 * EXIT_GRACE)
        try:
            return self._stop()
        finally:
            guard.disarm()

    def _stop(self) -> int:
        deadline = time.monotonic() + self.config.daemon.shutdown_timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self.scheduler is not None:
            self.scheduler.request_stop()
        for thread in (self.rpo, self.backstop, self.retention, self.archivers):
            if thread is not None:
                thread.request_stop()
        # Cancel the backups first, so their clients still get an answer before the server closes.
        running = list(self.service.jobs.running().values()) if self.service is not None else []
        if self.service is not None:
            self.service.shutdown()
        stopped = self.server.stop(grace=min(5.0, left())) if self.server else threading.Event()
        idle = self.service.wait_idle(left()) if self.service else True
        if self.scheduler is not None:  # a scheduled set the stop cut is caught up by the next start
            self.scheduler.interrupted(lambda job: any(job is r for r in running) and job.result is None)
        # A retention run stops before its next step (the store's prune sees the stop): wait for
        # it, so its lock is released and its end recorded; one still inside a step at the
        # deadline is cut by the exit, which garbage collection's crash safety covers.
        if self.retention is not None and not self.retention.stop(left()):
            self.retention.cut()
        if self.server is not None:
            stopped.wait(left())
            self.blocked_calls = self.server.blocked_calls()
            if self.blocked_calls:
                log.warning("%d streaming call%s still blocked on a client that takes nothing (a suspended "
                            "'cairn'); the exit does not wait for %s", self.blocked_calls,
                            "" if self.blocked_calls == 1 else "s", "it" if self.blocked_calls == 1 else "them")
        if self.pinger is not None:
            self.pinger.stop(timeout=1.0)
        if self.metrics is not None:
            self.metrics.stop_http()
        if not idle:
            log.error("a backup did not stop within %.0fs; exiting anyway (its set is abandoned, the "
                      "repository stays consistent)", self.config.daemon.shutdown_timeout)
            # Its database tools die and its window thaws before we go (thaw hooks are idempotent).
            kill_running()
            thaw_open_windows()
            return EXIT_FAILURE
        thaw_open_windows()  # no set holds a window now: one still open (none should be) thaws before we go
        if self.tracker is not None:
            self.tracker.stop()  # flushes the journal and records a clean stop
        if self.repo is not None:
            self.repo.close()
        self.release_locks()
        if self.repo is not None:  # after a start that failed its checks there is nothing to report
            log.info("stopped")
        return EXIT_OK


def thaw_allowance(config: Config) -> float:
    """The longest the thaw hooks of every configured window may run one after the other (each
    hook is killed at its timeout): a stop may thaw windows after its own deadline."""
    return sum(len(level.thaw) * level.timeout
               for source in config.sources if source.quiesce is not None
               for level in source.quiesce.levels())


def _exiting(code: int) -> None:
    """After the stop everything is closed and recorded: the interpreter's exit (joining grpc's
    worker threads, atexit hooks) gets EXIT_GRACE seconds, then the process ends with `code`."""
    ExitGuard(EXIT_GRACE, code, "the interpreter's exit after the stop")


def _last_steps() -> None:
    """What a stop that ran out of time still does: database tools killed, windows thawed."""
    kill_running()
    thaw_open_windows()


def serve(config: Config, args: argparse.Namespace) -> int:
    """Run the daemon on `config` until SIGTERM or SIGINT; return the exit status."""
    setup_logging(config.daemon.log_level)
    heap.tune()  # restores reuse their buffers (daemon/runtime/heap.py)
    heap.tune_collector()  # collections that do not rescan everything (same module)
    daemon = Daemon(config, args)
    daemon.install_signals()
    try:
        daemon.start()
    except CairnError as exc:
        print(f"cairnd: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        daemon.stop()
        _exiting(EXIT_FAILURE)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"cairnd: error: {exc}", file=sys.stderr)
        daemon.stop()
        _exiting(EXIT_FAILURE)
        return EXIT_FAILURE
    code = daemon.run()
    sys.stdout.flush()
    sys.stderr.flush()
    if code != EXIT_OK or daemon.blocked_calls:
        # A job thread is stuck, or an RPC thread is blocked in a send to a client that takes
        # nothing (gRPC's pool would join it at the interpreter's exit): do not wait for it.
        os._exit(code)
    _exiting(code)
    return code
