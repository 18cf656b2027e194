"""A fault-injecting backend for crash-safety and conformance tests.

`FaultyBackend` wraps another backend and counts the calls of chosen methods (`ops`, by
default only `put`; any of OPS), optionally only of some kinds. At call number `fail_at`
(counting from 1; with `repeat`, also at every later counted call) it injects a fault:
- "fail": the call raises BackendError before it reaches the inner backend; later calls pass;
- "fail-from": that call and every later counted call raise (storage that went away);
- "stop": that call and every later call of ANY method and kind raise, as for a process
  killed at that point: nothing more reaches the storage;
- "truncate": a torn transfer. put / put_if_absent store half the object, then raise (what a
  crash in the middle of a non-atomic write leaves); get / get_range return the first half of
  the bytes without an error (what a reader must detect); list / list_info yield only the
  first half of the names (a listing that lost entries);
- "delay": the call sleeps `delay` seconds, then passes (a slow store; interleaves threads);
- "reorder": the call is held back until the next counted call (from another thread) has
  completed, or at most `delay` seconds, then passes, so two concurrent operations complete
  in the opposite order; a list / list_info comes in reverse order instead of sorted.
`hook(op, kind, name)` is called before every call, for tests that interleave operations
deterministically. What always holds: a fault never changes an object other than the one the
faulted call names, and "fail", "fail-from" and "stop" let nothing of the call reach storage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from ..errors import BackendError
from .backend import Backend, ObjectInfo

MODES = ("fail", "truncate", "fail-from", "stop", "delay", "reorder")
OPS = ("get", "get_range", "put", "put_if_absent", "list", "list_info", "delete", "stat")
TRUNCATABLE = ("get", "get_range", "put", "put_if_absent", "list", "list_info")


class FaultyBackend:
    """Wraps `inner`; injects a fault at counted call number `fail_at` (1-based)."""

    def __init__(self, inner: Backend, *, fail_at: int | None = None, mode: str = "fail",
                 kind: str | Iterable[str] | None = None, ops: Iterable[str] = ("put",),
                 hook: Callable[[str, str, str], None] | None = None, delay: float = 0.05,
                 repeat: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown fault mode '{mode}'")
        self.ops = tuple(ops)
        if any(op not in OPS for op in self.ops):
            raise ValueError(f"unknown backend method in {self.ops}")
        if mode == "truncate" and any(op not in TRUNCATABLE for op in self.ops):
            raise ValueError(f"mode 'truncate' applies to {', '.join(TRUNCATABLE)} only")
        self.inner = inner
        self.fail_at = fail_at
        self.mode = mode
        self.repeat = repeat  # "fail-from" always repeats (its mode may be set after construction)
        self.delay = delay
        self.kinds = None if kind is None else ({kind} if isinstance(kind, str) else set(kind))
        self.hook = hook
        self.puts = 0  # counted calls (named for the original put-only counter)
        self.fired = False
        self.stopped = False
        self.calls: list[tuple[str, str, str]] = []  # every counted call, in order
        self._mutex = threading.Lock()
        self._held: list[threading.Event] = []  # reordered calls waiting for a later one

    @property
    def kind(self) -> str | None:
        return next(iter(self.kinds)) if self.kinds and len(self.kinds) == 1 else None

    def location(self) -> str:
        return "faulty:" + self.inner.location()

    def _before(self, op: str, kind: str, name: str = "") -> str | None:
        """Count the call; raise for failing faults; return the mode to apply to a call that
        goes on ("truncate", "reorder"), or None."""
        if self.hook is not None:
            self.hook(op, kind, name)
        if self.stopped:
            raise BackendError(f"unable to {op} {kind} object '{name}': injected stop")
        if op not in self.ops or (self.kinds is not None and kind not in self.kinds):
            return None
        with self._mutex:
            self.puts += 1
            self.calls.append((op, kind, name))
            repeat = self.repeat or self.mode == "fail-from"
            hit = self.fail_at is not None and (self.puts == self.fail_at or (repeat and self.puts > self.fail_at))
            if hit:
                self.fired = True
                if self.mode == "stop":
                    self.stopped = True
        if not hit:
            return None
        if self.mode == "delay":
            time.sleep(self.delay)
            return None
        if self.mode in ("truncate", "reorder"):
            return self.mode
        raise BackendError(f"unable to {op} {kind} object '{name}': injected {self.mode} fault")

    def _hold(self) -> None:
        """A reordered call: wait until a later counted call completed (at most `delay`)."""
        ev = threading.Event()
        with self._mutex:
            self._held.append(ev)
        ev.wait(self.delay)
        with self._mutex:
            if ev in self._held:
                self._held.remove(ev)

    def _after(self, fault: str | None) -> None:
        """A counted call completed: release the reordered calls held before it."""
        if fault == "reorder":
            return
        with self._mutex:
            held, self._held = self._held, []
        for ev in held:
            ev.set()

    def get(self, kind: str, name: str) -> bytes:
        fault = self._before("get", kind, name)
        data = self._pass("get", fault, lambda: self.inner.get(kind, name))
        return data[: len(data) // 2] if fault == "truncate" else data

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        fault = self._before("get_range", kind, name)
        data = self._pass("get_range", fault, lambda: self.inner.get_range(kind, name, offset, length))
        return data[: len(data) // 2] if fault == "truncate" else data

    def put(self, kind: str, name: str, data: bytes) -> None:
        fault = self._before("put", kind, name)
        if fault == "truncate":
            self.inner.put(kind, name, bytes(data)[: len(data) // 2])
            raise BackendError(f"unable to put {kind} object '{name}': injected truncate fault")
        self._pass("put", fault, lambda: self.inner.put(kind, name, data))

    def put_if_absent(self, kind: str, name: str, data: bytes) -> bool:
        fault = self._before("put_if_absent", kind, name)
        if fault == "truncate":
            self.inner.put_if_absent(kind, name, bytes(data)[: len(data) // 2])
            raise BackendError(f"unable to put_if_absent {kind} object '{name}': injected truncate fault")
        return self._pass("put_if_absent", fault, lambda: self.inner.put_if_absent(kind, name, data))

    def list(self, kind: str) -> Iterator[str]:
        fault = self._before("list", kind)
        names = self._pass("list", fault, lambda: list(self.inner.list(kind)))
        return iter(_shape(names, fault))

    def list_info(self, kind: str) -> Iterator[ObjectInfo]:
        fault = self._before("list_info", kind)
        found = self._pass("list_info", fault, lambda: list(self.inner.list_info(kind)))
        return iter(_shape(found, fault))

    def delete(self, kind: str, name: str) -> None:
        fault = self._before("delete", kind, name)
        self._pass("delete", fault, lambda: self.inner.delete(kind, name))

    def stat(self, kind: str, name: str) -> int:
        fault = self._before("stat", kind, name)
        return self._pass("stat", fault, lambda: self.inner.stat(kind, name))

    def _pass(self, op: str, fault: str | None, call: Callable[[], object]):  # noqa: ANN202 - the call's result
        """Run a call that was let through (held back first when reordered)."""
        if fault == "reorder" and op not in ("list", "list_info"):
            self._hold()
        try:
            return call()
        finally:
            if op in self.ops:
                self._after(fault)

    def __getattr__(self, attr: str):  # sweep_temp, close, conditional_writes, ...: the inner backend's
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)


def _shape(items: list, fault: str | None) -> list:
    if fault == "truncate":
        return items[: len(items) // 2]
    if fault == "reorder":
        return items[::-1]
    return items
