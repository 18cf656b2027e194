"""The daemon's signal inbox: SIGTERM, SIGINT and SIGHUP reach the main loop through a pipe.

What always holds:
- a signal wakes the main loop at once, whichever thread the kernel delivered it to: the
  interpreter's C-level handler writes the signal's number into a pipe (signal.set_wakeup_fd),
  and the main loop waits on that pipe with select();
- the Python-level handler takes no lock and does nothing. It runs in the main thread between
  two bytecodes, which may be inside a critical section of that same thread: the earlier
  handler set a threading.Event while the main loop could be inside Event.wait of the same
  event, holding its non-reentrant lock, and the daemon then hung at SIGTERM for good. A
  signal that landed on another thread also waited for the main loop's next timeout (5 s);
- signals come out of `wait` in the order they arrived; a burst larger than the pipe holds
  (64 KiB) is cut short, which loses nothing the loop acts on (a stop is a stop);
- only the signals installed here come out: the interpreter writes the number of every signal
  that has a Python handler, and another handler's signal (a test hook's SIGUSR1) is not a stop.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterable
from types import FrameType


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """Installed so the signals are caught (the default would end the process); the pipe carries them."""


class SignalInbox:
    """Install with `install` (main thread only); `wait` returns the signals received."""

    def __init__(self) -> None:
        self._read = self._write = -1  # the pipe is made by install
        self._installed: dict[int, object] = {}
        self._old_fd = -1

    def install(self, signals: Iterable[int]) -> None:
        if self._read < 0:
            self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for sig in signals:
            self._installed[sig] = signal.signal(sig, _ignore)

    def wait(self, timeout: float | None) -> list[int]:
        """The signals that arrived, waiting up to `timeout` seconds for one (None: no limit).
        Only after `install`."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        if not ready:
            return []
        got: list[int] = []
        while True:
            try:
                data = os.read(self._read, 512)
            except BlockingIOError:
                break
            if not data:
                break
            got.extend(sig for sig in data if sig in self._installed)  # not another handler's signal
        return got

    def close(self) -> None:
        """Put the handlers and the wakeup descriptor back; close the pipe (main thread only)."""
        for sig, old in self._installed.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._installed.clear()
        if self._read >= 0:
            signal.set_wakeup_fd(self._old_fd)
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = -1
