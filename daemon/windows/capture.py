"""Consistent sets: a source's files and its PostgreSQL databases captured as one set.

`capture_set(repo, state_dir, src, dbs, request, progress, cancel, planner=...)` takes one set
of a source that has databases and/or a `quiesce` window, step by step through a store
BackupSession:

- before the window (nothing frozen yet): prepare every database (`DatabaseEngine.prepare`:
  connect and check it — DSN, rights, pgdata, archiving — and read its facts; a dump's tool is
  found and a command database's `check` runs), so a database that cannot be captured fails
  the set before any freeze hook stops the application; in cold mode also pg_backup_start on
  each base backup (its checkpoint is the slow part and needs no quiet application);
- inside the window, after every freeze hook finished: the planner decides the base and asks
  the change journal for its hint (`Planner.plan`), once — the session uses that decision, so
  files the application wrote while its freeze hook stopped it are in the hint;
- cold: every data directory as attachment 'db:<name>' (each tablespace as
  'db:<name>:tblspc:<oid>') -> the capture_first sub-paths -> every source path ->
  pg_backup_stop of each database WITHOUT waiting for archiving -> restore points -> thaw;
- hot: auxiliary paths -> capture_first sub-paths -> pg_backup_start of every database ->
  attachments -> pg_backup_stop -> restore points -> a fresh hint -> the content paths. Every
  row a database holds at its consistent point names a file that existed before the content
  walk began, and capture_first paths keep their place in the tree;
- cold, still frozen: what the change journal saw written into the source since the plan (a
  freeze hook that returned 0 but left a writer running) makes the set 'fuzzy', with a window
  warning naming those paths (the planner's `changed_since_plan`; None where nothing can tell).
  Writes below a directory a database server writes itself (`server_dirs()`: a data directory
  or a tablespace inside a source path) are not the application's and do not count;
- after the window: wait (bounded by each database's wal_timeout) until the repository holds
  every WAL segment up to each stop LSN, then commit; then the on_success / on_failure hooks
  (on_failure also when the set fails before its window, in the preparation).

Every database is captured by its engine (daemon/databases/: the physical 'postgres' engine
above, or a dump engine — 'pg_dump', 'command' — whose dump runs inside the window at the
place the base backup takes in either order). The set records `extra['databases']` (each
engine's typed record, `DatabaseRecord.to_dict()`, in capture order; also in the metadata of
the database's attachment), `extra['database']` (the first physical record, as older readers
expect) and `extra['window']` (Window.record(): timings, hook results and exit codes, errors).

A set that is cancelled (`cancel` set: the daemon stops, or the job is cancelled) stops its
databases' work at once, as the max_window deadline does: every engine's cancel() runs (a dump
tool is killed with its process group, a running statement is cancelled), the next step raises
AbortedError and the window thaws before capture_set returns.

What always holds: thaw runs for every freeze level that began (quiesce.Window guarantees
it, also at the max_window deadline and on cancel, which cancel the session, the running
statements and the dump tools);
a set that failed commits nothing; a set is never committed before its WAL is archived; the
database connections are closed when this returns or raises.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from cairn.daemon.databases import engine_for
from cairn.daemon.databases.engine import (  # noqa: F401 - attachment names re-exported
    DatabaseEngine,
    PhysicalRecord,
    attachment_name,
    tablespace_attachment,
)
from cairn.daemon.databases.physical import PhysicalEngine
from cairn.daemon.databases.postgres import walarchive
from cairn.daemon.databases.postgres.checkdb import raise_if_archiver_failing
from cairn.daemon.databases.postgres.connection import PgConnection
from cairn.daemon.runtime.config import DatabaseConfig, SourceConfig
from cairn.daemon.windows.quiesce import Window, run_after
from cairn.fsio.names import shown
from cairn.store.errors import AbortedError, CairnError, InvalidArgumentError
from cairn.store.model import BackupRequest, BackupSet, ChangeHint, Progress
from cairn.store.repository import Repository
from cairn.store.snapshots.session import BackupSession

log = logging.getLogger("cairn.capture")

ProgressFn = Callable[[Progress], None]
NO_WINDOW_STOP_TIMEOUT = 600.0  # bound of pg_backup_stop's statement without a window deadline
MIN_STOP_TIMEOUT = 1.0
AFTER_HOOK_TIMEOUT = 60.0
AFTER_HOOK_CANCELLED = 3.0  # the on_failure hooks of a cancelled set (the daemon stops), all of them together
CANCEL_POLL = 0.1  # seconds between looks of a set's cancel watcher


def capture_paths(src: SourceConfig) -> tuple[str, ...]:
    """The paths a set of `src` holds: its paths, then auxiliary paths not among them.

    aux_paths only order the capture (hot mode: before the database); they are part of the set
    like any path, so each must have a basename distinct from the others (one subtree each).
    """
    paths = tuple(src.paths) + tuple(p for p in src.aux_paths if p not in src.paths)
    seen: dict[str, str] = {}
    for p in paths:
        name = os.path.basename(os.path.normpath(p))
        if name in seen:
            raise InvalidArgumentError(
                f"source '{src.name}': paths '{seen[name]}' and '{p}' have the same basename '{name}'; "
                "a set holds one subtree per basename")
        seen[name] = p
    return paths


def source_databases(src: SourceConfig) -> tuple[str, ...]:
    """The databases a source captures, in order (`database` as one name or a list)."""
    return tuple(getattr(src, "databases", ()) or ((src.database,) if src.database else ()))


def thaw_failures(s: BackupSet) -> list[str]:
    """The thaw hooks of set `s`'s window that failed (as recorded in extra['window']['errors'])."""
    window = s.extra.get("window") if isinstance(s.extra, dict) else None
    errors = window.get("errors", []) if isinstance(window, dict) else []
    return [e for e in errors if isinstance(e, str) and (e.startswith("thaw hook") or e.startswith("optional thaw"))]


