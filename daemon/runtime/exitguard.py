"""The daemon's last promise: once a stop begins, the process is gone by a deadline.

`Daemon.stop` bounds its own steps, but two places are outside its reach: a step that blocks
in a library (a join, a lock, a C call), and the interpreter's exit after `serve` returns,
which joins every non-daemon thread (grpc's worker pool among them) and runs the atexit hooks.
An `ExitGuard` is a daemon thread armed when the stop begins; when its deadline passes it
writes one error line and every thread's stack to stderr (what an operator needs to report
the hang), runs the given last steps (kill database tools, thaw windows: both idempotent),
and ends the process with `os._exit` and the code it was armed with.

What always holds: an armed guard either is disarmed or ends the process within its deadline
(plus the time its last steps take). `Daemon.stop` disarms its guard when it returns (a test
may go on in the same process); `serve` then arms a short one for the interpreter's exit.
"""

from __future__ import annotations

import faulthandler
import os
import threading
from collections.abc import Callable

STDERR = 2


class ExitGuard:
    """A deadline after which the process ends, whatever it is doing."""

    def __init__(self, seconds: float, code: int, what: str, last_steps: Callable[[], None] | None = None) -> None:
        self._seconds = seconds
        self._code = code
        self._what = what
        self._last_steps = last_steps
        self._disarmed = threading.Event()
        threading.Thread(target=self._watch, name="exit-guard", daemon=True).start()

    def disarm(self) -> None:
        """Let the process live on (the stop returned to a caller that goes on, as a test does)."""
        self._disarmed.set()

    def _watch(self) -> None:
        if self._disarmed.wait(self._seconds):
            return
        try:
            # Straight to the file descriptor: the hang may be holding a lock of logging or of sys.stderr.
            line = (f"cairnd: error: {self._what} did not end within {self._seconds:.0f}s; exiting with status "
                    f"{self._code} (every thread's stack follows)\n")
            os.write(STDERR, line.encode())
            faulthandler.dump_traceback(file=STDERR, all_threads=True)
            if self._last_steps is not None:
                self._last_steps()
        finally:
            os._exit(self._code)
