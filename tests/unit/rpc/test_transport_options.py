"""The daemon's default connection timeouts: every one gRPC and the kernel use to give up on a
silent peer is PEER_TIMEOUT, a minute past the RPC stall timeout (10 minutes by default).

tests/integration/daemon/test_remote_client_suspended.py watches those timeouts act on real
connections with a shorter value (peer_timeout_cairnd.py); this holds the value the daemon
ships with, in a fresh interpreter so that no test's environment changes the stall timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cairn.daemon.rpc.server import transport_options

PROBE = """
import json
from cairn.daemon.rpc import server, streams
print(json.dumps([streams.STALL_TIMEOUT, server.PEER_TIMEOUT, server.transport_options()]))
"""


def test_the_default_peer_timeout_is_a_minute_past_the_ten_minute_stall_timeout() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CAIRN_RPC_STALL_TIMEOUT"}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    stall, peer, options = json.loads(r.stdout)
    assert stall == 600.0 and peer == 660.0
    assert dict(options) == {"grpc.keepalive_timeout_ms": 660_000,  # also each TCP connection's TCP_USER_TIMEOUT
                             "grpc.http2.ping_timeout_ms": 660_000,
                             "grpc.http2.settings_timeout": 660_000}


def test_a_peer_timeout_beyond_a_c_int_of_milliseconds_is_capped() -> None:
    assert dict(transport_options(10**9)) == dict.fromkeys(
        ("grpc.keepalive_timeout_ms", "grpc.http2.ping_timeout_ms", "grpc.http2.settings_timeout"), 2**31 - 1)
