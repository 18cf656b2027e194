"""ServiceThread: failures are recorded, stop is cooperative, health is reported."""

from __future__ import annotations

import threading

from cairn.daemon.runtime.threads import ServiceThread


class Looper(ServiceThread):
    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(name="looper")
        self.fail_after = fail_after
        self.rounds = 0
        self.running = threading.Event()

    def run_safe(self) -> None:
        while not self.wait(0.005):
            self.rounds += 1
            self.running.set()
            if self.fail_after is not None and self.rounds >= self.fail_after:
                raise RuntimeError("disk on fire")


def test_stop_ends_the_loop_and_stays_healthy():
    thread = Looper()
    assert not thread.healthy  # not started
    thread.start()
    assert thread.running.wait(2)
    assert thread.healthy and not thread.stopping
    assert thread.stop(2)
    assert not thread.is_alive()
    assert thread.stopping and thread.healthy and thread.failure is None


def test_unexpected_exception_is_recorded_and_logged(caplog):
    thread = Looper(fail_after=2)
    thread.start()
    thread.join(2)
    assert not thread.is_alive()
    assert isinstance(thread.failure, RuntimeError)
    assert not thread.healthy
    assert "thread looper failed: disk on fire" in caplog.text


def test_thread_that_returns_unasked_is_unhealthy():
    class Quitter(ServiceThread):
        def run_safe(self) -> None:
            return

    thread = Quitter("quitter")
    thread.start()
    thread.join(2)
    assert thread.failure is None and not thread.healthy
    assert thread.daemon


def test_stop_without_start_and_from_inside():
    thread = Looper()
    assert thread.stop(0.1)

    class SelfStopper(ServiceThread):
        def run_safe(self) -> None:
            self.stopped_inside = self.stop(1)

    inner = SelfStopper("self")
    inner.start()
    inner.join(2)
    assert inner.stopped_inside is False and inner.healthy
