"""The real cairnd whose connections give up on a silent peer after `$CAIRN_TEST_PEER_TIMEOUT`
seconds instead of PEER_TIMEOUT (tests only).

Run as `python peer_timeout_cairnd.py [CAIRND] ARGS...`. Only the value changes: the daemon's
own `transport_options` still decides which of gRPC's and the kernel's timeouts it sets, so a
test can watch them act within seconds where the daemon's default (a minute past the RPC stall
timeout) would take eleven minutes. tests/unit/rpc/test_transport_options.py holds the default.
"""

from __future__ import annotations

import os
import sys

from cairn.daemon.rpc import server
from cairn.daemon.runtime import main as cairnd

server.PEER_TIMEOUT = float(os.environ["CAIRN_TEST_PEER_TIMEOUT"])

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and os.path.basename(args[0]) == "cairnd":  # started as `python peer_timeout_cairnd.py CAIRND ARGS...`
        args = args[1:]
    sys.argv = ["cairnd", *args]
    sys.exit(cairnd.main(args))
