"""The real cairnd whose retention thread, scheduler and RPO keeper read a clock the test can move
(tests only).

Run as `python clocked_cairnd.py [CAIRND] ARGS...`. `$CAIRN_TEST_CLOCK` names a file holding
an offset in seconds added to the real time; the test writes a new offset and sends SIGHUP,
and the retention thread and the scheduler recompute their next runs from the moved clock
(the reload path any changed configuration takes); the RPO keeper compares the moved clock
with the times of changes in the journal. Everything else keeps the real time, the change
journal's stamps too.
`$CAIRN_TEST_MAX_SLEEP`, when set, is the longest the scheduler and the retention thread sleep
before they look at the clock again (60 s in the daemon), for tests that move the clock without
a reload, as a clock set back by hand or by NTP does.
"""

from __future__ import annotations

import os
import sys
import time

from cairn.daemon.changes.rpo import RpoKeeper
from cairn.daemon.runtime import main as cairnd
from cairn.daemon.runtime import process
from cairn.daemon.scheduling import retention, scheduler
from cairn.daemon.scheduling.retention import RetentionRunner
from cairn.daemon.scheduling.scheduler import Scheduler

OFFSET_FILE = os.environ["CAIRN_TEST_CLOCK"]


def clock() -> float:
    try:
        with open(OFFSET_FILE, encoding="ascii") as f:
            return time.time() + float(f.read().strip() or 0)
    except (OSError, ValueError):
        return time.time()


class ClockedRunner(RetentionRunner):
    def __init__(self, cron, run, clock_fn=clock, tz=None, **wiring) -> None:
        super().__init__(cron, run, clock=clock_fn, tz=tz, **wiring)  # health, as the daemon wires


class ClockedScheduler(Scheduler):
    def __init__(self, sources, submit, clock_fn=clock, tz=None, **wiring) -> None:
        super().__init__(sources, submit, clock=clock_fn, tz=tz, **wiring)  # running, state_dir as the daemon wires


if os.environ.get("CAIRN_TEST_MAX_SLEEP"):
    scheduler.MAX_SLEEP = retention.MAX_SLEEP = float(os.environ["CAIRN_TEST_MAX_SLEEP"])

class ClockedRpo(RpoKeeper):
    def __init__(self, rpos, oldest, running, submit, clock_fn=clock) -> None:
        super().__init__(rpos, oldest, running, submit, clock=clock_fn)


process.RetentionRunner = ClockedRunner  # the names the running daemon wires
process.Scheduler = ClockedScheduler
process.RpoKeeper = ClockedRpo

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and os.path.basename(args[0]) == "cairnd":  # started as `python clocked_cairnd.py CAIRND ARGS...`
        args = args[1:]
    sys.argv = ["cairnd", *args]
    sys.exit(cairnd.main(args))