def needs_capture(src: SourceConfig) -> bool:
    """True when a source is captured here rather than by a plain repository backup."""
    return bool(source_databases(src) or src.quiesce)


@dataclass(frozen=True)
class SetPlan:
    """The base of a set and the change hint made against it, decided once."""

    level: str
    base: BackupSet | None
    note: str
    hint: ChangeHint | None
    why: tuple[str, ...] = ()  # without a hint past a full: why the set walks (the change journal's reasons)

    @property
    def decision(self) -> tuple[str, BackupSet | None, str]:
        return self.level, self.base, self.note


class Planner(Protocol):
    """Decides a set's base and change hint; capture_set calls `plan` once, inside the window."""

    def plan(self) -> SetPlan: ...

    def refresh(self) -> ChangeHint | None:
        """A newer hint against the same base (hot mode, before the content walk)."""
        ...

    def changed_since_plan(self) -> list[str] | None:
        """The source's paths an observer saw change since `plan` (cold mode, before the thaw);
        None when nothing can tell."""
        ...


class BasePlanner:
    """A planner without a change journal: the latest usable base, no hint (walk and compare)."""

    def __init__(self, repo: Repository, source: str, level: str, host: str | None = None,
                 machine: str = "") -> None:
        self.repo, self.source, self.level, self.host, self.machine = repo, source, level, host, machine

    def plan(self) -> SetPlan:
        # this host's sets only (this machine's, where machines share the host name)
        level, base, note = self.repo.choose_base(self.source, self.level, self.host, self.machine)
        return SetPlan(level, base, note, None)

    def refresh(self) -> ChangeHint | None:
        return None

    def changed_since_plan(self) -> list[str] | None:
        return None


