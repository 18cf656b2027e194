"""A stopping daemon thaws windows whose set does not return: `thaw_open_windows()` cancels and
thaws every open window at once (real hooks writing marker files, a body that ignores the
cancel), exactly once; and the daemon's stop path, when a backup did not stop within
shutdown_timeout, kills the running database tools and thaws before it exits."""

from __future__ import annotations

import argparse
import os
import textwrap
import threading
import time
from pathlib import Path

from cairn.daemon.databases.dump import ToolRun
from cairn.daemon.runtime.config import load_config
from cairn.daemon.runtime.process import EXIT_FAILURE, Daemon
from cairn.daemon.windows.quiesce import Hook, Window, thaw_open_windows
from cairn.daemon.windows.records import record_path


def daemon_for(tmp_path: Path, service: object, daemon_lines: str = "") -> Daemon:
    """A Daemon on a minimal config in `tmp_path` (never started) whose service is `service`."""
    cfg_path = tmp_path / "cairnd.toml"
    cfg_path.write_text(textwrap.dedent(f"""
        [repository]
        path = "{tmp_path}/repo"

        [daemon]
        socket = "{tmp_path}/cairnd.sock"
        state_dir = "{tmp_path}/state"
    """) + daemon_lines)
    daemon = Daemon(load_config(str(cfg_path)), argparse.Namespace())
    daemon.service = service  # type: ignore[assignment]
    return daemon


def marker_hook(log: Path, word: str) -> Hook:
    return Hook(("sh", "-c", f"echo {word} >> {log}"), 30.0, True)


def open_stuck_window(tmp_path: Path, expired: threading.Event) -> tuple[Window, threading.Event, threading.Thread]:
    """A cold window whose body ignores its cancel until `release` is set."""
    log = tmp_path / "hooks.log"
    w = Window(str(tmp_path / "state"), "stuck-app", "cold", freeze=[marker_hook(log, "frozen")],
               thaw=[marker_hook(log, "thawed")], max_window=300, on_expire=expired.set)
    entered, release = threading.Event(), threading.Event()

    def body() -> None:
        with w:
            entered.set()
            release.wait(30)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    assert entered.wait(10)
    return w, release, t


def words(tmp_path: Path) -> list[str]:
    return (tmp_path / "hooks.log").read_text().split()


class NoJobs:
    """The service's job table as a stop reads it: no job of a source is running."""

    def running(self) -> dict:
        return {}


def test_open_windows_are_thawed_at_once_without_their_body_exactly_once(tmp_path):
    expired = threading.Event()
    w, release, t = open_stuck_window(tmp_path, expired)
    assert os.path.exists(record_path(str(tmp_path / "state"), "stuck-app"))
    assert "stuck-app" in thaw_open_windows()  # (other tests may leave windows open on purpose)
    assert words(tmp_path) == ["frozen", "thawed"]
    assert w.cancel.is_set() and expired.is_set()  # the body and its databases were told to stop
    assert not os.path.exists(record_path(str(tmp_path / "state"), "stuck-app"))
    release.set()
    t.join(10)
    assert words(tmp_path) == ["frozen", "thawed"]  # the body's own exit does not thaw again
    assert "stuck-app" not in thaw_open_windows()


def test_stop_kills_the_tools_and_thaws_when_a_backup_does_not_stop_in_time(tmp_path):
    class StuckService:
        """A service whose backup never returns (a capture stuck past its cancel)."""

        jobs = NoJobs()

        def shutdown(self) -> None:
            pass

        def wait_idle(self, timeout: float) -> bool:
            time.sleep(min(timeout, 0.2))
            return False

    expired = threading.Event()
    _w, release, t = open_stuck_window(tmp_path, expired)
    tool = ToolRun(["sleep", "300"], "db", None)
    tool.start()
    daemon = daemon_for(tmp_path, StuckService(), 'shutdown_timeout = "1s"\n')
    try:
        assert daemon.stop() == EXIT_FAILURE
        assert words(tmp_path) == ["frozen", "thawed"]  # thawed before the exit
        assert tool.proc is not None and tool.proc.wait(10) < 0  # the tool's group was killed
    finally:
        release.set()
        t.join(10)
        tool.close()


