"""The real cairnd on a clone of another machine (tests only).

Run as `python cloned_cairnd.py ARGS...`. `$CAIRN_TEST_MACHINE_ID` replaces the machine id the
daemon reads (/etc/machine-id), which it records in every set: two daemons on one test machine,
configured with the same `[daemon] host`, are then two machines under one host name, as a VM
cloned with a fresh machine id and its configuration copied unchanged.
"""

from __future__ import annotations

import os
import sys

from cairn.daemon.operations import hostname
from cairn.daemon.runtime import main as cairnd

MACHINE = os.environ.get("CAIRN_TEST_MACHINE_ID", "")
if MACHINE:
    hostname.machine_id = lambda: MACHINE  # type: ignore[assignment]

if __name__ == "__main__":
    sys.argv = ["cairnd", *sys.argv[1:]]
    sys.exit(cairnd.main(sys.argv[1:]))
