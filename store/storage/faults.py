"""A fault-injecting backend for crash-safety tests.

`FaultyBackend` wraps another backend and counts the calls of chosen methods (`ops`, by
default only `put`), optionally only of some kinds. At call number `fail_at` (counting from
1) it injects a fault before the call reaches the inner backend:
- "fail": that one call raises BackendError, nothing is written; later calls pass;
- "truncate" (put only): half the object is stored, then BackendError, which is what a crash
  in the middle of a non-atomic write leaves;
- "fail-from": that call and every later counted call raise (storage that went away);
- "stop": that call and every later call of ANY method and kind raise, as for a process
  killed at that point: nothing more reaches the storage.
`hook(op, kind, name)` is called before every call, for tests that interleave operations
deterministically. Reads can be made to fail too by naming them in `ops`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..errors import BackendError
from .backend import Backend

MODES = ("fail", "truncate", "fail-from", "stop")
OPS = ("get", "get_range", "put", "list", "delete", "stat")


class FaultyBackend:
    """Wraps `inner`; injects a fault at counted call number `fail_at` (1-based)."""

    def __init__(self, inner: Backend, *, fail_at: int | None = None, mode: str = "fail",
                 kind: str | Iterable[str] | None = None, ops: Iterable[str] = ("put",),
                 hook: Callable[[str, str, str], None] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown fault mode '{mode}'")
        self.ops = tuple(ops)
        if any(op not in OPS for op in self.ops):
            raise ValueError(f"unknown backend method in {self.ops}")
        if mode == "truncate" and self.ops != ("put",):
            raise ValueError("mode 'truncate' applies to put only")
        self.inner = inner
        self.fail_at = fail_at
        self.mode = mode
        self.kinds = None if kind is None else ({kind} if isinstance(kind, str) else set(kind))
        self.hook = hook
        self.puts = 0  # counted calls (named for the original put-only counter)
        self.fired = False
        self.stopped = False
        self.calls: list[tuple[str, str, str]] = []  # every counted call, in order

    @property
    def kind(self) -> str | None:
        return next(iter(self.kinds)) if self.kinds and len(self.kinds) == 1 else None

    def location(self) -> str:
        return "faulty:" + self.inner.location()

    def _before(self, op: str, kind: str, name: str = "", data: bytes | None = None) -> None:
        if self.hook is not None:
            self.hook(op, kind, name)
        if self.stopped:
            raise BackendError(f"unable to {op} {kind} object '{name}': injected stop")
        if op not in self.ops or (self.kinds is not None and kind not in self.kinds):
            return
        self.puts += 1
        self.calls.append((op, kind, name))
        hit = self.fail_at is not None and (self.puts == self.fail_at
                                            or (self.mode == "fail-from" and self.puts > self.fail_at))
        if not hit:
            return
        self.fired = True
        if self.mode == "stop":
            self.stopped = True
        if self.mode == "truncate" and data is not None:
            self.inner.put(kind, name, data[: len(data) // 2])
        raise BackendError(f"unable to {op} {kind} object '{name}': injected {self.mode} fault")

    def get(self, kind: str, name: str) -> bytes:
        self._before("get", kind, name)
        return self.inner.get(kind, name)

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        self._before("get_range", kind, name)
        return self.inner.get_range(kind, name, offset, length)

    def put(self, kind: str, name: str, data: bytes) -> None:
        self._before("put", kind, name, data)
        self.inner.put(kind, name, data)

    def list(self, kind: str) -> Iterator[str]:
        self._before("list", kind)
        return self.inner.list(kind)

    def delete(self, kind: str, name: str) -> None:
        self._before("delete", kind, name)
        self.inner.delete(kind, name)

    def stat(self, kind: str, name: str) -> int:
        self._before("stat", kind, name)
        return self.inner.stat(kind, name)