def capture_set(repo: Repository, state_dir: str, src: SourceConfig,
                dbs: DatabaseConfig | Sequence[DatabaseConfig] | None,
                request: BackupRequest, progress: ProgressFn | None, cancel: threading.Event, *,
                planner: Planner | None = None,
                connect: Callable[[DatabaseConfig], PgConnection] = PgConnection.from_config) -> BackupSet:
    """Take one consistent set of `src` (see the module docstring); raises on any failure."""
    request = replace(request, paths=capture_paths(src))
    configs = [] if dbs is None else [dbs] if isinstance(dbs, DatabaseConfig) else list(dbs)
    planner = planner or BasePlanner(repo, src.name, request.level, request.hostname or None,
                                     str(request.extra.get("machine") or ""))
    with contextlib.ExitStack() as stack:
        # Step 1: preflight — a database that cannot be backed up fails the set before any freeze.
        # A cancelled set stops the preparation under way too (a `check` command is killed).
        opened: list[DatabaseEngine] = []
        preparing: list[DatabaseEngine] = []

        def cancel_preparing() -> None:
            for e in preparing:
                e.cancel()

        try:
            with _on_cancel(cancel, cancel_preparing):
                for cfg in configs:
                    eng = PhysicalEngine(cfg, src.name, connect) if cfg.kind == "postgres" else \
                        engine_for(cfg, src.name, state_dir)
                    stack.callback(eng.close)
                    preparing.append(eng)  # then the cancel watcher reaches it, or this sees the cancel
                    if cancel.is_set():
                        raise AbortedError("backup cancelled")
                    eng.prepare()
                    if isinstance(eng, PhysicalEngine) and eng.conn is not None:
                        # archiving that fails now would stall the set's WAL wait: fail fast instead
                        raise_if_archiver_failing(eng.conn, cfg.name, lambda ns: repo.list_wal(ns, flat=False))
                    opened.append(eng)
        except BaseException as exc:
            _after_hooks(src, "on_failure", exc, None, stopping=cancel.is_set())  # nothing was frozen
            raise

        def on_expire() -> None:
            for e in opened:
                e.cancel()

        # A cancelled set (shutdown) stops its databases' work as the deadline does.
        stack.enter_context(_on_cancel(cancel, on_expire))

        window = (Window.from_config(state_dir, src.name, src.quiesce, cancel=cancel, on_expire=on_expire)
                  if src.quiesce is not None else None)
        run = _Capture(repo, src, opened, window, request, progress, cancel, planner, stack)
        try:
            s = run.take()
        except BaseException as exc:
            run.after("on_failure", exc)
            raise
        run.after("on_success", None, s)
        return s


