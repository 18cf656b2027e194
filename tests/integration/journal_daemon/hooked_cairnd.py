"""The real cairnd, plus test hooks reached by SIGUSR1 (tests only; nothing here ships).

The test writes one command into `$CAIRN_TEST_HOOKS/cmd` and sends SIGUSR1; the hook runs in
its own thread and writes `$CAIRN_TEST_HOOKS/done` (JSON) when finished. Commands:
  overflow     the watcher sees an inotify queue overflow at this point of its event stream
  deaf         the change tracker drops every event from now on (a change the journal misses)
  hear         wait until every event so far was handled (dropped), then record events again
  backstop     run the backstop scan now; the result is {source: [[path, what], ...]}
  pause        hold the watcher's inotify reader (events queue up in the kernel)
  resume       let it read again
  links        how many files with several hard links the journal re-checks for source 'app'
The watcher reads inotify through tests/watcher_hooks.py (installed here) for `overflow`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from cairn.daemon.runtime import main as cairnd
from cairn.daemon.runtime.process import Daemon

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import watcher_hooks  # noqa: E402  (tests/watcher_hooks.py)

HOOKS = os.environ["CAIRN_TEST_HOOKS"]
SINK_METHODS = ("changed", "new_directory", "unwatched", "rescan")


def _drop(*args: object, **kwargs: object) -> None:
    return None


def _run(daemon: Daemon, cmd: str) -> object:
    tracker = daemon.tracker
    if cmd == "overflow":
        watcher_hooks.simulate_overflow(tracker.watcher)
        return "ok"
    if cmd == "deaf":
        for name in SINK_METHODS:
            setattr(tracker, name, _drop)
        return "ok"
    if cmd == "hear":
        ok = tracker.watcher.barrier(5.0)
        for name in SINK_METHODS:
            tracker.__dict__.pop(name, None)
        return "ok" if ok else "barrier timed out"
    if cmd == "pause":
        return "ok" if watcher_hooks.pause(tracker.watcher) else "reader not held"
    if cmd == "resume":
        watcher_hooks.resume(tracker.watcher)
        return "ok"
    if cmd == "links":
        return tracker.status("app").linked_files
    if cmd == "backstop":
        found = daemon.backstop.run_now() if daemon.backstop is not None else {}
        return {src: [[d.path, d.what] for d in diffs] for src, diffs in found.items()}
    return f"unknown command {cmd!r}"


def _install(daemon: Daemon) -> None:
    def work() -> None:
        with open(os.path.join(HOOKS, "cmd"), encoding="utf-8") as f:
            cmd = f.read().strip()
        try:
            result = {"ok": True, "result": _run(daemon, cmd)}
        except Exception as exc:  # the test wants to see it
            result = {"ok": False, "result": repr(exc)}
        tmp = os.path.join(HOOKS, "done.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f)
        os.rename(tmp, os.path.join(HOOKS, "done"))

    signal.signal(signal.SIGUSR1, lambda signum, frame: threading.Thread(target=work, daemon=True).start())


_start = Daemon.start


def _hooked_start(self: Daemon) -> None:
    _install(self)  # before READY=1: a test may signal as soon as it sees it
    _start(self)


Daemon.start = _hooked_start
watcher_hooks.install()  # before the daemon starts its watcher

if __name__ == "__main__":
    sys.argv[0] = "cairnd"
    sys.exit(cairnd.main())
