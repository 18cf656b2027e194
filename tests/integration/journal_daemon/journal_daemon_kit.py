"""The kit of the change journal end-to-end tests: the real cairnd (with test hooks, see
hooked_cairnd.py) watching a real tree through real inotify, driven by the real `cairn` client.

`jd.start()` (re)starts the daemon on the same config, repository and state directory;
`jd.hook(cmd)` runs a test hook inside the daemon; `jd.backup(level)` takes a set and returns
its JSON; `jd.restore_equals(set_id, snapshot)` restores a set and compares it with a snapshot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
from cairnd_harness import READY_TIMEOUT, Daemon, NotifyListener, env_for, init_repo, snapshot  # noqa: E402

HOOKED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hooked_cairnd.py")


@dataclass
class JournalDaemon:
    base: str
    src: str
    repo: str
    config: str
    hooks: str
    daemon: Daemon | None = None
    starts: int = 0
    _stopped: list[Daemon] = field(default_factory=list)

    def write_config(self, **options: object) -> None:
        """Source 'app' (watched) on `src`; daemon keys and source keys (prefixed 'source_')."""
        lines = ["[repository]", f'path = "{self.repo}"', "", "[daemon]",
                 f'socket = "{os.path.join(self.base, "s.sock")}"', f'state_dir = "{os.path.join(self.base, "state")}"']
        src_lines = ["", "[[source]]", 'name = "app"', f'paths = ["{self.src}"]']
        for key, value in options.items():
            text = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
            if key.startswith("source_"):
                src_lines.append(f"{key[7:]} = {text}")
            else:
                lines.append(f"{key} = {text}")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("\n".join(lines + src_lines) + "\n")

    def start(self) -> Daemon:
        self.stop()
        init_repo(self.repo)
        self.starts += 1
        workdir = os.path.join(self.base, f"run{self.starts}")
        os.makedirs(workdir)
        notify = NotifyListener(os.path.join(workdir, "notify"))
        stderr_path = os.path.join(workdir, "stderr.log")
        env = env_for({"NOTIFY_SOCKET": notify.path, "CAIRN_TEST_HOOKS": self.hooks,
                       "CAIRN_HOME": os.path.join(self.base, "home")})
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, HOOKED, "--config", self.config],
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
        d = Daemon(proc, os.path.join(self.base, "s.sock"), notify, workdir, stderr_path)
        self.daemon = d
        deadline = time.monotonic() + READY_TIMEOUT
        while not notify.wait_for("READY=1", 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"cairnd did not become ready (exit {proc.poll()}):\n{d.log()}")
        return d

    def stop(self) -> None:
        d, self.daemon = self.daemon, None
        if d is None:
            return
        if d.alive:
            code, _ = d.terminate(30)
            assert code == 0, d.log()
        d.notify.close()
        self._stopped.append(d)

    def kill(self) -> None:
        for d in [self.daemon, *self._stopped]:
            if d is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)
            if d is not None:
                d.notify.close()

    def hook(self, cmd: str, timeout: float = 30) -> object:
        """Run a test hook inside the daemon (see hooked_cairnd.py) and return its result."""
        assert self.daemon is not None
        done = os.path.join(self.hooks, "done")
        if os.path.exists(done):
            os.unlink(done)
        with open(os.path.join(self.hooks, "cmd"), "w", encoding="utf-8") as f:
            f.write(cmd)
        self.daemon.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: os.path.exists(done), timeout, f"hook {cmd!r}")
        with open(done, encoding="utf-8") as f:
            answer = json.load(f)
        assert answer["ok"], answer
        return answer["result"]

    def backup(self, level: str) -> dict:
        out = self.daemon.ok("--json", "backup", "--level", level, timeout=120)
        return json.loads(out)

    def status(self) -> dict:
        return json.loads(self.daemon.ok("--json", "status"))["sources"][0]

    def restore_equals(self, set_id: str, want: dict, what: str = "") -> None:
        target = tempfile.mkdtemp(prefix="restore-", dir=self.base)
        shutil.rmtree(target)
        self.daemon.ok("restore", set_id, "--target", target, timeout=120)
        got = snapshot(target)
        if got != want:
            missing = sorted(set(want) - set(got))[:5]
            extra = sorted(set(got) - set(want))[:5]
            differ = sorted(p for p in set(got) & set(want) if got[p] != want[p])[:5]
            detail = [f"{p}: want {want[p]} got {got[p]}" for p in differ]
            raise AssertionError(f"{what}set {set_id[:12]} does not restore the tree as it was: "
                                 f"missing {missing}, extra {extra}, differ {detail}")
        shutil.rmtree(target)


def wait_until(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def metric(text: str, name: str, source: str = "app") -> float:
    """The value of a labelled Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'source="{source}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        return r.read().decode()
