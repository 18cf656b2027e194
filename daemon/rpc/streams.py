"""Streaming calls and the RPC threads they hold: slots per kind of stream, and the stall watch.

gRPC's synchronous server runs each call on one thread of a fixed pool until the call ends. A
stream whose client stops reading (a suspended `cairn restore`, a dead link that still
answers TCP) blocks its thread in the send of the next reply, for good: enough of them took
every thread of a listener, and then `wal-push`, `status` and every backup on it waited too.

What always holds:
- Every streaming call of cairn.v1.Cairn takes a slot of its listener's pool before it runs,
  or is refused at once with RESOURCE_EXHAUSTED: WAL calls (WalPush, WalFetch: PostgreSQL's
  archive and restore commands) take one of WAL_STREAMS, every other stream one of
  DATA_STREAMS. So data streams can never take the threads WAL calls need, and neither can
  take the RESERVED threads that unary calls (status, sets, prune, ...) are left with
  (`workers()` sizes the pool).
- A call that has waited on its client for longer than the stall timeout (a reply the client
  does not take, or a request it does not send) is cancelled by the StallWatch: its thread and
  slot come free, and the client sees CANCELLED. Time the daemon itself spends between
  replies (reading a repository, hashing) never counts: only the wait on the client does.
  Nothing gives up on such a client sooner: the connection's own timeouts (gRPC's pings and
  SETTINGS, the kernel's TCP_USER_TIMEOUT) are set past STALL_TIMEOUT by `server`, so a client
  suspended for less than it resumes its stream.
- A slot is released exactly once, when the call's handler ends (also when it raises, or
  when gRPC closes the generator of a cancelled call). A handler blocked in a send to a client
  that takes nothing is not woken when the server stops (gRPC cancels the call, the send
  still waits): its slot stays taken, which is how the daemon's exit knows not to join its
  thread (`held`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from cairn import protocol

log = logging.getLogger(__name__)

DATA_STREAMS = 12  # restores, listings, backups' and verifies' progress, copies, ...
WAL_STREAMS = 6  # WalPush and WalFetch: PostgreSQL's archive and recovery wait on them
RESERVED = 4  # threads no stream can take: unary calls always find one
WAL_METHODS = frozenset({"WalPush", "WalFetch"})
STALL_TIMEOUT = float(os.environ.get("CAIRN_RPC_STALL_TIMEOUT", "600"))  # seconds waiting on a client


def workers(aux_streams: int) -> int:
    """Threads of one listener's pool: every slot of every stream pool, plus RESERVED."""
    return DATA_STREAMS + WAL_STREAMS + aux_streams + RESERVED


class Slots:
    """A fixed number of slots for long-lived streams; taking one never blocks."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._free = threading.BoundedSemaphore(count)
        self._held = 0
        self._held_lock = threading.Lock()

    def held(self) -> int:
        """How many slots are taken: calls whose handler has not ended."""
        with self._held_lock:
            return self._held

    def take(self, context: grpc.ServicerContext, what: str) -> Callable[[], None]:
        """A slot, or abort the call with RESOURCE_EXHAUSTED; returns its release (safe to call twice)."""
        if not self._free.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{protocol.BUSY_PREFIX}{what} streams (at most {self.count} at a time); try again later",
            )
        released = threading.Event()
        once = threading.Lock()
        with self._held_lock:
            self._held += 1

        def release() -> None:
            with once:
                if released.is_set():
                    return
                released.set()
            with self._held_lock:
                self._held -= 1
            self._free.release()

        return release


class StallWatch:
    """Cancels calls that wait on their client for longer than `timeout` seconds."""

    def __init__(self, timeout: float = STALL_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._waits: dict[int, tuple[grpc.ServicerContext, float, str]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @contextlib.contextmanager
    def waiting(self, context: grpc.ServicerContext, what: str) -> Iterator[None]:
        """The block runs while the call waits on its client (`what` names it for the log)."""
        key = next(self._ids)
        with self._lock:
            self._waits[key] = (context, time.monotonic(), what)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rpc-stall-watch", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._waits.pop(key, None)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        period = max(0.05, min(5.0, self.timeout / 4))
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                stalled = [(k, c, w) for k, (c, since, w) in self._waits.items() if now - since > self.timeout]
                for k, _, _ in stalled:
                    del self._waits[k]
            for _, context, what in stalled:
                log.warning("cancelled a call whose client has not taken %s for %.0f s: its thread and slot are "
                            "free again", what, self.timeout)
                context.cancel()


class StreamGuard:
    """The slots and the stall watch of one listener, wrapped around the Cairn handlers."""

    def __init__(self, watch: StallWatch | None = None) -> None:
        self.data = Slots(DATA_STREAMS)
        self.wal = Slots(WAL_STREAMS)
        self.watch = watch or StallWatch()

    def held(self) -> int:
        """Streaming calls whose handler has not ended (on a stopped server: blocked in a send)."""
        return self.data.held() + self.wal.held()

    def replies(self, name: str, handler: Callable[[Any, grpc.ServicerContext], Iterable[Any]]) -> Callable:
        """A server-streaming handler that holds a slot and whose sends the stall watch times."""
        pool, kind = self._pool(name)

        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            release = pool.take(context, kind)
            try:
                for reply in handler(request, context):
                    with self.watch.waiting(context, f"a {name} reply"):
                        yield reply  # resumes once gRPC has sent it (flow control: the client read)
            finally:
                release()

        return handle

    def requests(self, name: str, handler: Callable[[Iterator[Any], grpc.ServicerContext], Any]) -> Callable:
        """A client-streaming handler that holds a slot and whose reads the stall watch times."""
        pool, kind = self._pool(name)

        def handle(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
            release = pool.take(context, kind)
            try:
                return handler(self._timed(request_iterator, context, name), context)
            finally:
                release()

        return handle

    def _pool(self, name: str) -> tuple[Slots, str]:
        return (self.wal, "WAL") if name in WAL_METHODS else (self.data, "restore, listing and progress")

    def _timed(self, requests: Iterator[Any], context: grpc.ServicerContext, name: str) -> Iterator[Any]:
        it = iter(requests)
        while True:
            with self.watch.waiting(context, f"the next {name} request"):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item
