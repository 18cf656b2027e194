"""`make run`, the README's first command, as written: the embedded default set up in CAIRN_HOME.

The first run makes the key file (0600) and the encrypted repository beside it, and the
daemon serves SOURCE on the socket under $XDG_RUNTIME_DIR, where the client finds it; CAIRN_HOME,
the daemon's state directory, is 0700 as the daemon makes its state directories (it holds the
change journal's paths, the cache and the key file). A second run reuses what the first made.
The virtual environment the checkout's `make setup` built is used as it is (never rebuilt here).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "daemon"))
from cairnd_harness import env_for  # noqa: E402

VENV_CAIRND = ROOT / ".venv" / "bin" / "cairnd"
READY_TIMEOUT = 60.0

pytestmark = [
    pytest.mark.skipif(not VENV_CAIRND.exists(), reason="the checkout has no .venv (make setup)"),
    pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True).returncode != 0,
                       reason="make is not installed"),
]


def make_run(home: Path, source: Path, runtime: Path, log: Path) -> subprocess.Popen[bytes]:
    # -o: the virtual environment counts as up to date; this test never rebuilds it
    return subprocess.Popen(
        ["make", "-s", "-C", str(ROOT), "-o", ".venv/bin/cairnd", "run", f"CAIRN_HOME={home}", f"SOURCE={source}"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env_for({"XDG_RUNTIME_DIR": str(runtime)}), start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the daemon it runs: the group this test made
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def client(runtime: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "cairn"), *args], capture_output=True, text=True,
                          timeout=120, env=env_for({"XDG_RUNTIME_DIR": str(runtime)}))


def wait_serving(proc: subprocess.Popen[bytes], runtime: Path, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while client(runtime, "status").returncode != 0:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_make_run_sets_up_the_embedded_default_and_keeps_its_state_private(tmp_path):
    home, source, runtime, log = tmp_path / "home", tmp_path / "src", tmp_path / "rt", tmp_path / "make.log"
    source.mkdir()
    (source / "f.txt").write_text("hello\n")
    runtime.mkdir(mode=0o700)
    proc = make_run(home, source, runtime, log)
    try:
        wait_serving(proc, runtime, log)
        assert (runtime / "cairn" / "cairnd.sock").exists()
        assert mode(home) == 0o700, oct(mode(home))
        assert mode(home / "repo.key") == 0o600 and mode(home / "repo") == 0o700
        r = client(runtime, "backup", "--level", "full")
        assert r.returncode == 0, r.stderr
    finally:
        stop(proc)
    assert "created an encrypted repository at" in log.read_text()
    proc = make_run(home, source, runtime, log)  # the second run: the same key and repository
    try:
        wait_serving(proc, runtime, log)
        r = client(runtime, "ls", "latest")
        assert r.returncode == 0 and "f.txt" in r.stdout, r.stderr
    finally:
        stop(proc)
    assert log.read_text().count("created an encrypted repository") == 1
