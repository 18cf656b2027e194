"""A real MariaDB server for tests: `MariaDbServer`.

It owns one temporary directory under /tmp (traversable by the `mysql` OS user) holding
`data/` (initialised with mariadb-install-db), `mysqld.sock` and `server.log`. mariadbd runs
as the `mysql` OS user (`--user=mysql`, the tests run as root), listens on the socket and on
127.0.0.1 at a free port, reads no option files (`--no-defaults`). root connects over the
socket without a password (`--auth-root-authentication-method=normal`).

What always holds: `cleanup()` (also the context-manager exit) kills a running server and
removes the directory; `stop()` shuts it down and keeps the directory, for `start()` again.

    with MariaDbServer() as db:
        db.sql("CREATE DATABASE shop")
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from pgserver import free_port

MYSQL_USER = "mysql"
TOOLS = ("mariadbd", "mariadb-install-db", "mariadb", "mariadb-dump", "mariadb-admin")


def mariadb_available() -> str | None:
    """None when a MariaDB server can be run here, else the reason it cannot."""
    for tool in TOOLS:
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"MariaDB tool '{tool}' not found (apt-get install mariadb-server)"
    try:
        pwd.getpwnam(MYSQL_USER)
    except KeyError:
        return f"no '{MYSQL_USER}' OS user to run MariaDB as"
    if os.geteuid() != 0:
        return "the MariaDB tests run mariadbd --user=mysql and need root"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class MariaDbServer:
    """One MariaDB server in its own temporary directory (see the module docstring)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cairn-maria-", dir="/tmp"))
        self.root.chmod(0o755)
        pw = pwd.getpwnam(MYSQL_USER)
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.datadir = self.root / "data"
        self.socket = str(self.root / "mysqld.sock")
        self.log = self.root / "server.log"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        r = subprocess.run([_tool("mariadb-install-db"), "--no-defaults", f"--user={MYSQL_USER}",
                            f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
                            "--skip-test-db"],
                           capture_output=True, text=True, check=False, timeout=180, cwd="/tmp")
        if r.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({r.returncode}): {r.stderr.strip()[-2000:]}")

    def start(self, timeout: float = 60.0) -> MariaDbServer:
        argv = [_tool("mariadbd"), "--no-defaults", f"--user={MYSQL_USER}", f"--datadir={self.datadir}",
                f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                f"--pid-file={self.root / 'mysqld.pid'}", f"--log-error={self.log}",
                "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M", "--innodb-flush-log-at-trx-commit=2",
                "--skip-log-bin", "--max-connections=40"]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True, cwd="/tmp")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited ({self._proc.returncode}): {self.log_tail()}")
            r = subprocess.run([_tool("mariadb-admin"), "--no-defaults", f"--socket={self.socket}", "-uroot",
                                "ping"], capture_output=True, check=False, timeout=30)
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"mariadbd did not become ready in {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """Shut the server down cleanly (SIGTERM) and wait for it to exit; `start()` starts it again."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"mariadbd did not stop in {timeout}s: {self.log_tail()}") from None

    def client_args(self) -> list[str]:
        """Connection options for the mariadb tools (the socket, as root)."""
        return ["--no-defaults", f"--socket={self.socket}", "-uroot"]

    def sql(self, statement: str, database: str = "") -> str:
        """Run `statement` with the mariadb client (batch, no column names); return stdout."""
        argv = [_tool("mariadb"), *self.client_args(), "--batch", "--skip-column-names", "-e", statement]
        if database:
            argv.append(database)
        r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"mariadb failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout.strip()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MariaDbServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
