"""The real cairnd on a host whose wall clock is off (tests only).

Run as `python skewed_cairnd.py ARGS...`. `$CAIRN_TEST_CLOCK_OFFSET` (seconds, may be negative) is
added to `time.time()` as Cairn's own modules see it (every `cairn.*` module's `time` is replaced
by a shim; the daemon's rooms are loaded first, which the entry point does only later): what the
daemon writes into lock objects, sets and markers, and what it compares with them, carries that
clock, as on a machine whose clock is hours off. Libraries keep the real clock (gRPC's server
waits on it; S3 signatures would be refused by the store anyway past a quarter of an hour, while
the lock times here are judged against half an hour). The monotonic clock is untouched.
"""

from __future__ import annotations

import os
import sys
import time
import types

from cairn.daemon.runtime import main as cairnd
from cairn.daemon.runtime import process  # noqa: F401  (loads every room now, so that all of them are skewed)

OFFSET = float(os.environ.get("CAIRN_TEST_CLOCK_OFFSET", "0"))


class _Skewed(types.ModuleType):
    def __getattr__(self, name: str):  # everything but time() is the real module's
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.time() + OFFSET


SKEWED = _Skewed("time")
for module in list(sys.modules.values()):
    if (getattr(module, "__name__", "") or "").startswith("cairn.") and getattr(module, "time", None) is time:
        module.time = SKEWED  # type: ignore[attr-defined]

if __name__ == "__main__":
    sys.argv = ["cairnd", *sys.argv[1:]]
    sys.exit(cairnd.main(sys.argv[1:]))
