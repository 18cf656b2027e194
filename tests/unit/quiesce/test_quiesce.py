"""Quiesce windows with real hook processes: order, failures, timeouts, deadline, crash recovery."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cairn.daemon.windows.quiesce import Hook, HookError, Window, recover_windows
from cairn.daemon.windows.records import list_record_paths, record_path
from cairn.errors import AbortedError, BusyError, DeadlineError, InvalidArgumentError


def log_hook(log: Path, word: str, **kw: object) -> Hook:
    """A hook that appends `word` to `log`."""
    return Hook(("sh", "-c", f'echo {word} >> "{log}"'), **kw)  # type: ignore[arg-type]


def lines(p: Path) -> list[str]:
    return p.read_text().split() if p.exists() else []


def test_hook_captures_output_and_exit_code(tmp_path: Path) -> None:
    res = Hook(("sh", "-c", "echo out; echo err >&2; exit 3"), timeout=10).run()
    assert res.exit_code == 3 and not res.ok and not res.timed_out
    assert res.stdout_tail.strip() == "out" and res.stderr_tail.strip() == "err"
    assert res.failure("freeze") == ("freeze hook (sh -c 'echo out; echo err >&2; exit 3') "
                                     "failed with exit code 3: err")


def test_hook_that_cannot_start_is_a_failure(tmp_path: Path) -> None:
    res = Hook((str(tmp_path / "missing-hook"),), timeout=5).run()
    assert res.exit_code is None and not res.ok
    expected = f"thaw hook ({tmp_path / 'missing-hook'}) could not be started: No such file or directory"
    assert res.failure("thaw") == expected


def test_every_hook_failure_names_its_command_once_in_one_form(tmp_path: Path) -> None:
    """"<phase> hook (<command as a shell reads it>) <what happened>[: <output>]": the command is
    never quoted inside quotes, and an argument with a space, quote or parenthesis is quoted."""
    missing = tmp_path / "no such dir" / "hook"
    cases = [
        (Hook(("sh", "-c", """echo "it's down" >&2; exit 3"""), timeout=10),
         """freeze hook (sh -c 'echo "it'"'"'s down" >&2; exit 3') failed with exit code 3: it's down"""),
        (Hook((str(missing), "a(b)"), timeout=10),
         f"freeze hook ('{missing}' 'a(b)') could not be started: No such file or directory"),
        (Hook(("sh", "-c", "kill -9 $$"), timeout=10), "freeze hook (sh -c 'kill -9 $$') was killed by signal 9"),
    ]
    for hook, expected in cases:
        assert hook.run().failure("freeze") == expected
    slow = Hook(("sleep", "30"), timeout=0.3).run().failure("thaw")
    assert re.fullmatch(r"thaw hook \(sleep 30\) timed out after 0\.\ds and was killed", slow), slow


def test_hook_timeout_kills_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # the hook starts a grandchild in the same group and waits; both must die on timeout
    hook = Hook(("sh", "-c", f'sleep 60 & echo $! > "{pidfile}"; wait'), timeout=0.5)
    res = hook.run()
    assert res.timed_out and not res.ok and res.exit_code is not None and res.exit_code < 0
    child = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the hook's child survived the timeout")
    assert "timed out" in res.failure("freeze")


def test_hook_that_starts_a_background_service_returns_promptly(tmp_path: Path) -> None:
    pidfile = tmp_path / "svc.pid"
    hook = Hook(("sh", "-c", f'sleep 30 & echo $! > "{pidfile}"; echo started'), timeout=10)
    res = hook.run()
    try:
        assert res.ok and not res.timed_out and res.stdout_tail.strip() == "started"
        os.kill(int(pidfile.read_text()), 0)  # the service keeps running after the hook returned
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_window_runs_freeze_body_thaw_in_order_and_records(tmp_path: Path) -> None:
    log = tmp_path / "log"
    state = str(tmp_path / "state")
    freeze = [log_hook(log, "freeze1"), log_hook(log, "freeze2")]
    thaw = [log_hook(log, "thaw1"), log_hook(log, "thaw2")]
    with Window(state, "app", "cold", freeze, thaw, max_window=30) as w:
        assert os.path.exists(record_path(state, "app"))
        saved = json.loads(Path(record_path(state, "app")).read_text())
        assert [h["argv"] for h in saved["thaw"]] == [list(h.argv) for h in thaw]
        with log.open("a") as f:
            f.write("body\n")
        w.check_deadline()
    assert lines(log) == ["freeze1", "freeze2", "body", "thaw1", "thaw2"]
    assert not os.path.exists(record_path(state, "app"))
    rec = w.record()
    assert rec["mode"] == "cold" and rec["expired"] is False and rec["errors"] == []
    assert [r["exit_code"] for r in rec["freeze"] + rec["thaw"]] == [0, 0, 0, 0]
    assert rec["window_s"] >= rec["held_s"] >= 0
    json.dumps(rec)


