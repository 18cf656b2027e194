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