class _Capture:
    """One run of capture_set; holds what the steps share."""

    def __init__(self, repo: Repository, src: SourceConfig, dbs: list[DatabaseEngine], window: Window | None,
                 request: BackupRequest, progress: ProgressFn | None, cancel: threading.Event,
                 planner: Planner, stack: contextlib.ExitStack) -> None:
        self.repo = repo
        self.src = src
        self.dbs = dbs
        self.window = window
        self.request = request
        self.progress = progress
        self.cancel = window.cancel if window is not None else cancel
        self.mode = src.quiesce.mode if src.quiesce is not None else "hot"
        self.planner = planner
        self.stack = stack
        self.extra: dict[str, Any] = {}
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.timings: dict[str, float] = {}
        self.changed_in_window: list[str] = []  # cold: paths the change journal saw written while frozen

    def take(self) -> BackupSet:
        t0 = time.monotonic()
        if self.mode == "cold":
            self._start_backups(late=False)  # the checkpoint happens before the freeze
        with self.window if self.window is not None else contextlib.nullcontext():
            # Inside the window, after every freeze hook: base and hint, decided once.
            t = time.monotonic()
            plan = self.planner.plan()
            self._lap("plan_s", t)
            sess = self.stack.enter_context(self.repo.session(
                replace(self.request, changes=plan.hint), self.progress, self.cancel, decision=plan.decision))
            self.extra["changes"] = "journal" if plan.hint is not None else "walk"
            if plan.why:
                self.extra["walk_reasons"] = list(plan.why)
            if self.mode == "cold":
                self._cold(sess)
            else:
                self._hot(sess)
        t_closed = time.monotonic()
        # After the thaw: the set is committed only once its WAL is in the repository.
        physical = [d for d in self.dbs if isinstance(d, PhysicalEngine)]
        if physical:
            waited = walarchive.wait_for_wal(
                self.repo, [d.describe().to_dict() for d in physical],
                {d.cfg.name: d.cfg.wal_timeout for d in physical}, self.cancel, self._diagnose)
            self.timings["wal_wait_s"] = round(waited, 3)
            for d in physical:
                walarchive.check_wal_owner(self.repo, d.describe().to_dict())
        records = [d.describe() for d in self.dbs]
        if records:
            self.extra["databases"] = [r.to_dict() for r in records]
            first = next((r for r in records if isinstance(r, PhysicalRecord)), None)
            if first is not None:
                self.extra["database"] = first.to_dict()
            for r in records:
                sess.describe_attachment(r.attachment, "database", r.to_dict())
        fuzzy = self._application_fuzzy(sess)
        if sess.tally.fuzzy and not fuzzy:
            # only database servers' own files changed while read: their copies in the set's
            # attachments are made consistent by WAL replay
            self.extra["status"] = "ok"
        if self.window is not None:
            self.extra["window"] = self._window_record(sess, fuzzy)
            if self.changed_in_window:
                self.extra["status"] = "fuzzy"  # not the quiet capture a cold window stands for
        self.timings["capture_s"] = round(t_closed - t0, 3)
        self.extra["capture"] = self.timings
        return sess.commit(self.extra)

    # -- orders ---------------------------------------------------------------------------

    def _lap(self, key: str, since: float) -> float:
        now = time.monotonic()
        self.timings[key] = round(self.timings.get(key, 0.0) + now - since, 3)
        return now

    def _cold(self, sess: BackupSession) -> None:
        # Everything stands still: databases and files in one go between freeze and thaw.
        t = time.monotonic()
        self._start_backups(late=True)  # dump engines start inside the window
        for d in self.dbs:
            self._attach(sess, d)
        t = self._lap("databases_s", t)
        self._walk_first(sess)
        self._check()
        sess.walk_all()
        t = self._lap("files_s", t)
        self._stop_backups()
        self._lap("stop_s", t)
        # Still frozen: did anything write into the source since the plan? (a freeze hook that
        # returned 0 but left a writer running). What the database servers write themselves (a
        # data directory or a tablespace inside a path: checkpoints, autovacuum) does not count.
        changed = getattr(self.planner, "changed_since_plan", lambda: None)()
        if changed:
            dirs = _server_dirs(self.dbs)
            parents = {os.path.dirname(p) for p in changed}  # a directory changes with what is made in it
            self.changed_in_window = [shown(p) for p in changed if p not in parents and not _below(p, dirs)]

    def _hot(self, sess: BackupSession) -> None:
        # Auxiliary paths and capture_first sub-paths, then every database, then the content.
        for p in self.src.aux_paths:
            self._check()
            sess.walk(p)
        self._walk_first(sess)
        if self.dbs:
            self._start_backups()
            for d in self.dbs:
                self._attach(sess, d)
            self._stop_backups()
            # Files written while the databases were copied are named by rows: a newer hint.
            sess.set_changes(self.planner.refresh())
        self._check()
        sess.walk_all()

    def _walk_first(self, sess: BackupSession) -> None:
        for p in getattr(self.src, "capture_first", ()):
            self._check()
            sess.walk_sub(p)

    # -- databases ------------------------------------------------------------------------

    def _start_backups(self, late: bool | None = None) -> None:
        # cold mode starts the engines that may start before the freeze (pg_backup_start's
        # checkpoint) ahead of the window (late=False) and the others inside it (late=True).
        for d in self.dbs:
            if late is not None and d.starts_early == late:
                continue
            self._check()
            d.start(f"cairn {self.src.name} {self.stamp}")

    def _attach(self, sess: BackupSession, d: DatabaseEngine) -> None:
        # The engine stores the database as attachments (data directory and tablespaces, or a dump).
        d.capture(sess, self._check)

    def _stop_backups(self) -> None:
        # pg_backup_stop without waiting for the archive (the wait comes after the thaw), then
        # a named restore point marks the database moment of the set; the switch sends the
        # segment holding it to the archive without waiting for it.
        for d in self.dbs:
            self._check()
            d.stop(self._stop_timeout())
        for d in self.dbs:
            if isinstance(d, PhysicalEngine):
                d.mark(f"cairn-{self.stamp}")

    def _diagnose(self, name: str) -> str:
        """The server's own archiver view, for the error of a WAL wait that timed out."""
        d = next((d for d in self.dbs if isinstance(d, PhysicalEngine) and d.name == name), None)
        return d.diagnose() if d is not None else ""

    # -- window ---------------------------------------------------------------------------

    def _check(self) -> None:
        if self.window is not None:
            self.window.check_deadline()
        if self.cancel.is_set():
            raise AbortedError("backup cancelled")

    def _stop_timeout(self) -> float:
        if self.window is None:
            return NO_WINDOW_STOP_TIMEOUT
        return max(MIN_STOP_TIMEOUT, self.window.remaining())

    def _application_fuzzy(self, sess: BackupSession) -> list[str]:
        """The source's files that changed while they were read, but those below a database
        server's own directory: the server's work, whose consistent copy is the database's
        attachment (WAL replay repairs it), not the application's."""
        dirs = _server_dirs(self.dbs)
        t = sess.tally
        return [rel for rel, at in zip(t.fuzzy, t.fuzzy_at, strict=True) if not _below(at, dirs)]

    def _window_record(self, sess: BackupSession, every: list[str]) -> dict[str, Any]:
        assert self.window is not None
        record = self.window.record()
        fuzzy = every[:100]
        changed = self.changed_in_window
        if self.mode == "cold" and (fuzzy or changed):
            what = []
            if fuzzy:
                what.append(f"{len(every)} files changed while they were read")
            if changed:
                what.append(f"{len(changed)} paths were written after the freeze hooks returned "
                            f"(first: '{changed[0]}')")
            record["warning"] = (f"{' and '.join(what)} inside the cold window: the application was not quiet, "
                                 "so the files and databases of this set may not match")
            log.warning("source '%s': %s", self.src.name, record["warning"])
        record["fuzzy_files"] = fuzzy
        if changed:
            record["changed_files"] = changed[:100]
        return record

    # -- after the window -------------------------------------------------------------------

    def after(self, phase: str, exc: BaseException | None, s: BackupSet | None = None) -> None:
        """Run the source's on_success / on_failure hooks (optional; failures are logged)."""
        _after_hooks(self.src, phase, exc, s,
                     stopping=self.cancel.is_set() and not (self.window is not None and self.window.expired))