def test_thaw_runs_when_the_body_raises(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pytest.raises(ValueError, match="boom"):
        with Window(str(tmp_path), "app", "cold", [log_hook(log, "freeze")], [log_hook(log, "thaw")]):
            raise ValueError("boom")
    assert lines(log) == ["freeze", "thaw"]
    assert list_record_paths(str(tmp_path)) == []


def test_failing_required_freeze_hook_skips_body_and_thaws(tmp_path: Path) -> None:
    log = tmp_path / "log"
    bad = Hook(("sh", "-c", "echo 'unit app.service not loaded' >&2; exit 5"), timeout=10)
    body_ran = False
    w = Window(str(tmp_path), "app", "cold", [log_hook(log, "freeze"), bad, log_hook(log, "never")],
               [log_hook(log, "thaw")])
    with pytest.raises(HookError) as ei:
        with w:
            body_ran = True
    assert not body_ran
    assert lines(log) == ["freeze", "thaw"]
    assert "unit app.service not loaded" in str(ei.value) and "exit code 5" in str(ei.value)
    assert ei.value.result.exit_code == 5
    assert list_record_paths(str(tmp_path)) == []
    assert [r["exit_code"] for r in w.record()["freeze"]] == [0, 5]


def test_optional_freeze_hook_failure_is_recorded_only(tmp_path: Path) -> None:
    log = tmp_path / "log"
    opt = Hook(("sh", "-c", "echo flush failed >&2; exit 1"), timeout=10, required=False)
    with Window(str(tmp_path), "app", "hot", [opt, log_hook(log, "freeze")], [log_hook(log, "thaw")]) as w:
        with log.open("a") as f:
            f.write("body\n")
    assert lines(log) == ["freeze", "body", "thaw"]
    assert w.record()["errors"] == ["optional freeze hook (sh -c 'echo flush failed >&2; exit 1') "
                                    "failed with exit code 1: flush failed"]


def test_freeze_hook_timeout_fails_the_window(tmp_path: Path) -> None:
    log = tmp_path / "log"
    slow = Hook(("sleep", "30"), timeout=0.3)
    start = time.monotonic()
    with pytest.raises(HookError, match="timed out"):
        with Window(str(tmp_path), "app", "cold", [slow], [log_hook(log, "thaw")]):
            pytest.fail("body must not run")
    assert time.monotonic() - start < 20
    assert lines(log) == ["thaw"]


def test_failing_thaw_hook_does_not_stop_later_thaw_hooks(tmp_path: Path) -> None:
    log = tmp_path / "log"
    bad = Hook(("sh", "-c", "echo cannot start >&2; exit 2"), timeout=10)
    with Window(str(tmp_path), "app", "cold", [], [bad, log_hook(log, "thaw2")]) as w:
        pass
    assert lines(log) == ["thaw2"]
    assert len(w.record()["errors"]) == 1 and "cannot start" in w.record()["errors"][0]


def test_max_window_deadline_cancels_and_thaws_promptly(tmp_path: Path) -> None:
    log = tmp_path / "log"
    expired_calls: list[float] = []
    w = Window(str(tmp_path), "app", "cold", [log_hook(log, "freeze")], [log_hook(log, "thaw")],
               max_window=0.5, on_expire=lambda: expired_calls.append(time.monotonic()))
    thaw_seen_in_body = False
    with pytest.raises(DeadlineError, match="max_window of 0.5s"):
        with w:
            # a capture that honours the cancel event, like repo.backup(cancel=...)
            assert w.cancel.wait(20), "watchdog did not fire"
            # thaw runs from the watchdog without waiting for the body to finish
            for _ in range(200):
                if "thaw" in lines(log):
                    thaw_seen_in_body = True
                    break
                time.sleep(0.02)
            raise AbortedError("backup cancelled")
    assert thaw_seen_in_body
    assert lines(log) == ["freeze", "thaw"]
    assert len(expired_calls) == 1
    assert w.record()["expired"] is True
    assert list_record_paths(str(tmp_path)) == []
    with pytest.raises(DeadlineError):
        w.check_deadline()


def test_deadline_passed_by_a_body_that_ignores_cancel_still_fails(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pytest.raises(DeadlineError):
        with Window(str(tmp_path), "app", "cold", [], [log_hook(log, "thaw")], max_window=0.2) as w:
            time.sleep(0.6)
    assert lines(log) == ["thaw"] and w.expired


def test_deadline_during_a_freeze_hook_kills_it_and_thaws(tmp_path: Path) -> None:
    log = tmp_path / "log"
    slow = Hook(("sleep", "30"), timeout=60)
    start = time.monotonic()
    with pytest.raises(DeadlineError):
        with Window(str(tmp_path), "app", "cold", [slow, log_hook(log, "never")], [log_hook(log, "thaw")],
                    max_window=0.3):
            pytest.fail("body must not run")
    assert time.monotonic() - start < 20
    assert lines(log) == ["thaw"]


def test_external_cancel_during_freeze_aborts_after_thaw(tmp_path: Path) -> None:
    log = tmp_path / "log"
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(AbortedError, match="cancelled during freeze"):
        with Window(str(tmp_path), "app", "cold", [Hook(("sleep", "30"), timeout=60)],
                    [log_hook(log, "thaw")], cancel=cancel):
            pytest.fail("body must not run")
    assert lines(log) == ["thaw"]


def test_second_window_for_the_same_source_is_refused(tmp_path: Path) -> None:
    with Window(str(tmp_path), "app", "cold"):
        with pytest.raises(BusyError, match="already open"):
            with Window(str(tmp_path), "app", "cold"):
                pass
        with Window(str(tmp_path), "other/source", "hot"):
            pass


def test_bad_mode_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown quiesce mode 'warm'"):
        Window("/nonexistent", "app", "warm")


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from cairn.daemon.windows.quiesce import Hook, Window
    state, log = sys.argv[1], sys.argv[2]
    thaw = [Hook(("sh", "-c", f'echo thaw-$CAIRN_SOURCE-$CAIRN_HOOK_PHASE >> "{log}"'), timeout=10)]
    freeze = [Hook(("sh", "-c", f'echo freeze >> "{log}"'), timeout=10)]
    with Window(state, "portal", "cold", freeze, thaw, max_window=600):
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_window_left_open_by_a_killed_process_is_thawed_at_recovery(tmp_path: Path) -> None:
    log = tmp_path / "log"
    state = str(tmp_path / "state")
    r = subprocess.run([sys.executable, "-c", CRASHER, state, str(log)], capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert lines(log) == ["freeze"]  # the dying process never thawed
    assert len(list_record_paths(state)) == 1

    results = recover_windows(state)
    assert lines(log) == ["freeze", "thaw-portal-thaw"]
    assert len(results) == 1 and results[0].source == "portal" and results[0].ok
    assert results[0].results[0].exit_code == 0
    assert list_record_paths(state) == []
    assert recover_windows(state) == []  # nothing left the second time


def test_recovery_reports_failing_thaw_and_keeps_the_record_for_a_retry(tmp_path: Path) -> None:
    state = str(tmp_path)
    w = Window(state, "app", "cold", [], [Hook(("sh", "-c", "echo nope >&2; exit 1"), timeout=5)])
    # simulate a crash: write the record as __enter__ does, but never exit
    from cairn.daemon.windows.records import WindowRecord, write_record
    write_record(state, WindowRecord("app", "cold", 1, time.time(), 10.0, thaw=w.thaw_hooks))
    results = recover_windows(state)
    assert not results[0].ok and "nope" in (results[0].error or "") and results[0].kept
    assert len(list_record_paths(state)) == 1  # the thaw is retried (next set, next start)


def test_corrupt_record_is_kept_aside_and_reported(tmp_path: Path) -> None:
    d = tmp_path / "windows"
    d.mkdir()
    (d / "app.json").write_text("{not json")
    results = recover_windows(str(tmp_path))
    assert len(results) == 1 and results[0].error and "unable to read window record" in results[0].error
    assert (d / "app.json.corrupt").exists() and list_record_paths(str(tmp_path)) == []
