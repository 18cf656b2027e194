"""A verify whose client went away stops at its next pack instead of reading on for nobody.

Two packs of the repository are replaced by named pipes: reading the first one stalls the
verify until the test feeds it (a stalled disk, deterministically), and whether the daemon
ever opens the second one shows whether the verify went on. The daemon's metrics say how
each verify ended.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from cairnd_harness import CAIRN, env_for, random_tree, write_config

DEADLINE = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def _wait(what: str, cond) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _open_for_writing_once_read(path: str) -> int:
    """Open FIFO `path` for writing as soon as a reader has it open (ENXIO until then)."""
    fd = None

    def opened() -> bool:
        nonlocal fd
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return False
        return True

    _wait(f"the daemon to read {os.path.basename(path)}", opened)
    os.set_blocking(fd, True)
    return fd


def _has_reader(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    return True


@pytest.fixture
def served(start_daemon, rundir, tmp_path):
    src = tmp_path / "src"
    random_tree(str(src), 40 << 20, 4 << 20)  # 40 MiB of random data: three 16 MiB packs
    port = _free_port()
    sock = os.path.join(rundir, "verify.sock")
    repo = str(tmp_path / "repo")
    config = write_config(str(tmp_path / "cairn.toml"), repo, sock, {"app": str(src)}, metrics=f"127.0.0.1:{port}")
    daemon = start_daemon("--config", config, socket_path=sock)
    daemon.ok("backup", "--level", "full")
    daemon.repo, daemon.port = repo, port
    return daemon


def test_verify_stops_when_its_client_is_killed(served, tmp_path):
    packs = sorted((name, os.path.join(d, name)) for d, _, names in os.walk(os.path.join(served.repo, "packs"))
                   for name in names)
    assert len(packs) == 3
    first, last = packs[0][1], packs[-1][1]  # verify reads packs in name order
    saved = {}
    for path in (first, last):
        with open(path, "rb") as f:
            saved[path] = f.read()
        os.unlink(path)
        os.mkfifo(path, 0o600)

    out = open(tmp_path / "client.out", "wb")  # noqa: SIM115 - the client writes it until killed
    client = subprocess.Popen([CAIRN, "--socket", served.socket, "verify", "--read-data"],
                              stdout=out, stderr=subprocess.STDOUT, env=env_for())
    try:
        fd = _open_for_writing_once_read(first)  # the verify now waits on the first pack
        assert _metric(served.port, "cairn_verify_running") == 1.0
        client.send_signal(signal.SIGKILL)
        assert client.wait(10) == -signal.SIGKILL
        _wait("the daemon to see the client gone",
              lambda: "the client of a running verify went away" in served.log())
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(saved[first])
        _wait("the verify to stop", lambda: _metric(served.port, "cairn_verify_running") == 0.0)
        assert _metric(served.port, 'cairn_verifies_total{outcome="cancelled"}') == 1.0
        assert _metric(served.port, 'cairn_verifies_total{outcome="ok"}') is None
        assert not _has_reader(last), "the verify went on reading after its client was gone"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
        out.close()
        for path, data in saved.items():
            os.unlink(path)
            with open(path, "wb") as f:
                f.write(data)

    # The daemon serves on, and a verify that is followed to its end still reads everything.
    assert "repository ok: 1 set, 3 packs" in served.ok("verify", "--read-data")
    assert _metric(served.port, 'cairn_verifies_total{outcome="ok"}') == 1.0
