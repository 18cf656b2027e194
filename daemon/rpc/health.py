"""The auxiliary services (grpc.health.v1 and server reflection), served so that they can never
take the RPC threads that backups, WAL pushes and restores need.

What always holds:
- `Check` and `List` answer at once from memory.
- A `Watch` stream holds an RPC thread only while its client is still there: it wakes at least
  every WATCH_POLL seconds (and at once when its call ends or a status changes) and returns
  as soon as the call is no longer active. It never waits on a callback that a call which
  ended before it was registered would never fire (the stock servicer does, and a few
  cancelled Watch calls then pin every thread of the server for good).
- Long-lived auxiliary streams (health `Watch`, reflection `ServerReflectionInfo`) share
  AUX_STREAMS slots; a call beyond them is refused at once with RESOURCE_EXHAUSTED, so at
  most AUX_STREAMS of the server's threads can ever be theirs.
- After `enter_graceful_shutdown` every service reports NOT_SERVING and watches end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
from cairn.daemon.rpc.errors import bounded
from cairn.daemon.rpc.streams import Slots
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

AUX_STREAMS = 4
WATCH_POLL = 1.0

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(health_pb2_grpc.HealthServicer):
    """grpc.health.v1.Health: Check, List and a Watch that cannot pin a thread."""

    def __init__(self, slots: Slots, poll: float = WATCH_POLL) -> None:
        self._slots = slots
        self._poll = poll
        self._cond = threading.Condition()
        self._status: dict[str, int] = {"": _SERVING}
        self._closing = False

    def set(self, service: str, status: int) -> None:
        """Set a service's status (ignored once shutting down); watchers see it at once."""
        with self._cond:
            if self._closing:
                return
            self._status[service] = status
            self._cond.notify_all()

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on; open watches send that and end."""
        with self._cond:
            for service in self._status:
                self._status[service] = _NOT_SERVING
            self._closing = True
            self._cond.notify_all()

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Any:
        with self._cond:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, bounded(f"unknown service '{request.service}'"))
        return health_pb2.HealthCheckResponse(status=status)

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            statuses = dict(self._status)
        reply = health_pb2.HealthListResponse()
        for name, status in statuses.items():
            reply.statuses[name].status = status
        return reply

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        release = self._slots.take(context, "health watch")
        context.add_callback(release)
        try:
            yield from self._watch(request.service, context)
        finally:
            release()

    def _watch(self, service: str, context: grpc.ServicerContext) -> Iterator[Any]:
        cond = self._cond

        def wake() -> None:
            with cond:
                cond.notify_all()

        if not context.add_callback(wake):
            return  # the call already ended
        sent = None
        while True:
            with cond:
                status = self._status.get(service, _UNKNOWN)
                if status == sent and not self._closing:
                    cond.wait(self._poll)
                    status = self._status.get(service, _UNKNOWN)
                closing = self._closing
            if not context.is_active():
                return
            if status != sent:
                sent = status
                yield health_pb2.HealthCheckResponse(status=status)
            if closing:
                return


class LimitedReflection(reflection.ReflectionServicer):
    """Server reflection whose streams take one of the shared auxiliary slots."""

    def __init__(self, service_names: Any, slots: Slots) -> None:
        super().__init__(service_names)
        self._slots = slots

    def ServerReflectionInfo(self, request_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        release = self._slots.take(context, "reflection")
        context.add_callback(release)
        try:
            yield from super().ServerReflectionInfo(request_iterator, context)
        finally:
            release()
