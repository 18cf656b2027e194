"""Fixtures that run the real `cairnd` as a process and talk to it over its real socket.

`start_daemon(...)` launches the venv's cairnd with NOTIFY_SOCKET pointing at a datagram
socket this test owns and WATCHDOG_USEC set, and returns once READY=1 arrived. `Daemon.cli`
runs the real `cairn` client against it. Every daemon started is killed at teardown if the
test did not stop it. Sockets live in short directories under /tmp (sun_path is 108 bytes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
from cairnd_harness import Daemon, daemon_starter, make_certificates, random_tree


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
    with daemon_starter(rundir) as start:
        yield start


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

