"""A real PostgreSQL 15 server for tests: `PgServer`.

A `PgServer` owns one temporary directory under /tmp (mode 0755 so the `postgres` OS user can
traverse it) holding `data/` (the cluster), `sock/` (the Unix socket directory) and
`server.log`. The cluster is created with initdb and run with postgres, both as the `postgres`
OS user through `runuser` (the tests run as root). The server listens on the socket directory
and on 127.0.0.1 at a free port; `wal_level=replica`, and with `archive_dir` every finished WAL
segment is copied there by `archive_command='cp %p <archive_dir>/%f'`.

What always holds: `cleanup()` (also the context-manager exit) stops a running server, even
one that was killed or left half-started, and removes the directory; settings are passed on
the postgres command line so they hold for restored data directories too (they override
postgresql.conf and postgresql.auto.conf, so recovery settings belong in those files).

    with PgServer(archive=True) as pg:
        pg.psql("CREATE TABLE t (x int)")
        conn_dsn = pg.dsn
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("CAIRN_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"


def pg_available() -> str | None:
    """Return None when a PostgreSQL 15 server can be run here, else the reason it cannot."""
    for tool in ("initdb", "postgres", "pg_ctl", "psql"):
        if not (PG_BIN / tool).is_file():
            return f"PostgreSQL binaries not found: {PG_BIN / tool} is missing"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no '{PG_USER}' OS user to run PostgreSQL as"
    if os.geteuid() != 0:
        return "PostgreSQL tests run initdb/postgres via runuser and need root"
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pg_dir(prefix: str = "cairn-pg-") -> Path:
    """Create a fresh directory under /tmp that the postgres user can traverse and write."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    pw = pwd.getpwnam(PG_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def chown_postgres(path: str | os.PathLike[str], recursive: bool = True) -> None:
    """Give `path` (and with `recursive` everything below it) to the postgres OS user."""
    pw = pwd.getpwnam(PG_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    if recursive and os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


class PgServer:
    """One PostgreSQL 15 server in its own temporary directory (see the module docstring).

    `archive=True` creates `<root>/wal` and archives into it; `archive_dir` archives into a
    given directory instead. `pgdata` runs the server on an existing data directory (a restored
    one) instead of running initdb. `settings` are extra `-c name=value` server settings.
    """

    def __init__(
        self,
        *,
        archive: bool = False,
        archive_dir: str | os.PathLike[str] | None = None,
        pgdata: str | os.PathLike[str] | None = None,
        settings: dict[str, str] | None = None,
        init: bool = True,
    ) -> None:
        self.root = make_pg_dir()
        self.sockdir = self.root / "sock"
        self.sockdir.mkdir(mode=0o755)
        chown_postgres(self.sockdir, recursive=False)
        self.log = self.root / "server.log"
        self.port = free_port()
        self.pgdata = Path(pgdata) if pgdata is not None else self.root / "data"
        self.archive_dir: Path | None = None
        if archive_dir is not None:
            self.archive_dir = Path(archive_dir)
        elif archive:
            self.archive_dir = self.root / "wal"
        if self.archive_dir is not None:
            self.archive_dir.mkdir(parents=True, exist_ok=True)
            chown_postgres(self.archive_dir, recursive=False)
        self.settings = dict(settings or {})
        self._proc: subprocess.Popen[bytes] | None = None
        if pgdata is None and init:
            self.initdb()

    # -- lifecycle --------------------------------------------------------------------------

    def initdb(self) -> None:
        """Create the cluster in `pgdata` (trust authentication, UTF8, no fsync)."""
        self._run_as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(self.pgdata), "-U", PG_USER, "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
        )

    def server_settings(self) -> dict[str, str]:
        """The settings passed on the postgres command line (explicit ones win)."""
        s = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sockdir),
            "wal_level": "replica",
            "fsync": "off",
            "max_wal_senders": "4",
            "logging_collector": "off",
            "shared_buffers": "32MB",
            "max_connections": "40",
        }
        if self.archive_dir is not None:
            s["archive_mode"] = "on"
            s["archive_command"] = f"cp %p {self.archive_dir}/%f"
        s.update(self.settings)
        return s

    def start(self, timeout: float = 60.0, wait_ready: bool = True) -> None:
        """Start the server and wait until it accepts connections (or finished recovery)."""
        if self.running():
            return
        argv = ["runuser", "-u", PG_USER, "--", str(PG_BIN / "postgres"), "-D", str(self.pgdata)]
        for key, value in self.server_settings().items():
            argv += ["-c", f"{key}={value}"]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True)
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the server accepts connections; raise with the log tail otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}: {self.log_tail()}")
            r = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", str(self.sockdir),
                                "-p", str(self.port)], check=False)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not become ready in {timeout}s: {self.log_tail()}")

    def wait_promoted(self, timeout: float = 120.0) -> None:
        """Wait until archive recovery ended and the server runs as a primary.

        A restored server accepts read-only connections during recovery (hot standby), so a
        test must wait for this before it looks at the recovered data.
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                if self.psql("SELECT pg_is_in_recovery()") == "f":
                    return
            except RuntimeError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not finish recovery in {timeout}s: {self.log_tail()}")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server with pg_ctl (mode smart|fast|immediate) and wait for it to exit."""
        if self.running():
            self._run_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-m", mode,
                                   "-t", str(int(timeout)), "-w", "stop"], check=False)
        self._reap(timeout)

    def restart(self) -> None:
        """Stop (fast) and start the server again."""
        self.stop()
        self.start()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the postmaster (SIGKILL simulates a crash); reaps it for SIGKILL."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = self._children(pid) if sig == signal.SIGKILL else []
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            for child in children:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap(30.0)

    def cleanup(self) -> None:
        """Stop the server whatever its state and remove the temporary directory."""
        try:
            if self.running():
                self.stop(mode="immediate", timeout=30.0)
        finally:
            if self.running():
                self.kill()
            self._reap(10.0)
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- state ------------------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, or None when there is none."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        """True while a postmaster process of this data directory is alive."""
        if self._proc is not None and self._proc.poll() is None:
            return True
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log_tail(self, n: int = 20) -> str:
        """The last `n` lines of the server log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def log_text(self) -> str:
        """The whole server log."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- access -----------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """libpq DSN over the Unix socket as the postgres superuser."""
        return self.dsn_for()

    def dsn_for(self, user: str = PG_USER, dbname: str = "postgres", tcp: bool = False) -> str:
        """libpq DSN for `user` and `dbname`, over the Unix socket or TCP."""
        host = "127.0.0.1" if tcp else str(self.sockdir)
        return f"host={host} port={self.port} user={user} dbname={dbname}"

    def psql(self, sql: str, dbname: str = "postgres", user: str = PG_USER) -> str:
        """Run `sql` with psql (unaligned, tuples only, stop on error) and return its stdout."""
        r = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.sockdir), "-p", str(self.port), "-U", user, "-d", dbname, "-c", sql],
            capture_output=True, text=True, check=False, timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout.strip()

    def bin(self, tool: str) -> str:
        """Path of a PostgreSQL client or server binary."""
        return str(PG_BIN / tool)

    # -- internals --------------------------------------------------------------------------

    def _run_as_postgres(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["runuser", "-u", PG_USER, "--", *argv], capture_output=True, text=True,
                           check=False, timeout=180, cwd="/tmp")
        if check and r.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def _reap(self, timeout: float) -> None:
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
        self._proc = None

    @staticmethod
    def _children(pid: int) -> list[int]:
        """Pids of the postmaster's children (backends put themselves in their own session)."""
        r = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
        return [int(x) for x in r.stdout.split() if x.isdigit()]
