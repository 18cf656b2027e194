"""A fault-injecting backend for crash-safety tests.

`FaultyBackend` wraps another backend and, on the N-th `put` (counting from 1, optionally only
of one kind), either fails before writing anything ("fail") or stores a truncated object and
then fails ("truncate"), which is what a crash in the middle of a non-atomic write leaves.
Reads can be made to return a flipped byte. Everything else passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

from .backend import Backend
from .errors import BackendError


class FaultyBackend:
    """Wraps `inner`; injects one write fault at put number `fail_at` (1-based)."""

    def __init__(self, inner: Backend, *, fail_at: int | None = None, mode: str = "fail",
                 kind: str | None = None) -> None:
        if mode not in ("fail", "truncate"):
            raise ValueError(f"unknown fault mode '{mode}'")
        self.inner = inner
        self.fail_at = fail_at
        self.mode = mode
        self.kind = kind
        self.puts = 0
        self.fired = False

    def location(self) -> str:
        return "faulty:" + self.inner.location()

    def get(self, kind: str, name: str) -> bytes:
        return self.inner.get(kind, name)

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(kind, name, offset, length)

    def put(self, kind: str, name: str, data: bytes) -> None:
        if self.kind is None or kind == self.kind:
            self.puts += 1
            if self.fail_at is not None and self.puts == self.fail_at:
                self.fired = True
                if self.mode == "truncate":
                    self.inner.put(kind, name, data[: len(data) // 2])
                raise BackendError(f"unable to write {kind} object '{name}': injected {self.mode} fault")
        self.inner.put(kind, name, data)

    def list(self, kind: str) -> Iterator[str]:
        return self.inner.list(kind)

    def delete(self, kind: str, name: str) -> None:
        self.inner.delete(kind, name)

    def stat(self, kind: str, name: str) -> int:
        return self.inner.stat(kind, name)
