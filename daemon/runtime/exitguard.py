"""The daemon's last promise: once a stop begins, the process is gone by a deadline.

`Daemon.stop` bounds its own steps, but two places are outside its reach: a step that blocks
in a library (a join, a lock, a C call), and the interpreter's exit after `serve` returns,
which joins every non-daemon thread (grpc's worker pool among them) and runs the atexit hooks.
An `ExitGuard` is a daemon thread armed when the stop begins; when its deadline passes it
writes one error line and every thread's stack to stderr (what an operator needs to report
the hang), runs the given last steps (kill database tools, thaw windows: both idempotent),
and ends the process with `os._exit` and the code it was armed with.

What always holds: an armed guard either is disarmed or ends the process within its deadline
(plus the time its last steps take); re-arming only changes the deadline and the exit code.
"""

from __future__ import annotations

import faulthandler
import os
import threading
import time
from collections.abc import Callable

STDERR = 2


class ExitGuard:
    """A deadline after which the process ends, whatever it is doing."""

    def __init__(self, seconds: float, code: int, what: str, last_steps: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._code = code
        self._what = what
        self._seconds = seconds
        self._last_steps = last_steps
        self._disarmed = False
        self._thread = threading.Thread(target=self._watch, name="exit-guard", daemon=True)
        self._thread.start()

    def rearm(self, seconds: float, code: int, what: str) -> None:
        """A new deadline `seconds` from now, ending the process with `code` (`what` names the wait)."""
        with self._lock:
            self._deadline = time.monotonic() + seconds
            self._seconds = seconds
            self._code = code
            self._what = what
        self._changed.set()

    def disarm(self) -> None:
        """Let the process live on (a stop that was abandoned; tests)."""
        with self._lock:
            self._disarmed = True
        self._changed.set()

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._disarmed:
                    return
                left = self._deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.wait(left)
            self._changed.clear()
        with self._lock:
            code, what, seconds = self._code, self._what, self._seconds
        try:
            # Straight to the file descriptor: the hang may be holding a lock of logging or of sys.stderr.
            line = (f"cairnd: error: {what} did not end within {seconds:.0f}s; exiting with status {code} "
                    "(every thread's stack follows)\n")
            os.write(STDERR, line.encode())
            faulthandler.dump_traceback(file=STDERR, all_threads=True)
            if self._last_steps is not None:
                self._last_steps()
        finally:
            os._exit(code)