def test_a_clean_stop_thaws_a_window_still_open_before_the_tracker_stops(tmp_path):
    class IdleService:
        """Every set returned; a window is open all the same (left open by whatever cause)."""

        jobs = NoJobs()

        def shutdown(self) -> None:
            pass

        def wait_idle(self, timeout: float) -> bool:
            return True

    class Tracker:
        """Notes what the hooks had done when the daemon stopped it."""

        seen: list[str] | None = None

        def stop(self) -> None:
            self.seen = words(tmp_path)

    expired = threading.Event()
    w, release, t = open_stuck_window(tmp_path, expired)
    daemon = daemon_for(tmp_path, IdleService())
    tracker = Tracker()
    daemon.tracker = tracker  # type: ignore[assignment]
    try:
        assert daemon.stop() == 0
        assert tracker.seen == ["frozen", "thawed"]  # thawed before the tracker stopped
        assert w.thawed and not os.path.exists(record_path(str(tmp_path / "state"), "stuck-app"))
    finally:
        release.set()
        t.join(10)
    assert words(tmp_path) == ["frozen", "thawed"]


SLOW_THAW_STOP = """
import argparse, sys, textwrap, threading, time
from pathlib import Path
from cairn.daemon.runtime.config import load_config
from cairn.daemon.runtime.process import EXIT_FAILURE, Daemon, thaw_allowance
from cairn.daemon.windows.quiesce import Hook, Window

tmp = Path(sys.argv[1])
(tmp / "data").mkdir()
cfg_path = tmp / "cairnd.toml"
cfg_path.write_text(textwrap.dedent(f'''
    [repository]
    path = "{tmp}/repo"

    [daemon]
    socket = "{tmp}/cairnd.sock"
    state_dir = "{tmp}/state"
    shutdown_timeout = "1s"

    [[source]]
    name = "slow-app"
    paths = ["{tmp}/data"]
    [source.quiesce]
    mode = "cold"
    freeze = ["true"]
    thaw = ["sh", "-c", "sleep 6; echo thawed >> {tmp}/hooks.log"]
    timeout = 30
'''))
cfg = load_config(str(cfg_path))
assert thaw_allowance(cfg) == 30.0, thaw_allowance(cfg)

class StuckService:
    class jobs:
        @staticmethod
        def running(): return {}
    def shutdown(self): pass
    def wait_idle(self, timeout):
        time.sleep(min(timeout, 0.2))
        return False

level = cfg.sources[0].quiesce.levels()[0]
w = Window(str(tmp / "state"), "slow-app", "cold", freeze=[Hook(("true",), 30.0, True)],
           thaw=[Hook(tuple(level.thaw[0]), 30.0, True)], max_window=300)
entered = threading.Event()
def body():
    with w:
        entered.set()
        time.sleep(60)
threading.Thread(target=body, daemon=True).start()
assert entered.wait(10)
daemon = Daemon(cfg, argparse.Namespace())
daemon.service = StuckService()
began = time.monotonic()
code = daemon.stop()
print("stopped", code == EXIT_FAILURE, round(time.monotonic() - began, 1), flush=True)
"""


def test_the_exit_guard_gives_a_stop_the_time_its_thaw_hooks_may_take(tmp_path):
    """shutdown_timeout 1 s, a thaw hook that takes 6 s (its timeout 30 s): the stop thaws and
    returns, and the exit guard (shutdown_timeout + 3 s without the thaw hooks' allowance) does
    not end the process in the middle of the thaw."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SLOW_THAW_STOP, str(tmp_path)], capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "did not end within" not in proc.stderr
    assert proc.stdout.split()[:2] == ["stopped", "True"], proc.stdout
    assert float(proc.stdout.split()[2]) >= 6
    assert (tmp_path / "hooks.log").read_text().split() == ["thawed"]
