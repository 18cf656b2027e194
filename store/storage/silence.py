"""How long an object store has left one operation unanswered, and when that is too long.

A stalled store (its process stopped, its connections left open) is silence, not slowness:
requests are sent and nothing comes back. `Silence` measures it per thread (an operation and
all its attempts run in one thread) and says when an operation has waited `bound` seconds for
an answer. What always holds:
- only unanswered time counts: an attempt that timed out adds the time it waited, at most its
  socket timeout (the bytes before that were moving); the time from a silent attempt to the
  next one (backoff) adds too; a transfer that is moving adds nothing, so there is no
  wall-clock limit on an upload or download however slow;
- any answer from the store (an HTTP response of any status) sets the silence back to zero;
- operations nest (one that calls another inside it): only the outermost starts from zero;
- once an operation has reached the bound, the store is known to be silent (in every thread)
  until it answers again: an operation that starts then has its first unanswered request
  end it, so the steps of a failure that follow (a lock to release, uploads in flight) add one
  request's timeout each, not the whole bound again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Silence:
    """The unanswered seconds of the operation running in each thread, against `bound`."""

    def __init__(self, bound: float) -> None:
        if not bound > 0:
            raise ValueError(f"invalid silence bound {bound}: expected above zero")
        self.bound = bound
        self._local = threading.local()
        self._known_silent = False  # an operation reached the bound and nothing answered since

    def _state(self) -> threading.local:
        local = self._local
        if not hasattr(local, "depth"):
            local.depth = 0
            self._reset(local)
        return local

    @staticmethod
    def _reset(local: threading.local) -> None:
        local.silent = 0.0
        local.began = None  # when the attempt in flight was sent
        local.silent_since = None  # when the last silent attempt ended (None: the last one was answered)
        local.counted = None  # the last timeout counted (an exception is seen by more than one layer)

    @contextmanager
    def operation(self) -> Iterator[None]:
        """One whole operation (all its attempts); nested ones share the outermost's count."""
        local = self._state()
        if local.depth == 0:
            self._reset(local)
            if self._known_silent:
                local.silent = self.bound
        local.depth += 1
        try:
            yield
        finally:
            local.depth -= 1

    def attempt(self) -> None:
        """A request is being sent: the wait since a silent attempt ended counts as silence."""
        local = self._state()
        now = time.monotonic()
        if local.silent_since is not None:
            local.silent += max(0.0, now - local.silent_since)
            local.silent_since = None
        local.began = now

    def answered(self) -> None:
        """The store answered: it is not silent."""
        local = self._state()
        local.silent = 0.0
        local.silent_since = None
        self._known_silent = False

    def timed_out(self, error: BaseException, timeout: float) -> None:
        """An attempt got no answer within its socket `timeout` (`error`, counted once)."""
        local = self._state()
        if local.counted is error:
            return
        local.counted = error
        now = time.monotonic()
        waited = timeout if local.began is None else min(timeout, max(0.0, now - local.began))
        local.silent += waited
        local.silent_since = now
        local.began = None

    def silent(self) -> float:
        """Seconds the operation in this thread has waited unanswered."""
        return self._state().silent

    def exhausted(self, ahead: float = 0.0) -> bool:
        """Whether the silence, with `ahead` seconds more, reaches the bound."""
        if self._state().silent + ahead < self.bound:
            return False
        self._known_silent = True
        return True
