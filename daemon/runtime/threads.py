"""The base class of the daemon's long-running threads.

A `ServiceThread` never dies silently: an exception escaping `run_safe` is logged and kept in
`.failure`, and `.healthy` turns false, so the daemon can report it (status, watchdog) instead
of limping on without, say, its scheduler. Stopping is cooperative: `stop()` sets an event
that `run_safe` polls through `stopping` or sleeps on through `wait()`.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class ServiceThread(threading.Thread):
    """A daemon thread with a stop event and failure recording. Subclasses implement run_safe()."""

    def __init__(self, name: str, *, daemon: bool = True) -> None:
        super().__init__(name=name, daemon=daemon)
        self._stop_requested = threading.Event()
        self.failure: BaseException | None = None

    def run_safe(self) -> None:
        """The thread's work; return when `stopping` becomes true."""
        raise NotImplementedError

    def run(self) -> None:
        try:
            self.run_safe()
        except Exception as exc:  # recording every failure is the point
            self.failure = exc
            log.exception("thread %s failed: %s", self.name, exc, extra={"thread_name": self.name})

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stop_requested.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to `timeout` seconds or until stop(); return True if stopping."""
        return self._stop_requested.wait(timeout)

    def request_stop(self) -> None:
        """Ask the thread to stop without waiting for it."""
        self._stop_requested.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to stop and wait up to `timeout`; return True if it has ended."""
        self.request_stop()
        if self.ident is not None and self is not threading.current_thread():
            self.join(timeout)
        return not self.is_alive()

    @property
    def healthy(self) -> bool:
        """Running (or stopped on request) and no failure recorded."""
        if self.failure is not None:
            return False
        return self.is_alive() or (self.stopping and self.ident is not None)
