"""cairnd whose verify, once begun, reports progress until its call ends (tests only): a long
`cairn verify --read-data` is running when SIGTERM arrives, and outlives the stop's grace for
calls, as one reading a large repository does.

`$CAIRN_TEST_VERIFY_GATE` names a directory: the check writes `reached` there when it begins,
then reports progress every 50 ms (at most 60 s) until a report is refused (its call ended),
and goes on (the refusal stops it). Run as `python verify_gate_cairnd.py [CAIRND] ARGS...`.
"""

from __future__ import annotations

import os
import sys
import time

from cairn.daemon.runtime import main as cairnd
from cairn.store.maintenance import check
from cairn.store.model import Progress

GATE = os.environ["CAIRN_TEST_VERIFY_GATE"]
_run = check.Checker.run


def _long_run(self: check.Checker, **options: object):  # type: ignore[no-untyped-def]
    open(os.path.join(GATE, "reached"), "wb").close()
    deadline = time.monotonic() + 60
    while self.progress is not None and time.monotonic() < deadline:
        self.progress(Progress("check"))  # raises once the call is gone
        time.sleep(0.05)
    return _run(self, **options)


check.Checker.run = _long_run  # type: ignore[method-assign]

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and os.path.basename(args[0]) == "cairnd":
        args = args[1:]
    sys.argv = ["cairnd", *args]
    sys.exit(cairnd.main(args))
