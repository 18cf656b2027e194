"""Fixtures that run the real `cairnd` as a process and talk to it over its real socket.

`start_daemon(...)` launches the venv's cairnd with NOTIFY_SOCKET pointing at a datagram
socket this test owns and WATCHDOG_USEC set, and returns once READY=1 arrived. `Daemon.cli`
runs the real `cairn` client against it. Every daemon started is killed at teardown if the
test did not stop it. Sockets live in short directories under /tmp (sun_path is 108 bytes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from cairnd_harness import (
    CAIRND,
    READY_TIMEOUT,
    Daemon,
    NotifyListener,
    env_for,
    init_repo,
    make_certificates,
    random_tree,
)


@pytest.fixture
def rundir() -> Iterator[str]:
    """A short, world-traversable directory for sockets and state."""
    path = tempfile.mkdtemp(prefix="cairn-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_daemon(rundir: str) -> Iterator[Callable[..., Daemon]]:
    """start_daemon(*args, socket_path=None, wait_ready=True, prefix=(), watchdog_usec=2_000_000) -> Daemon.

    Without `socket_path` the daemon gets --socket in its own work directory; with a config file
    pass the socket path the file names.
    """
    started: list[Daemon] = []
    counter = iter(range(1000))

    def start(*args: str, socket_path: str | None = None, wait_ready: bool = True, prefix: tuple[str, ...] = (),
              watchdog_usec: int = 2_000_000, home: str | None = None) -> Daemon:
        n = next(counter)
        workdir = os.path.join(rundir, f"d{n}")
        os.makedirs(workdir)
        os.chmod(workdir, 0o777)
        sock = socket_path or os.path.join(workdir, "cairnd.sock")
        notify = NotifyListener(os.path.join(workdir, "notify"))
        stderr_path = os.path.join(workdir, "stderr.log")
        env = env_for({
            "NOTIFY_SOCKET": notify.path,
            "WATCHDOG_USEC": str(watchdog_usec),
            "CAIRN_HOME": home or os.path.join(workdir, "home"),
        })
        if "--repo" in args and "--read-only" not in args:
            init_repo(args[args.index("--repo") + 1])  # a missing repository is an error now
        argv = [*prefix, CAIRND, *args]
        if socket_path is None:
            argv += ["--socket", sock]
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        daemon = Daemon(proc, sock, notify, workdir, stderr_path)
        started.append(daemon)
        if wait_ready:
            deadline = time.monotonic() + READY_TIMEOUT
            while not notify.wait_for("READY=1", 0.2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"cairnd did not become ready (exit {proc.poll()}):\n{daemon.log()}")
        return daemon

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
        d.notify.close()


@pytest.fixture(scope="session")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> str:
    """About 300 MB of random files, made once per session."""
    root = str(tmp_path_factory.mktemp("big") / "tree")
    random_tree(root, 300 << 20, 5 << 20)
    return root


@pytest.fixture
def tls_files(tmp_path) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it, and a token file."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    return {**make_certificates(str(tmp_path)), "token": str(token)}

