"""What status sees of the windows of this process (`open_windows`): freezing while a freeze hook
runs, frozen while the capture holds it, thawing while a thaw hook runs, gone once thawed; only
the windows of the state directory asked about."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cairn.daemon.windows.quiesce import Hook, Window, open_windows


def wait_for(cond, what: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)
    return got


def gate(path: Path) -> Hook:
    """A hook that marks it runs, then waits until `path` exists."""
    return Hook(("sh", "-c", f'touch "{path}.running"; while [ ! -e "{path}" ]; do sleep 0.01; done'), timeout=20)


def test_a_window_is_seen_freezing_frozen_and_thawing_then_not_at_all(tmp_path: Path) -> None:
    state, other = str(tmp_path / "state"), str(tmp_path / "other")
    freeze_go, thaw_go, body_go = tmp_path / "freeze", tmp_path / "thaw", threading.Event()
    w = Window(state, "app", "cold", freeze=[gate(freeze_go)], thaw=[gate(thaw_go)], max_window=300)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with w:
                body_go.wait(20)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    assert open_windows(state) == {}
    before = time.time()
    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: Path(f"{freeze_go}.running").exists(), "the freeze hook")
        v = open_windows(state)["app"]
        assert v.state == "freezing" and v.frozen == 0 and v.mode == "cold", v
        assert before <= v.opened <= time.time() and v.deadline == v.opened + 300 and v.max_window == 300, v
        assert (v.levels, v.levels_started) == (1, 1), v
        assert open_windows(other) == {}  # another state directory's status sees nothing of it
        freeze_go.touch()
        v = wait_for(lambda: (lambda x: x if x.state == "frozen" else None)(open_windows(state)["app"]), "frozen")
        assert v.opened <= v.frozen <= time.time(), v
        body_go.set()
        wait_for(lambda: Path(f"{thaw_go}.running").exists(), "the thaw hook")
        assert open_windows(state)["app"].state == "thawing"
    finally:
        freeze_go.touch()
        body_go.set()
        thaw_go.touch()
        t.join(30)
    assert not errors and not t.is_alive(), errors
    assert open_windows(state) == {}
