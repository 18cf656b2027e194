"""run_with_progress (daemon/rpc/servicer.py): progress is throttled to one report per
PROGRESS_INTERVAL, but the work's result is handed on as soon as the work ends, never held
back by the throttle (a one-file restore waited out a whole interval after its last report)."""

from __future__ import annotations

import threading
import time

import pytest
from cairn.daemon.rpc import servicer
from cairn.store.model import Progress


class _Context:
    """What run_with_progress asks of a gRPC call's context: a live call."""

    def add_callback(self, fn) -> bool:
        return True

    def is_active(self) -> bool:
        return True


def test_the_result_follows_the_last_progress_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servicer, "PROGRESS_INTERVAL", 30.0)
    reported = threading.Event()

    def work(publish) -> str:
        publish(Progress("restore", 0, 1, 0, 2))
        reported.wait(10)  # the relay has handed the report on and throttles now
        return "result"

    items = servicer.run_with_progress(work, _Context(), "restore")
    assert isinstance(next(items), Progress)
    t0 = time.monotonic()
    reported.set()
    assert next(items) == "result"
    assert time.monotonic() - t0 < 5, "the result waited out the progress interval"


def test_progress_is_still_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servicer, "PROGRESS_INTERVAL", 0.5)
    done = threading.Event()
    count = [0]

    def work(publish) -> str:
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            publish(Progress("restore", count[0], 0, 0, 0))
            count[0] += 1
            time.sleep(0.001)
        done.set()
        return "result"

    got = list(servicer.run_with_progress(work, _Context(), "restore"))
    assert got[-1] == "result" and done.is_set()
    reports = got[:-1]
    assert 1 <= len(reports) <= 4 and count[0] > 100, (len(reports), count[0])
