"""The real cairnd with a shorter bound on a set's archiver check before its window (tests only).

Run as `python bounded_cairnd.py ARGS...`. `$CAIRN_TEST_PRE_WINDOW_TIMEOUT` (seconds) replaces
checkdb.PRE_WINDOW_TIMEOUT (30 s), so a test can outlast the bound with a WAL backlog of a few
segments instead of a minute of them. Everything else is the daemon as installed.
"""

from __future__ import annotations

import os
import sys

from cairn.daemon.databases.postgres import checkdb
from cairn.daemon.runtime import main as cairnd

checkdb.PRE_WINDOW_TIMEOUT = float(os.environ.get("CAIRN_TEST_PRE_WINDOW_TIMEOUT", checkdb.PRE_WINDOW_TIMEOUT))

if __name__ == "__main__":
    sys.argv = ["cairnd", *sys.argv[1:]]
    sys.exit(cairnd.main(sys.argv[1:]))
