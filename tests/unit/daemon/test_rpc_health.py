"""daemon/rpc/health.py: a Watch never waits for a callback that cannot come, and slots are bounded.

A stand-in ServicerContext plays the parts gRPC plays: whether the call is active, whether a
callback can still be registered (not once the call has ended), and abort.
"""

from __future__ import annotations

import threading

import grpc
import pytest
from cairn.daemon.rpc.health import HealthService, Slots
from grpc_health.v1 import health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Aborted(Exception):
    pass


class Context:
    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.callbacks: list = []
        self.code = None

    def is_active(self) -> bool:
        return self.active

    def add_callback(self, fn) -> bool:
        if not self.active:
            return False  # what gRPC does once the call has ended
        self.callbacks.append(fn)
        return True

    def end(self) -> None:
        self.active = False
        for fn in self.callbacks:
            fn()

    def abort(self, code, details):
        self.code = code
        raise Aborted(details)


def _run(gen) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.extend(r.status for r in gen), daemon=True)
    t.start()
    return t, out


def test_a_watch_whose_call_already_ended_returns_at_once_and_frees_its_slot():
    slots = Slots(1)
    health = HealthService(slots, poll=60)
    t, out = _run(health.Watch(health_pb2.HealthCheckRequest(), Context(active=False)))
    t.join(5)
    assert not t.is_alive(), "a Watch on an ended call waits forever"
    assert out == []
    t, out = _run(health.Watch(health_pb2.HealthCheckRequest(), Context(active=False)))
    t.join(5)
    assert not t.is_alive()  # the slot came back: the second was admitted and returned too


def test_a_watch_ends_when_its_call_ends_and_sees_status_changes():
    health = HealthService(Slots(2), poll=60)
    ctx = Context()
    gen = health.Watch(health_pb2.HealthCheckRequest(service="svc"), ctx)
    assert next(gen).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    health.set("svc", SERVING)
    assert next(gen).status == SERVING
    t, out = _run(gen)
    ctx.end()  # wakes the waiting watch long before its 60 s poll
    t.join(5)
    assert not t.is_alive() and out == []


def test_watches_beyond_the_slots_are_refused_and_shutdown_ends_them():
    health = HealthService(Slots(2), poll=60)
    ctxs = [Context(), Context()]
    gens = [health.Watch(health_pb2.HealthCheckRequest(), c) for c in ctxs]
    assert [next(g).status for g in gens] == [SERVING, SERVING]
    extra = Context()
    with pytest.raises(Aborted, match="at most 2"):
        next(health.Watch(health_pb2.HealthCheckRequest(), extra))
    assert extra.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    threads = [_run(g) for g in gens]
    health.enter_graceful_shutdown()
    for t, out in threads:
        t.join(5)
        assert not t.is_alive() and out == [NOT_SERVING]
    health.set("", SERVING)  # ignored once shutting down
    assert health.Check(health_pb2.HealthCheckRequest(), Context()).status == NOT_SERVING
