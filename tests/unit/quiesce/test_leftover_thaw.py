"""Windows a previous process left open, with real hook processes and real records: a thaw that
fails keeps its record and is retried by the next window of the source, which refuses to freeze
while it fails; an unreadable record runs the thaw hooks the configuration names, then is set
aside; one window per source at a time even while a leftover thaw runs; a hook runs when no
temporary file can hold its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cairn.daemon.runtime.config import HookLevel, QuiesceConfig
from cairn.daemon.runtime.health import THAW_FAILED, HealthRecord
from cairn.daemon.windows.quiesce import Hook, Window, recover_windows
from cairn.daemon.windows.records import list_record_paths, read_record, record_path
from cairn.errors import BusyError, FailedPreconditionError

# A process that opens a window of source "portal" and is killed inside it: the record stays.
CRASHER = textwrap.dedent("""
    import os, signal, sys
    from cairn.daemon.windows.quiesce import Hook, Window
    state, freeze, thaw = sys.argv[1], sys.argv[2], sys.argv[3]
    with Window(state, "portal", "cold", [Hook(("sh", "-c", freeze), timeout=10)],
                [Hook(("sh", "-c", thaw), timeout=10)], max_window=600):
        os.kill(os.getpid(), signal.SIGKILL)
""")


def lines(p: Path) -> list[str]:
    return p.read_text().split() if p.exists() else []


def word_hook(log: Path, word: str) -> Hook:
    return Hook(("sh", "-c", f'echo {word} >> "{log}"'), timeout=10)


def thaw_script(log: Path, ok: Path, word: str = "thaw") -> str:
    """A thaw that fails (exit 3, a line on stderr) until the file `ok` exists."""
    return f'[ -e "{ok}" ] || {{ echo app will not start >&2; exit 3; }}; echo {word} >> "{log}"'


def crash_inside_a_window(state: str, log: Path, ok: Path) -> None:
    r = subprocess.run([sys.executable, "-c", CRASHER, state, f'echo freeze >> "{log}"', thaw_script(log, ok)],
                       capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert lines(log) == ["freeze"] and len(list_record_paths(state)) == 1


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_failed_thaw_keeps_its_record_refuses_the_next_window_and_is_retried_until_it_succeeds(
        tmp_path: Path) -> None:
    log, ok, state = tmp_path / "log", tmp_path / "ok", str(tmp_path / "state")
    crash_inside_a_window(state, log, ok)
    path = record_path(state, "portal")
    saved = Path(path).read_bytes()

    (out,) = recover_windows(state)  # at start: the thaw fails
    assert not out.ok and out.kept and "failed with exit code 3: app will not start" in (out.error or "")
    assert "its record is kept" in out.summary()
    assert Path(path).read_bytes() == saved  # kept as it was, for the retries
    health = HealthRecord(state)  # what `cairn status` shows
    health.settle_thaws({"portal": out.error})
    assert health.failure("portal").status == THAW_FAILED

    # the next window of the source retries the thaw first and, while it fails, freezes nothing
    w = Window(state, "portal", "cold", [word_hook(log, "freeze2")], [word_hook(log, "thaw2")])
    with pytest.raises(FailedPreconditionError) as err:
        with w:
            pytest.fail("the body must not run")
    msg = err.value.message
    assert "\n" not in msg and msg.startswith("the quiesce window of source 'portal' left open by a previous daemon "
                                              "still does not thaw (thaw hook ") and "app will not start" in msg
    assert lines(log) == ["freeze"] and w.freeze_results == [] and w.thaw_results == []
    assert Path(path).read_bytes() == saved
    f = health.failure("portal")  # renewed with the retry's error
    assert (f.status, f.pending_thaw, f.message) == (THAW_FAILED, True, msg)
    assert recover_windows(state)[0].kept  # and the next start still finds it

    ok.touch()  # the application can start again
    with Window(state, "portal", "cold", [word_hook(log, "freeze2")], [word_hook(log, "thaw2")]) as w:
        assert lines(log) == ["freeze", "thaw", "freeze2"]  # the leftover thawed before this window froze
        assert read_record(path).pid == os.getpid()  # the record is this window's now
    assert lines(log) == ["freeze", "thaw", "freeze2", "thaw2"]
    assert list_record_paths(state) == [] and recover_windows(state) == []
    assert health.failure("portal") is None  # thawed: no longer shown


def test_a_record_removed_by_hand_ends_the_pending_thaw_at_the_next_window(tmp_path: Path) -> None:
    log, ok, state = tmp_path / "log", tmp_path / "ok", str(tmp_path / "state")
    crash_inside_a_window(state, log, ok)
    (out,) = recover_windows(state)
    health = HealthRecord(state)
    health.settle_thaws({"portal": out.error})
    os.unlink(record_path(state, "portal"))  # the operator started the application and removed the record
    with Window(state, "portal", "cold", [word_hook(log, "freeze2")], [word_hook(log, "thaw2")]):
        pass
    assert lines(log) == ["freeze", "freeze2", "thaw2"] and health.failure("portal") is None


def test_a_second_window_is_refused_while_the_first_retries_a_leftover_thaw(tmp_path: Path) -> None:
    log, ok, state = tmp_path / "log", tmp_path / "ok", str(tmp_path / "state")
    crash_inside_a_window(state, log, ok)
    assert recover_windows(state)[0].kept
    # the retried thaw says it runs, then waits (at most 10 s) for `go`
    running, go = tmp_path / "running", tmp_path / "go"
    rec = Path(record_path(state, "portal"))
    data = json.loads(rec.read_text())
    wait = f'touch "{running}"; i=0; while [ ! -e "{go}" ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done; '
    data["levels"][0]["thaw"][0]["argv"][2] = wait + thaw_script(log, ok)
    rec.write_text(json.dumps(data))
    ok.touch()
    first = Window(state, "portal", "cold", [word_hook(log, "freeze-first")], [word_hook(log, "thaw-first")])
    errors: list[BaseException] = []

    def enter_first() -> None:
        try:
            with first:
                pass
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=enter_first)
    t.start()
    try:
        wait_for(running.exists, "the retried thaw")
        second = Window(state, "portal", "cold", [word_hook(log, "freeze-second")], [word_hook(log, "thaw-second")])
        with pytest.raises(BusyError, match="already open"):
            with second:
                pytest.fail("two windows of one source at once")
    finally:
        go.touch()
        t.join(30)
    assert not errors, errors
    assert lines(log) == ["freeze", "thaw", "freeze-first", "thaw-first"]  # one thaw of the leftover, once
    with Window(state, "portal", "cold"):  # the claim was given back
        pass


def levels_config(log: Path, ok: Path) -> QuiesceConfig:
    fail = f'[ -e "{ok}" ] || {{ echo still broken >&2; exit 5; }}; '
    return QuiesceConfig("cold", hooks=(
        HookLevel(freeze=(("sh", "-c", f'echo f1 >> "{log}"'),), thaw=(("sh", "-c", f'{fail}echo t1 >> "{log}"'),),
                  timeout=10.0),
        HookLevel(freeze=(("sh", "-c", f'echo f2 >> "{log}"'),), thaw=(("sh", "-c", f'echo t2 >> "{log}"'),),
                  timeout=10.0)))


def test_an_unreadable_record_runs_every_configured_thaw_hook_then_is_set_aside(tmp_path: Path) -> None:
    log, ok, state = tmp_path / "log", tmp_path / "ok", str(tmp_path / "state")
    ok.touch()
    os.makedirs(os.path.dirname(record_path(state, "app")))
    Path(record_path(state, "app")).write_text('{"version": 2, "source": "app", "mo')  # torn
    (out,) = recover_windows(state, configured={"app": levels_config(log, ok)})
    assert out.ok and out.source == "app" and "unable to read window record" in (out.unreadable or "")
    assert lines(log) == ["t2", "t1"]  # every level's thaw, the last level first
    assert list_record_paths(state) == [] and os.path.exists(record_path(state, "app") + ".corrupt")


def test_an_unreadable_record_whose_thaw_fails_is_kept_and_retried_by_the_next_window(tmp_path: Path) -> None:
    log, ok, state = tmp_path / "log", tmp_path / "ok", str(tmp_path / "state")
    q = levels_config(log, ok)
    os.makedirs(os.path.dirname(record_path(state, "app")))
    Path(record_path(state, "app")).write_bytes(b"\xff\xfe not a record")
    (out,) = recover_windows(state, configured={"app": q})
    assert not out.ok and out.kept and "still broken" in (out.error or "")
    assert lines(log) == ["t2"] and len(list_record_paths(state)) == 1  # t1 failed: kept, not set aside
    with pytest.raises(FailedPreconditionError, match="still does not thaw"):
        with Window.from_config(state, "app", q):
            pass
    assert lines(log) == ["t2", "t2"]  # retried, nothing frozen
    ok.touch()
    with Window.from_config(state, "app", q):
        assert lines(log) == ["t2", "t2", "t2", "t1", "f1", "f2"]
    assert lines(log)[-2:] == ["t2", "t1"]
    assert list_record_paths(state) == [] and os.path.exists(record_path(state, "app") + ".corrupt")


def test_an_unreadable_record_of_a_source_without_hooks_is_set_aside_and_reported(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    os.makedirs(os.path.dirname(record_path(state, "gone/app")))
    Path(record_path(state, "gone/app")).write_text("{}")
    (out,) = recover_windows(state, configured={})
    assert out.source == "gone/app" and not out.ok and not out.kept
    assert "is not configured with quiesce hooks: no thaw ran" in (out.error or "")
    assert list_record_paths(state) == [] and os.path.exists(record_path(state, "gone/app") + ".corrupt")


def test_a_hook_runs_when_no_temporary_file_can_hold_its_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    with pytest.raises(OSError):
        tempfile.TemporaryFile()
    log = tmp_path / "log"
    res = Hook(("sh", "-c", f'echo ran >> "{log}"; echo lost; exit 2'), timeout=10).run()
    assert lines(log) == ["ran"] and res.exit_code == 2 and res.stdout_tail == ""
    with Window(str(tmp_path / "state"), "app", "cold", [word_hook(log, "freeze")], [word_hook(log, "thaw")]):
        pass
    assert lines(log) == ["ran", "freeze", "thaw"]
