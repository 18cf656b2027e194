"""The clocked cairnd (clocked_cairnd.py) whose garbage collection holds at its marking phase
until the daemon begins to stop (tests only): a scheduled run is in progress when SIGTERM
arrives, as one reading a large repository's trees is, and the step it is in ends right after.

`$CAIRN_TEST_GC_GATE` names a directory: the run writes `reached` there when it gets to the
marking phase (after it forgot the sets its policy drops), then waits, at most 60 s, until
the daemon's stop tells the repository's locks, and goes on. Run as
`python gc_gate_cairnd.py [CAIRND] ARGS...`, with `$CAIRN_TEST_CLOCK` as clocked_cairnd.py wants.
"""

from __future__ import annotations

import os
import sys

import clocked_cairnd  # noqa: F401 - moves the retention thread's clock (tests/integration/daemon)
from cairn.daemon.runtime import main as cairnd
from cairn.store.maintenance import prune

GATE = os.environ["CAIRN_TEST_GC_GATE"]
_mark = prune.Pruner.mark


def _held_mark(self: prune.Pruner) -> int:
    open(os.path.join(GATE, "reached"), "wb").close()
    self.repo.locks.stopping.wait(60)
    return _mark(self)


prune.Pruner.mark = _held_mark  # type: ignore[method-assign]

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and os.path.basename(args[0]) == "cairnd":
        args = args[1:]
    sys.argv = ["cairnd", *args]
    sys.exit(cairnd.main(args))