def _after_hooks(src: SourceConfig, phase: str, exc: BaseException | None, s: BackupSet | None, *,
                 stopping: bool) -> None:
    """Run `src`'s on_success / on_failure hooks; `stopping`: the daemon's stop cancelled the set."""
    q = src.quiesce
    argvs = (q.on_success if phase == "on_success" else q.on_failure) if q is not None else ()
    if not argvs:
        return
    env = dict(os.environ)
    if s is not None:
        env.update({"CAIRN_SET_ID": s.id, "CAIRN_SET_LEVEL": s.level})
    if exc is not None:
        env["CAIRN_ERROR"] = exc.message if isinstance(exc, CairnError) else str(exc)
    # A set cancelled by the daemon's stop (not by its window's deadline) is reported within
    # a few seconds: the stop waits for the set, and a slow hook would make it give the set
    # up as abandoned after shutdown_timeout (exit 1) and then kill the hook anyway.
    run_after(argvs, src.name, q.mode if q is not None else "hot", phase, AFTER_HOOK_TIMEOUT, env,
              budget=AFTER_HOOK_CANCELLED if stopping else None)


@contextlib.contextmanager
def _on_cancel(cancel: threading.Event, fn: Callable[[], None]) -> Iterator[None]:
    """Call `fn` once (from a watcher thread) if `cancel` is set before the block ends."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if cancel.wait(CANCEL_POLL):
                if not done.is_set():
                    try:
                        fn()
                    except Exception:  # noqa: BLE001 - a watcher thread has no caller to tell
                        log.exception("cancelling the databases of a set failed")
                return

    thread = threading.Thread(target=watch, name="set-cancel", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def _server_dirs(dbs: Sequence[DatabaseEngine]) -> list[str]:
    """Every directory the databases' servers write themselves, as configured and with links
    resolved (the change journal names paths below a source's path as configured)."""
    out: list[str] = []
    for d in dbs:
        for where in d.server_dirs():
            for form in (os.path.abspath(where), os.path.realpath(where)):
                if form not in out:
                    out.append(form)
    return out


def _below(path: str, dirs: Sequence[str]) -> bool:
    """True when `path` (as named, or with links resolved) is one of `dirs` or lies below one."""
    def inside(p: str) -> bool:
        return any(p == d or p.startswith(d.rstrip("/") + "/") for d in dirs)

    return bool(dirs) and (inside(path) or inside(os.path.realpath(path)))


def decode_file(extra_db: dict[str, Any], key: str) -> bytes:
    """labelfile or spcmapfile of a set's extra['database'], byte-exact."""
    return base64.b64decode(extra_db.get(key) or "")
