"""The exit guard ends a process whose stop or interpreter exit hangs, by its deadline, with the
code it was armed with and every thread's stack on stderr; disarmed, it leaves the process be."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

HANG_AT_EXIT = """
import threading, time
from cairn.daemon.runtime.exitguard import ExitGuard
# a non-daemon thread that never ends: the interpreter's exit joins it forever
threading.Thread(target=lambda: threading.Event().wait(), name="stuck-worker").start()
"""


def _run(body: str, timeout: float = 30) -> tuple[int, str, float]:
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stderr, time.monotonic() - began


def test_a_hang_in_the_interpreters_exit_ends_by_the_deadline_with_the_armed_code_and_the_stacks():
    code, err, took = _run(HANG_AT_EXIT + """
ExitGuard(60, 1, "the stop").disarm()
ExitGuard(0.5, 0, "the interpreter's exit after the stop")
""")
    assert code == 0, err
    assert took < 15
    assert "cairnd: error: the interpreter's exit after the stop did not end within 0s; exiting with status 0" in err
    assert err.count("Thread 0x") + err.count("Current thread 0x") >= 2  # faulthandler's dump of every thread


def test_a_stop_that_hangs_ends_with_the_armed_code_after_its_last_steps():
    code, err, _ = _run(HANG_AT_EXIT + """
import sys
guard = ExitGuard(0.5, 3, "the stop", last_steps=lambda: sys.stderr.write("LAST STEPS RAN\\n") or sys.stderr.flush())
time.sleep(60)  # the stop itself hangs
""")
    assert code == 3, err
    assert "the stop did not end within 0s; exiting with status 3" in err
    assert "LAST STEPS RAN" in err


def test_a_disarmed_guard_leaves_the_process_to_end_by_itself():
    code, err, took = _run("""
import sys, time
from cairn.daemon.runtime.exitguard import ExitGuard
guard = ExitGuard(0.3, 0, "the stop")
guard.disarm()
time.sleep(1.0)
sys.exit(7)
""")
    assert code == 7, err
    assert "did not end" not in err
    assert took >= 1.0


def test_a_process_that_exits_in_time_is_not_touched():
    code, err, _ = _run("""
import sys
from cairn.daemon.runtime.exitguard import ExitGuard
ExitGuard(30, 0, "the stop")
sys.exit(5)
""")
    assert code == 5 and "did not end" not in err
