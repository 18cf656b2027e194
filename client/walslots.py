"""wal-push and wal-fetch wait for one of the daemon's WAL slots instead of failing at once.

The daemon serves a bounded number of WAL calls at a time per listener (daemon/rpc/streams.py)
and refuses one more at once with RESOURCE_EXHAUSTED. A WAL call lasts one segment's transfer,
so a slot comes free within moments; but the servers archiving into one daemon, the restored
servers recovering from it and their prefetchers can take every slot for a while, and a
refusal handed on to PostgreSQL fails an archive attempt (after three the archiver pauses a
minute) or, from restore_command, stops the recovery of a restored server (its startup
process exits: `could not restore file ... from archive`). So `when_free(call)` makes `call`
again after a short, growing pause while the daemon refuses it for lack of a slot, and says
once on stderr that it waits.

What always holds: only that refusal (RESOURCE_EXHAUSTED whose details begin with
`protocol.BUSY_PREFIX`) is retried, every other answer is the call's own; `call` is made anew
each time (a refused call sent nothing and received nothing); the wait ends after BUSY_WAIT
seconds, and then the last refusal is raised as before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
from cairn import protocol

BUSY_WAIT = 60.0  # seconds a WAL command waits for a slot before it fails
FIRST_PAUSE = 0.05
MAX_PAUSE = 1.0

T = TypeVar("T")


def busy(exc: grpc.RpcError) -> bool:
    """True when `exc` is the daemon's refusal for lack of a free slot."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith(protocol.BUSY_PREFIX)


def when_free(call: Callable[[], T], what: str, wait: float = BUSY_WAIT,
              sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """The result of `call()`, made again while the daemon has no free WAL slot (at most `wait` s)."""
    end = clock() + wait
    pause = FIRST_PAUSE
    said = False
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if not busy(exc) or clock() + pause > end:
                raise
            if not said:
                print(f"cairn: note: every WAL slot of the daemon is taken: {what} waits for one "
                      f"(at most {wait:g}s)", file=sys.stderr, flush=True)
                said = True
        sleep(pause)
        pause = min(MAX_PAUSE, pause * 2)
