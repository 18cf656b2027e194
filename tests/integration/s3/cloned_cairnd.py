"""The real cairnd on a clone of another machine (tests only).

Run as `python cloned_cairnd.py ARGS...`. `$CAIRN_TEST_MACHINE_ID` replaces the machine id the
daemon reads (/etc/machine-id), and `$CAIRN_TEST_BOOT_ID` the kernel's boot id; it records both
in every set. Two daemons on one test machine, configured with the same `[daemon] host`, are
then two machines under one host name: with two machine ids, as a VM cloned with a fresh machine
id and its configuration copied unchanged; with one machine id and two boot ids, as a clone
that kept /etc/machine-id too.
"""

from __future__ import annotations

import os
import sys

from cairn.daemon.operations import hostname
from cairn.daemon.runtime import main as cairnd

MACHINE = os.environ.get("CAIRN_TEST_MACHINE_ID", "")
BOOT = os.environ.get("CAIRN_TEST_BOOT_ID", "")
if MACHINE:
    hostname.machine_id = lambda: MACHINE  # type: ignore[assignment]
if BOOT:
    hostname.boot_id = lambda: BOOT  # type: ignore[assignment]

if __name__ == "__main__":
    sys.argv = ["cairnd", *sys.argv[1:]]
    sys.exit(cairnd.main(sys.argv[1:]))
