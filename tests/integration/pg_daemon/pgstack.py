"""A real PostgreSQL 15 server archiving through the real `cairn wal-push` into a real cairnd.

`Stack(root, sources)` owns `root` (close() removes it), a PgServer whose archive_command is
`cairn --socket S wal-push %p`, a cairnd process (config file with [[database]] appdb and the given [[source]] tables,
socket_group = "postgres" so the server's OS user reaches the socket), and helpers to run the
client, restore a set's files and database, and start a server on the restored data directory.

The cairn client must run as the `postgres` user (archive_command, restore_command). When the
interpreter lives where that user cannot read (a Python under /root), the server is started
with the ambient capability CAP_DAC_READ_SEARCH so its children can load the client; the
socket's permissions (write access needs the group) still apply.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "daemon"))

from cairnd_harness import CAIRN, CAIRND, Daemon, NotifyListener, env_for, init_repo  # noqa: E402
from pgserver import PG_BIN, PG_USER, PgServer, make_pg_dir, pg_available  # noqa: E402, F401

WRITER = os.path.join(HERE, "writer.py")
READY_TIMEOUT = 30.0
CAPS = ("setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups",
        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--")


def postgres_can_run_client() -> bool:
    r = subprocess.run(["runuser", "-u", PG_USER, "--", CAIRN, "--version"], capture_output=True, check=False,
                       cwd="/tmp")
    return r.returncode == 0


class ArchivingServer(PgServer):
    """PgServer started so that archive_command / restore_command can run the cairn client."""

    need_caps: bool | None = None

    def start(self, timeout: float = 60.0, wait_ready: bool = True) -> None:
        if self.running():
            return
        if ArchivingServer.need_caps is None:
            ArchivingServer.need_caps = not postgres_can_run_client()
        prefix = list(CAPS) if self.need_caps else ["runuser", "-u", PG_USER, "--"]
        argv = [*prefix, str(PG_BIN / "postgres"), "-D", str(self.pgdata)]
        for key, value in self.server_settings().items():
            argv += ["-c", f"{key}={value}"]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True, cwd="/tmp")
        if wait_ready:
            self.wait_ready(timeout)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


class Stack:
    """PostgreSQL + cairnd + client for one test module (see the module docstring)."""

    def __init__(self, root: Path, sources: dict[str, dict[str, Any]],
                 databases: dict[str, dict[str, Any]] | None = None, passphrase: str | None = None) -> None:
        self.root = root
        self.passphrase_file = ""  # with `passphrase`: an encrypted repository (plaintext otherwise)
        if passphrase is not None:
            self.passphrase_file = str(root / "repo.pass")
            Path(self.passphrase_file).write_text(passphrase + "\n")
        self.sock = str(root / "run" / "cairnd.sock")
        (root / "run").mkdir(mode=0o755)
        self.repo = str(root / "repo")
        self.state = str(root / "state")
        self.pg = ArchivingServer(settings={
            "archive_mode": "on",
            "archive_command": f"{CAIRN} --socket {self.sock} wal-push %p",
            "archive_timeout": "0",
        })
        self.config = str(root / "cairnd.toml")
        self.sources = sources
        self.daemon_keys: dict[str, Any] = {}  # more [daemon] keys (metrics, intervals); set before start()
        self.databases = {"appdb": {"dsn": self.pg.dsn, "pgdata": str(self.pg.pgdata)}, **(databases or {})}
        self.write_config()
        self.daemon: Daemon | None = None
        self.daemons: list[Daemon] = []
        self.restored: list[PgServer] = []
        self.servers: list[PgServer] = []  # more archiving servers (more databases) to clean up
        self.holders: list[Path] = []
        self.launcher: tuple[str, ...] = (CAIRND,)  # the daemon's command (a test may wrap the real cairnd)
        self.daemon_env: dict[str, str] = {}  # more environment for the daemon

    def write_config(self) -> None:
        lines = ["[repository]", f"path = {json.dumps(self.repo)}"]
        if self.passphrase_file:
            lines.append(f"passphrase_file = {json.dumps(self.passphrase_file)}")
        lines += ["", "[daemon]",
                 f"socket = {json.dumps(self.sock)}", f"state_dir = {json.dumps(self.state)}",
                 'socket_group = "postgres"']
        lines += [f"{k} = {toml_value(v)}" for k, v in self.daemon_keys.items()]
        for name, db in self.databases.items():
            lines += ["", "[[database]]", f"name = {json.dumps(name)}"]
            lines += [f"{k} = {toml_value(v)}" for k, v in db.items()]
        for name, table in self.sources.items():
            lines += ["", "[[source]]", f"name = {json.dumps(name)}"]
            lines += [] if "watch" in table else ["watch = false"]
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        Path(self.config).write_text("\n".join(lines) + "\n")

    # -- processes --------------------------------------------------------------------------

    def start_daemon(self) -> Daemon:
        if not self.passphrase_file:
            init_repo(self.repo)
        elif not os.path.exists(self.repo):
            r = subprocess.run([CAIRND, "--config", self.config, "--init"], capture_output=True, text=True,
                               timeout=60, env=env_for())
            assert r.returncode == 0, r.stderr
        n = len(self.daemons)
        notify = NotifyListener(str(self.root / f"notify{n}"))
        stderr_path = str(self.root / f"cairnd{n}.log")
        env = env_for({"NOTIFY_SOCKET": notify.path, "CAIRN_HOME": str(self.root / "home"), **self.daemon_env})
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen([*self.launcher, "--config", self.config], stdout=subprocess.DEVNULL,
                                    stderr=err, env=env)
        daemon = Daemon(proc, self.sock, notify, str(self.root), stderr_path)
        self.daemons.append(daemon)
        self.daemon = daemon
        end = time.monotonic() + READY_TIMEOUT
        while not notify.wait_for("READY=1", 0.2):
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"cairnd did not become ready (exit {proc.poll()}):\n{daemon.log()}")
        return daemon

    def start(self) -> Stack:
        self.start_daemon()
        self.pg.start()
        return self

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(10)

    def close(self) -> None:
        for srv in self.restored:
            srv.cleanup()
        for holder in self.holders:
            shutil.rmtree(holder, ignore_errors=True)
        for srv in self.servers:
            srv.cleanup()
        try:
            self.pg.cleanup()
        finally:
            for d in self.daemons:
                if d.proc.poll() is None:
                    d.proc.kill()
                    d.proc.wait(10)
                d.notify.close()
            shutil.rmtree(self.root, ignore_errors=True)  # the test's directory under /tmp

    # -- client -----------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        assert self.daemon is not None
        return self.daemon.cli(*args, timeout=timeout)

    def ok(self, *args: str, timeout: float = 120) -> str:
        assert self.daemon is not None
        return self.daemon.ok(*args, timeout=timeout)

    def backup(self, source: str, level: str = "full") -> dict[str, Any]:
        """Take a set and return its JSON description."""
        return json.loads(self.ok("--json", "backup", "--source", source, "--level", level, timeout=180))

    def sets(self, source: str) -> list[dict[str, Any]]:
        return json.loads(self.ok("--json", "sets", "--source", source))

    def psql(self, sql: str) -> str:
        return self.pg.psql(sql)

    def wait_archived(self, timeout: float = 60.0) -> str:
        """Switch WAL and wait until the server archived everything up to the switch."""
        seg = self.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        self.psql("SELECT pg_switch_wal()")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            last = self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            if last[:24] >= seg:
                return seg
            time.sleep(0.1)
        raise AssertionError(f"segment {seg} was not archived in {timeout}s: {self.pg.log_tail()}")

    # -- restores ---------------------------------------------------------------------------

    def restore_files(self, set_id: str, name: str) -> Path:
        target = self.root / name
        self.ok("restore", set_id, "--target", str(target))
        return target

    def archiving_server(self) -> ArchivingServer:
        """One more server archiving into this stack's daemon (start it after the daemon)."""
        srv = ArchivingServer(settings={
            "archive_mode": "on",
            "archive_command": f"{CAIRN} --socket {self.sock} wal-push %p",
            "archive_timeout": "0",
        })
        self.servers.append(srv)
        return srv

    def restore_db(self, set_id: str, *extra: str, database: str = "appdb") -> PgServer:
        """restore-db into a fresh directory, start a server on it and wait for promotion."""
        holder = make_pg_dir("cairn-rdb-")
        target = holder / "data"
        self.ok("restore-db", set_id, "--database", database, "--target", str(target), *extra)
        srv = ArchivingServer(pgdata=target)
        self.restored.append(srv)
        self.holders.append(holder)
        srv.start(timeout=120)
        srv.wait_promoted()
        return srv


def file_tree(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file below `root`: its path relative to `root` -> its content."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@contextlib.contextmanager
def app_stack(prefix: str, files: dict[str, str | bytes] | None = None, *, source: str = "app",
              tree: str = "files", **options: Any) -> Iterator[Stack]:
    """A started Stack whose one source `source` is the directory `<root>/<tree>` holding `files`
    (relative path -> content) with the database appdb; `options` go to Stack (passphrase=...).
    Closed (its directory removed) when the block ends: what most test modules' fixture is."""
    root = make_pg_dir(prefix)
    (root / tree).mkdir(parents=True)
    for rel, content in (files or {}).items():
        path = root / tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    st = Stack(root, {source: {"paths": [str(root / tree)], "database": "appdb"}}, **options)
    try:
        yield st.start()
    finally:
        st.close()
