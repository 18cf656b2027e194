"""Test hooks for the change watcher, installed by the tests (tests only; nothing here ships).

`install()` makes every Watcher started afterwards read inotify through `HookedFD`, which can
hold its reader before the next read (`pause` / `resume`: events queue up in the kernel),
make it see a queue overflow at this point of the stream (`simulate_overflow`), and run a
function on the inotify thread right after a watch is added, before the watcher looks at the
directory again (`after_add`: a writer's rename landing in that instant). The journal
tests install it in their conftest, and the daemon the journal-daemon tests run
(hooked_cairnd.py) installs it before it starts; a shipped daemon reads inotify through the
plain descriptor of cairn.daemon.changes.watcher.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from cairn.daemon.changes import watcher as watcher_mod

# struct inotify_event of a queue overflow (wd -1, the mask, no cookie, no name): the record the
# watcher itself puts in the stream when its backlog overflows
OVERFLOW = watcher_mod._OVERFLOW_RECORD


class HookedFD(watcher_mod._FD):
    """The watcher's inotify descriptor with a gate before each blocking read and an overflow to
    inject. Both act on the raw read (`_read_event_buffer`), which every watchdog 7 reading path
    goes through: the gate holds only a blocking read (not the short polls that coalesce a burst),
    and an injected overflow is a raw IN_Q_OVERFLOW record ahead of what the kernel gave."""

    def __init__(self, owner: watcher_mod.Watcher) -> None:
        super().__init__(owner)
        self.inject_overflow = False
        self.gate = threading.Event()
        self.gate.set()
        self.at_gate = threading.Event()
        self.after_add: Callable[[bytes], None] | None = None

    def _add_callback(self, path: bytes, mask, callback, id_):  # type: ignore[no-untyped-def]
        wd = super()._add_callback(path, mask, callback, id_)
        if self.after_add is not None:
            self.after_add(path)
        return wd

    def _read_event_buffer(self, event_buffer_size: int, timeout_ms: int | None = None) -> bytes:
        if timeout_ms is None and not self.gate.is_set():
            self.at_gate.set()
            self.gate.wait()
            self.at_gate.clear()
        buffer = super()._read_event_buffer(event_buffer_size, timeout_ms)
        if buffer and self.inject_overflow:
            self.inject_overflow = False
            buffer = OVERFLOW + buffer
        return buffer


def install() -> None:
    """Watchers started from now on read through HookedFD."""
    watcher_mod._FD = HookedFD


def _fd(w: watcher_mod.Watcher) -> HookedFD:
    fd = w._fd
    assert isinstance(fd, HookedFD), "the watcher started before watcher_hooks.install()"
    return fd


def simulate_overflow(w: watcher_mod.Watcher) -> None:
    """Make the inotify thread see a queue overflow at this point of the stream."""
    _fd(w).inject_overflow = True
    _poke(w)


def after_add(w: watcher_mod.Watcher, fn: Callable[[bytes], None] | None) -> None:
    """Call `fn(path)` on the inotify thread right after each watch is added (None: no more)."""
    _fd(w).after_add = fn


def pause(w: watcher_mod.Watcher, timeout: float = 5.0) -> bool:
    """Hold the inotify thread before its next read (events queue up in the kernel)."""
    fd = _fd(w)
    fd.gate.clear()
    _poke(w)
    return fd.at_gate.wait(timeout)


def resume(w: watcher_mod.Watcher) -> None:
    _fd(w).gate.set()


def _poke(w: watcher_mod.Watcher) -> None:
    """An event in the watcher's own barrier directory, so a blocked read returns."""
    path = os.path.join(w._barrier_dir, "poke")
    with open(path, "wb"):
        pass
    os.unlink(path)
