"""Dump engines: a database captured by a dump tool inside the set's window.

- `CommandEngine` (kind 'command'): any tool. `dump = [...]` is run as given (no shell); its
  stdout is fed straight from the pipe into the store (store/snapshots/stream.py: content-defined
  chunks, deduplicated against every earlier set; never spooled to disk) as attachment
  'db:<name>' holding one file '<name>.dump'. An argument holding `{dir}` instead names an
  empty directory the tool fills (`mongodump --out {dir}`); that directory is stored as the
  attachment's tree, then removed. prepare, before the window opens, finds the dump tool and
  runs the database's optional `check = [...]` (`mariadb-admin ping`): a server that is down
  fails the set before any freeze hook stops the application.
- `PgDumpEngine` (kind 'pg_dump'): a PostgreSQL database reached only over the network.
  prepare connects (libpq, the dsn), reads the server's version and checks that the role may
  read what pg_dump reads (USAGE on each schema, SELECT on each table and sequence); inside the window
  `pg_dump --format=directory --compress=0 --jobs=N` writes a directory (uncompressed, so
  each table's data file dedups against the last set's; parallel jobs need a server of 9.2 or
  later and are 1 otherwise), stored as the attachment's tree. No archive_command, no data
  directory.

A dump that fails — non-zero exit status, killed, or still running at its `timeout` or at the
window's deadline — raises DumpFailedError (or DeadlineError) with the tool's name, its exit
status and the tail of its stderr; the set fails and the window still thaws (quiesce.Window).

Every run gets a fresh work directory of its own (tools.new_work_dir: `<state_dir>/dumps/
<source>.<database>.<random>`, holding the run's record and the directory the tool writes),
removed when the run ends; leftovers of a daemon that died are removed at its next start.

What always holds: the tool runs in its own process group under the guard of tools.py and is
killed with that group (cancel(), timeout, close(), the daemon's death); no two runs share a
work directory, and a work directory exists only while its run lasts.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cairn.daemon.databases import tools
from cairn.daemon.databases.engine import (
    KIND_COMMAND,
    KIND_PG_DUMP,
    DumpRecord,
    attachment_name,
)
from cairn.daemon.runtime.config import DatabaseConfig
from cairn.errors import AbortedError, CairnError, DeadlineError, FailedPreconditionError
from cairn.store.snapshots.session import BackupSession

log = logging.getLogger("cairn.capture")

DIR_PLACEHOLDER = "{dir}"
TARGET_PLACEHOLDER = "{target}"
STDERR_TAIL = 2000  # characters of a tool's stderr kept for its error message
CHECK_TIMEOUT = 15.0  # bound of a command database's `check`, run before the window opens
PARALLEL_DUMP_VERSION = 90200  # synchronized snapshots: pg_dump --jobs against 9.2 or later


class DumpFailedError(FailedPreconditionError):
    """A dump or restore tool failed (exit status, signal); the message carries its stderr tail.
    (A failed precondition on the wire: the tool's database or target refused, not Cairn.)"""

    code = "dump_failed"


def stream_file(database: str) -> str:
    """The name of the one file a stream dump's attachment holds."""
    return f"{database}.dump"


def find_tool(name: str, database: str) -> str:
    """The path of executable `name` (as given when it holds a '/', else from PATH): a regular
    file (or a link to one) that this process may execute."""
    path = name if "/" in name else shutil.which(name)
    if not path or not os.path.exists(path):
        raise FailedPreconditionError(f"database '{database}': the tool '{name}' is not installed (not found"
                                      f"{'' if '/' in name else ' on PATH'})")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise FailedPreconditionError(f"database '{database}': the tool '{name}' is not an executable file")
    return path


class ToolRun:
    """One run of a dump or restore tool in its own process group, its stderr tail collected.

    `start()` spawns it under the guard of tools.py (the group dies with the daemon) and, given
    a `work` directory, durably records the group there (tools.write_run_record);
    `finish(what)` waits for the exit and raises DumpFailedError / DeadlineError unless it
    exited with status 0. `kill()` is safe from any thread. The thread that calls `start()`
    must outlive the run (the guard watches it): it is the one that waits in `finish()`.
    """

    def __init__(self, argv: Sequence[str], database: str, timeout: float | None, *,
                 stdin: int | None = subprocess.DEVNULL, stdout: int | None = subprocess.DEVNULL,
                 env: dict[str, str] | None = None, work: str | None = None) -> None:
        self.argv = list(argv)
        self.tool = os.path.basename(self.argv[0])
        self.database = database
        self.timeout = timeout
        self._stdin, self._stdout = stdin, stdout
        self._env = env
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque()
        self._tail_len = 0
        self._reader: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self.timed_out = False
        self.killed = False
        self._token = ""  # the run's MARKER value (tools.py), set at start
        self._lock = threading.Lock()

    def start(self) -> subprocess.Popen[bytes]:
        token = self._token = secrets.token_hex(16)
        env = {**(os.environ if self._env is None else self._env), tools.MARKER: token}
        try:
            self.proc = subprocess.Popen(tools.guarded_argv(self.argv), stdin=self._stdin, stdout=self._stdout,
                                         stderr=subprocess.PIPE, start_new_session=True, env=env, cwd="/")
        except OSError as exc:
            raise DumpFailedError(f"database '{self.database}': unable to run {self.tool}: "
                                  f"{exc.strerror or exc}") from None
        tools.register(self)
        if self.work is not None:
            try:
                tools.write_run_record(self.work, self.proc.pid, token)
            except OSError as exc:
                self.close()
                raise DumpFailedError(f"database '{self.database}': unable to record the run of {self.tool}: "
                                      f"{exc.strerror or exc}") from None
        self._reader = threading.Thread(target=self._read_stderr, name=f"{self.tool}-stderr", daemon=True)
        self._reader.start()
        if self.timeout is not None:
            self._timer = threading.Timer(self.timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self.proc

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in iter(lambda: self.proc.stderr.readline(65536), b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace")
            with self._lock:
                self._tail.append(line)
                self._tail_len += len(line)
                while self._tail_len > STDERR_TAIL and len(self._tail) > 1:
                    self._tail_len -= len(self._tail.popleft())

    def stderr_tail(self) -> str:
        with self._lock:
            text = "".join(self._tail)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return " | ".join(lines)[-STDERR_TAIL:]

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        """Kill the tool's whole process group (no error when it is gone): its guard does it and
        reaps the tool. A guard that is gone already (killed on its own: the OOM killer, an
        operator) cannot: then every process carrying this run's token is killed directly."""
        self.killed = True
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            tools.stop_run(p.pid)
        else:
            tools.kill_marked(p.pid, self._token)

    def finish(self, what: str) -> None:
        """Wait for the exit; raise unless the tool succeeded. `what`: 'dump' or 'restore'."""
        assert self.proc is not None
        try:
            rc = self.proc.wait()
        finally:
            tools.unregister(self)
            if self._timer is not None:
                self._timer.cancel()
            if self._reader is not None:
                self._reader.join(10)
        if rc == 0 and not self.timed_out:
            return
        if self.killed and rc < 0:
            rc = -signal.SIGKILL  # ended by kill(): its guard, if it was still starting, died of SIGTERM
        tail = self.stderr_tail()
        said = f": {tail}" if tail else " (nothing on stderr)"
        if self.timed_out:
            raise DeadlineError(f"{what} of database '{self.database}' did not finish within {self.timeout:g}s: "
                                f"{self.tool} was stopped{said}")
        status = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        raise DumpFailedError(f"{what} of database '{self.database}' failed: {self.tool} {status}{said}")

    def close(self) -> None:
        tools.unregister(self)
        if self.proc is not None and self.proc.returncode is None:
            self.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                tools.kill_guard_group(self.proc.pid)
        if self._timer is not None:
            self._timer.cancel()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr) if self.proc is not None else ():
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


class _DumpBase:
    """What both dump engines share: the work directory, the running tool, the record."""

    kind = ""
    starts_early = False

    def __init__(self, cfg: DatabaseConfig, source: str, work_dir: str) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.source = source
        self.state_dir = work_dir
        self.work = ""  # this run's own work directory, made by _fresh_dir()
        self.run: ToolRun | None = None
        self.cancelled = threading.Event()
        self.started = 0.0
        self.stopped = 0.0
        self.size = 0
        self.layout = ""
        self.jobs = 1
        self.server_version = ""
        self.tool = ""

    def start(self, label: str) -> None:
        self.started = time.time()

    def stop(self, timeout: float) -> None:
        return None

    def server_dirs(self) -> tuple[str, ...]:
        return ()  # the server is reached over its connection: its directories are not known

    def cancel(self) -> None:
        self.cancelled.set()
        if self.run is not None:
            self.run.kill()

    def close(self) -> None:
        if self.run is not None:
            self.run.close()
        self._remove_work()

    def _remove_work(self) -> None:
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)

    def describe(self) -> DumpRecord:
        return DumpRecord(name=self.name, kind=self.kind, attachment=attachment_name(self.name),
                          layout=self.layout, tool=self.tool, started=self.started, stopped=self.stopped,
                          bytes=self.size, stream_file=stream_file(self.name) if self.layout == "stream" else "",
                          server_version=self.server_version, jobs=self.jobs)

    def _env(self) -> dict[str, str]:
        # no source: `cairn check-db` running the check outside any set
        return {**os.environ, "CAIRN_DATABASE": self.name, **({"CAIRN_SOURCE": self.source} if self.source else {})}

    def _fresh_dir(self) -> str:
        """This run's own new work directory (see the module docstring)."""
        self._remove_work()
        self.work = tools.new_work_dir(self.state_dir, f"{self.source}.{self.name}")
        return self.work

    def _dump_dir(self, argv: list[str], out_dir: str, sess: BackupSession, check: Callable[[], None]) -> None:
        """Run a tool that writes `out_dir`, then store that directory as the attachment."""
        check()
        self.run = ToolRun(argv, self.name, self.cfg.timeout, env=self._env(), work=self.work)
        self.run.start()
        try:
            self.run.finish("dump")
        except BaseException:
            check()  # a window deadline that killed the tool says so itself
            raise
        check()
        self.layout = "directory"
        sess.attach(attachment_name(self.name), out_dir, (), strict_times=True, delta=False)
        self.size = _dir_size(out_dir)
        self.stopped = time.time()
        self._remove_work()


class CommandEngine(_DumpBase):
    """kind 'command': any dump tool, stdout stream or a directory (see the module docstring)."""

    kind = KIND_COMMAND

    def prepare(self) -> None:
        find_tool(self.cfg.dump[0], self.name)
        self.tool = os.path.basename(self.cfg.dump[0])
        self.check()

    def check(self) -> None:
        """Run the database's `check` command, if it has one (`mariadb-admin ping`): it must exit
        with status 0 within CHECK_TIMEOUT (or the dump's own timeout, if shorter), or this raises
        DumpFailedError / DeadlineError with its stderr tail; AbortedError once cancel() ran."""
        if not self.cfg.check:
            return
        find_tool(self.cfg.check[0], self.name)
        if self.cancelled.is_set():
            raise AbortedError("backup cancelled")
        run = self.run = ToolRun(self.cfg.check, self.name, min(CHECK_TIMEOUT, self.cfg.timeout), env=self._env())
        try:
            run.start()
            run.finish("check")
        except CairnError:
            if self.cancelled.is_set():
                raise AbortedError("backup cancelled") from None
            raise
        finally:
            run.close()
            self.run = None

    def capture(self, sess: BackupSession, check: Callable[[], None]) -> None:
        work = self._fresh_dir()
        if any(DIR_PLACEHOLDER in a for a in self.cfg.dump):
            out = os.path.join(work, "out")
            os.mkdir(out, 0o700)
            argv = [a.replace(DIR_PLACEHOLDER, out) for a in self.cfg.dump]
            self._dump_dir(argv, out, sess, check)
            return
        check()
        self.layout = "stream"
        self.run = ToolRun(self.cfg.dump, self.name, self.cfg.timeout, stdout=subprocess.PIPE, env=self._env(),
                           work=work)
        proc = self.run.start()
        assert proc.stdout is not None
        try:
            self.size = sess.attach_stream(attachment_name(self.name), proc.stdout.fileno(), stream_file(self.name))
        except BaseException:
            self.run.kill()
            raise
        finally:
            proc.stdout.close()
        try:
            self.run.finish("dump")
        except BaseException:
            check()
            raise
        self.stopped = time.time()
        self._remove_work()
        log.info("source '%s': dump of database '%s' stored (%d bytes)", self.source, self.name, self.size)


class PgDumpEngine(_DumpBase):
    """kind 'pg_dump': pg_dump over the network, directory format (see the module docstring)."""

    kind = KIND_PG_DUMP

    def prepare(self) -> None:
        from cairn.daemon.databases.postgres.connection import PgConnection

        self.tool = "pg_dump"
        self.pg_dump = find_tool("pg_dump", self.name)
        find_tool("pg_restore", self.name)
        with PgConnection.open(self.cfg.dsn, None, name=self.name, check_rights=False,
                               require_archiving=False) as conn:
            version, num = conn.query_one("SELECT current_setting('server_version'), "
                                          "current_setting('server_version_num')::int")
            role, missing = _missing_dump_rights(conn)
        if missing:
            more = f" (and {len(missing) - MISSING_SHOWN} more)" if len(missing) > MISSING_SHOWN else ""
            raise FailedPreconditionError(
                f"role '{role}' cannot dump database '{self.name}': it lacks "
                f"{', '.join(missing[:MISSING_SHOWN])}{more} (grant them, or membership in pg_read_all_data)")
        self.server_version = str(version)
        self.jobs = self.cfg.jobs if int(num) >= PARALLEL_DUMP_VERSION else 1

    def capture(self, sess: BackupSession, check: Callable[[], None]) -> None:
        out = os.path.join(self._fresh_dir(), "dump")  # pg_dump creates the directory itself
        argv = [self.pg_dump, "--format=directory", "--compress=0", f"--jobs={self.jobs}", "--no-password",
                f"--file={out}", f"--dbname={self.cfg.dsn}"]
        self._dump_dir(argv, out, sess, check)
        log.info("source '%s': pg_dump of database '%s' stored (%d bytes, %d jobs)", self.source, self.name,
                 self.size, self.jobs)


# What pg_dump reads: the rows of every table (COPY, after LOCK TABLE ... IN ACCESS SHARE MODE,
# partitioned tables locked too) and every sequence's state, each named through its schema.
# System schemas and the members of extensions are not dumped. pg_read_all_data counts (the
# privilege functions know it), as does superuser. ('%%': the statement is run with parameters.)
_DUMP_RIGHTS = """
SELECT current_user, coalesce(array_agg(what ORDER BY what), '{}') FROM (
    SELECT DISTINCT CASE WHEN NOT has_schema_privilege(n.oid, 'USAGE')
                         THEN format('USAGE on schema %%I', n.nspname)
                         ELSE format('SELECT on %%s %%I.%%I', CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END,
                                     n.nspname, c.relname) END AS what
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'S')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                                  AND d.deptype = 'e')
      AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'))
) missing
"""
MISSING_SHOWN = 3  # rights named in the error; the rest are counted


def _missing_dump_rights(conn: Any) -> tuple[str, list[str]]:
    """(the role, what it lacks to dump its database: 'USAGE on schema s', 'SELECT on table s.t')."""
    role, missing = conn.query_one(_DUMP_RIGHTS)
    return str(role), [str(m) for m in missing]


def _dir_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total
