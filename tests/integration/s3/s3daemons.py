"""Real cairnd processes on an s3:// repository, for the object-store tests that need several.

`Host(rundir, name, repository)` writes one daemon's configuration (its own socket, state
directory and `[daemon] host`), starts it with `start()` (returns once systemd's READY=1 arrived
on a notify socket the test owns, like the other daemon tests) and runs the real client with
`cli()` / `ok()`; `watch=True` gives its sources the change journal. `command` is what runs
the daemon (the installed cairnd; a test may put a wrapper there, such as skewed_cairnd.py).
Every started daemon is stopped by PID in `stop()`, which frees its notify socket for another
`start()`. AWS_* variables of the test's environment
are not passed on: each daemon gets its credentials from the configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from typing import Any

from cairnd_harness import CAIRN, CAIRND, NotifyListener  # tests/integration/daemon (see conftest.py)

READY_TIMEOUT = 60.0


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without AWS_* and systemd variables (a daemon reads its config)."""
    out = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CAIRN_SOCKET")}
    out["AWS_EC2_METADATA_DISABLED"] = "true"
    out.update(extra or {})
    return out


def s3_repository(weed: Any, creds: str, prefix: str, passphrase_file: str, **extra: str) -> list[str]:
    """The [repository] lines of a repository under `prefix` in the test server's bucket."""
    lines = [f'path = "s3://{weed.bucket}/{prefix}"', f'endpoint = "{weed.endpoint}"', 'region = "us-east-1"',
             f'credentials_file = "{creds}"', f'passphrase_file = "{passphrase_file}"']
    return lines + [f"{k} = {json.dumps(v)}" for k, v in extra.items()]


class Host:
    """One cairnd with its own state directory and host name (see the module docstring)."""

    def __init__(self, rundir: str, name: str, repository: list[str], sources: dict[str, str],
                 env: dict[str, str] | None = None, watch: bool = False) -> None:
        self.name = name
        self.env = dict(env or {})  # added to the daemon's cleaned environment (AWS_CA_BUNDLE, say)
        self.dir = os.path.join(rundir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "s.sock")
        self.state = os.path.join(self.dir, "state")
        self.config = os.path.join(self.dir, "cairnd.toml")
        lines = ["[repository]", *repository, "", "[daemon]", f'socket = "{self.socket}"',
                 f'state_dir = "{self.state}"', f'host = "{name}"']
        for source, path in sources.items():
            lines += ["", "[[source]]", f'name = "{source}"', f'paths = ["{path}"]', f"watch = {str(watch).lower()}"]
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.notify: NotifyListener | None = None
        self.log = os.path.join(self.dir, "cairnd.log")
        self.command: list[str] = [CAIRND]

    def init(self) -> None:
        r = subprocess.run([CAIRND, "--config", self.config, "--init"], capture_output=True, text=True,
                           env=clean_env(self.env), timeout=120)
        assert r.returncode == 0, r.stderr

    def spawn(self) -> None:
        """Start the process; `ready()` waits for it."""
        self.notify = NotifyListener(os.path.join(self.dir, "notify"))
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([*self.command, "--config", self.config], stdout=subprocess.DEVNULL,
                                         stderr=err, env=clean_env({**self.env, "NOTIFY_SOCKET": self.notify.path}))

    def ready(self) -> None:
        assert self.proc is not None and self.notify is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.notify.wait_for("READY=1", 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"cairnd {self.name} did not become ready (exit {self.proc.poll()}): "
                                     f"{open(self.log, errors='replace').read()[-2000:]}")

    def start(self) -> Host:
        self.spawn()
        self.ready()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.notify is not None:
            self.notify.close()
            try:
                os.unlink(self.notify.path)  # so that start() may bind it again
            except FileNotFoundError:
                pass
            self.notify = None

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([CAIRN, "--socket", self.socket, *args], capture_output=True, text=True,
                              env=clean_env(), timeout=timeout)

    def ok(self, *args: str, timeout: float = 180) -> str:
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, f"cairn {' '.join(args)} on {self.name} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout


def restart_after_kill(host: Host) -> None:
    """Start `host`'s daemon again after its SIGKILL, and assert it said at most one warning or
    error line about it (and no traceback)."""
    host.stop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(host.dir, "notify"))
    with open(host.log, "rb") as f:
        before = len(f.read())
    host.start()
    with open(host.log, encoding="utf-8", errors="replace") as f:
        f.seek(before)
        said = f.read()
    noisy = [line for line in said.splitlines() if "level=warning" in line or "level=error" in line]
    assert len(noisy) <= 1 and "Traceback" not in said, said
