"""RPO-driven protection: an incremental set as soon as a source's oldest unprotected change
has waited `rpo` seconds.

`RpoKeeper` is a small thread. It sleeps until the earliest moment a source with `rpo` falls
due (at most MAX_SLEEP), or until `poke()` (the change tracker calls it whenever a source's
changes were journaled), then submits `incremental` for every due source that has no backup
running. The decision is the pure function `rpo_decisions`, tested on its own.

What always holds: a source is submitted only when it has an unprotected change at least `rpo`
old and no backup of it runs; a source whose set did not protect that change (the set failed
or was refused) is tried again after RETRY_AFTER, never in a burst; a busy source is looked at
again after BUSY_RECHECK. A change stamped later than the clock now (the wall clock was set
back since it was journaled) is due at once, so a jump back never holds its protection back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cairn.daemon.runtime.threads import ServiceThread

log = logging.getLogger(__name__)

MAX_SLEEP = 60.0
BUSY_RECHECK = 1.0
REASON = "rpo"


def retry_after(rpo: float) -> float:
    """How long to wait before asking again for a source whose RPO set did not protect its change."""
    return min(max(rpo, 5.0), 300.0)


@dataclass(frozen=True)
class Attempt:
    """An RPO set submitted at `at` for the change first seen at `oldest`."""

    at: float
    oldest: float


def rpo_decisions(
    rpos: Mapping[str, float],
    oldest: Mapping[str, float | None],
    running: set[str],
    attempts: Mapping[str, Attempt],
    now: float,
) -> tuple[list[str], float | None]:
    """(sources to submit now, epoch of the next moment to look again or None).

    `rpos`: source -> rpo seconds; `oldest`: source -> epoch of its oldest unprotected change;
    `running`: sources with a backup running; `attempts`: the last RPO submit per source.
    """
    submit: list[str] = []
    wake: list[float] = []
    for name, rpo in sorted(rpos.items()):
        first = oldest.get(name)
        if first is None:
            continue
        # A change stamped after `now` was seen before the wall clock was set back: how long it
        # waited is unknown, and first + rpo would leave it unprotected for as long as the jump.
        due = first + rpo if first <= now else now
        last = attempts.get(name)
        if last is not None and last.oldest == first:
            due = max(due, min(last.at, now) + retry_after(rpo))  # that set did not protect it: back off
        if due > now:
            wake.append(due)
        elif name in running:
            wake.append(now + BUSY_RECHECK)
        else:
            submit.append(name)
            wake.append(now + BUSY_RECHECK)
    return submit, (min(wake) if wake else None)


class RpoKeeper(ServiceThread):
    """Thread that submits incremental sets of sources whose oldest unprotected change is `rpo` old."""

    def __init__(
        self,
        rpos: Callable[[], Mapping[str, float]],
        oldest: Callable[[str], float | None],
        running: Callable[[], set[str]],
        submit: Callable[[str, str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("rpo")
        self._rpos = rpos
        self._oldest = oldest
        self._running = running
        self._submit = submit
        self._clock = clock
        self._wake = threading.Event()
        self._attempts: dict[str, Attempt] = {}

    def poke(self, source: str | None = None) -> None:
        """Look at the sources now (new changes were journaled, or the configuration changed)."""
        self._wake.set()

    def request_stop(self) -> None:
        super().request_stop()
        self._wake.set()

    def run_safe(self) -> None:
        while not self.stopping:
            wakeup = self.tick()
            delay = MAX_SLEEP if wakeup is None else min(MAX_SLEEP, max(0.0, wakeup - self._clock()))
            self._wake.wait(delay)
            self._wake.clear()

    def tick(self) -> float | None:
        """Submit every due source; return the epoch to look again (None: only when poked)."""
        rpos = dict(self._rpos())
        oldest: dict[str, float | None] = {}
        for name in rpos:
            try:
                oldest[name] = self._oldest(name)
            except Exception:
                log.exception("unable to read the change journal of source '%s'", name)
                oldest[name] = None
        now = self._clock()
        submit, wakeup = rpo_decisions(rpos, oldest, set(self._running()), self._attempts, now)
        for name in list(self._attempts):
            if name not in rpos:
                del self._attempts[name]
        for name in submit:
            if self.stopping:
                break
            first = oldest[name] or now
            log.info("oldest unprotected change of source '%s' waited %.1fs (rpo %.1fs): taking an "
                     "incremental set", name, now - first, rpos[name], extra={"source": name})
            self._attempts[name] = Attempt(now, first)
            try:
                self._submit(name, "incremental", REASON)
            except Exception as exc:  # a refused submit must not end the thread
                log.error("unable to submit the rpo set of source '%s': %s", name, exc)
        return wakeup
