"""walslots.when_free: a WAL command waits for a slot of the daemon, and only for that."""

from __future__ import annotations

import grpc
import pytest
from cairn import protocol
from cairn.client import walslots


class Refusal(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


BUSY = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{protocol.BUSY_PREFIX}WAL streams (at most 6 at a time)")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, s: float) -> None:
        self.now += s

    def __call__(self) -> float:
        return self.now


def test_a_refused_call_is_made_again_until_a_slot_is_free(capsys: pytest.CaptureFixture[str]) -> None:
    answers: list[object] = [BUSY, BUSY, BUSY, "stored"]
    clock = Clock()

    def call() -> str:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return str(a)

    assert walslots.when_free(call, "wal-push of X", sleep=clock.sleep, clock=clock) == "stored"
    assert capsys.readouterr().err.count("every WAL slot of the daemon is taken") == 1  # said once


def test_other_errors_and_other_exhaustion_are_not_retried() -> None:
    for exc in (Refusal(grpc.StatusCode.NOT_FOUND, "no such segment"),
                Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max")):
        calls: list[int] = []

        def call(exc: Exception = exc, calls: list[int] = calls) -> None:
            calls.append(1)
            raise exc

        with pytest.raises(grpc.RpcError):
            walslots.when_free(call, "wal-fetch of X", sleep=lambda s: None)
        assert len(calls) == 1


def test_the_wait_is_bounded() -> None:
    clock = Clock()
    calls = []

    def call() -> None:
        calls.append(clock.now)
        raise BUSY

    with pytest.raises(grpc.RpcError) as exc:
        walslots.when_free(call, "wal-fetch of X", wait=10, sleep=clock.sleep, clock=clock)
    assert exc.value is BUSY and clock.now <= 10 and len(calls) > 5
