"""Remote clients that are suspended keep their streams until the daemon's peer timeout; one that
is killed frees its stream.

The real daemon with its TCP listener (TLS and a token) and client processes on it. A client
streaming a restore is stopped with SIGSTOP and held while its connection's receive window is
shut (the daemon's socket holds bytes the client's kernel will not take: read from
/proc/net/tcp*), which is where gRPC's default server settings had the kernel drop the
connection 20 s later (TCP_USER_TIMEOUT); a client streaming a WAL push is stopped mid-push,
where gRPC's default ping timeout (1 minute, for the daemon's flow-control pings) closed the
connection. The daemon sets both to its peer timeout (eleven minutes by default:
tests/unit/rpc/test_transport_options.py); here it runs with 8 s (peer_timeout_cairnd.py), so
that the test sees those very timeouts act within seconds: clients suspended for half of it are
continued and receive every byte of the set / have their segment archived whole, and clients
left suspended are dropped after the peer timeout, not sooner and not at gRPC's defaults. The
restore client announces a stream window far larger than a socket's buffers (and no window
probing), so that the window shuts every time: with gRPC's own growing window whether it shut
depended on the run. A client killed with SIGKILL while it holds a stream frees the stream's
slot at once, long before the stall watch would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cairn.daemon.rpc.streams import DATA_STREAMS
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc
from cairnd_harness import CAIRN, env_for, random_tree, tcp_config, wait_for_restore_slot

OLD_PEER_TIMEOUT = 20.0  # gRPC's default TCP_USER_TIMEOUT of the daemon's connections (seconds)
OLD_PING_TIMEOUT = 60.0  # gRPC's default wait of the daemon for the answer to a ping it sent (seconds)
# The daemon's peer timeout in these tests (its default is 660 s). Short, so that the test waits
# seconds, and well under OLD_PEER_TIMEOUT, so that a connection dropped by gRPC's defaults
# instead of the daemon's is told apart.
PEER_TIMEOUT = 8.0
SUSPENDED = PEER_TIMEOUT / 2  # clients stopped for this long must complete
LAUNCHER = (sys.executable, str(Path(__file__).with_name("peer_timeout_cairnd.py")))
TREE_BYTES = 192 << 20  # enough that the restore is still mid-flight when its window has shut
SEGMENTS = ("000000010000000000000001", "000000010000000000000002")

# A restore streamed to another host, reading as fast as it can: "reading" after the first file
# data, then "received N of M" (bytes of file data, and what the set said it would send).
RESTORER = """
import sys, grpc
from cairn.proto.cairn.v1 import cairn_pb2 as pb, cairn_pb2_grpc as pbg
address, ca, token = sys.argv[1:4]
creds = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(open(ca, "rb").read()),
                                           grpc.access_token_call_credentials(token))
options = [("grpc.http2.lookahead_bytes", 256 << 20), ("grpc.http2.bdp_probe", 0)]
received, total = 0, None
with grpc.secure_channel(address, creds, options=options) as channel:
    try:
        for batch in pbg.CairnStub(channel).Restore(pb.RestoreRequest(set="latest"), timeout=600):
            if batch.HasField("bytes_total"):
                total = batch.bytes_total
            for record in batch.records:
                if record.WhichOneof("record") == "data":
                    if not received:
                        print("reading", flush=True)
                    received += len(record.data)
    except grpc.RpcError as exc:
        sys.exit(f"Restore failed: {exc.code().name}: {exc.details()}")
print(f"received {received} of {total}", flush=True)
"""

# A WAL push from another host: the segment (random bytes, also written to argv[4]) in pieces of
# 64 KiB a few milliseconds apart; "ready" once it can start, which it does at a line on stdin,
# "pushing" once the daemon has some, the reply at the end.
PUSHER = """
import os, sys, time, grpc
from cairn.proto.cairn.v1 import cairn_pb2 as pb, cairn_pb2_grpc as pbg
address, ca, token, copy = sys.argv[1:5]
creds = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(open(ca, "rb").read()),
                                           grpc.access_token_call_credentials(token))
pieces = [os.urandom(64 << 10) for _ in range(160)]
open(copy, "wb").write(b"".join(pieces))
print("ready", flush=True)
sys.stdin.readline()
def requests():
    yield pb.WalPushRequest(name=sys.argv[5])
    for i, piece in enumerate(pieces):
        yield pb.WalPushRequest(data=piece)
        if i == 40:
            print("pushing", flush=True)
        time.sleep(0.005)
with grpc.secure_channel(address, creds) as channel:
    try:
        reply = pbg.CairnStub(channel).WalPush(requests(), timeout=600)
    except grpc.RpcError as exc:
        sys.exit(f"WalPush failed: {exc.code().name}: {exc.details()}")
print("stored" if reply.stored else "already stored", flush=True)
"""


def _daemon_connections(port: int) -> dict[int, int]:
    """The daemon's established connections on `port`: the peer's port -> bytes the daemon's
    socket holds unsent or unacknowledged."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            rows = f.read().splitlines()[1:]
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                out[int(fields[2].rsplit(":", 1)[1], 16)] = int(fields[4].split(":")[0], 16)
    return out


def _new_connection(port: int, known: set[int]) -> int:
    """The peer port of the one connection to the daemon on `port` not in `known`."""
    deadline = time.monotonic() + 30
    while True:
        new = set(_daemon_connections(port)) - known
        if len(new) == 1:
            return new.pop()
        assert len(new) < 2, f"more than one new connection: {sorted(new)}"
        assert time.monotonic() < deadline, "no new connection to the daemon"
        time.sleep(0.05)


def _dropped_within(port: int, peers: dict[str, tuple[int, float]], seconds: float) -> dict[str, float]:
    """Watch the daemon's connections from `peers` (a name -> the peer's port and the monotonic
    time its client was suspended) until `seconds` after the last was suspended, or until it has
    dropped them all: for each it dropped, how long after its suspension (empty: it kept them all)."""
    end, dropped = max(since for _, since in peers.values()) + seconds, {}
    while time.monotonic() < end and len(dropped) < len(peers):
        alive = _daemon_connections(port)
        for name, (peer, since) in peers.items():
            if peer not in alive and name not in dropped:
                dropped[name] = time.monotonic() - since
        time.sleep(0.1)
    return dropped


def _written(target: Path) -> int:
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.exists() else 0


def _remote_restore(address: str, tls_files: dict[str, str], target: Path, log: Path) -> subprocess.Popen:
    """A real `cairn restore` of the latest set from another host (over TCP, TLS and the token)."""
    with open(log, "wb") as out:
        return subprocess.Popen([CAIRN, "--address", address, "--tls-ca", tls_files["ca"], "--token-file",
                                 tls_files["token"], "restore", "latest", "--target", str(target)],
                                stdout=out, stderr=subprocess.STDOUT, env=env_for())


def _wait_written(client: subprocess.Popen, target: Path) -> None:
    """Wait until the running restore has written its first MiB."""
    deadline = time.monotonic() + 60
    while _written(target) < 1 << 20:
        assert client.poll() is None, f"the restore ended early: exit {client.returncode}"
        assert time.monotonic() < deadline, "the restore wrote nothing"
        time.sleep(0.02)


@pytest.fixture
def remote(start_daemon, rundir, tmp_path, tls_files, monkeypatch):
    """remote(total_bytes, peer_timeout=None) -> (daemon, source, address): a daemon with a TCP
    listener and a full set of `total_bytes` of incompressible files; with `peer_timeout`, the
    daemon gives up on a silent peer after that many seconds (peer_timeout_cairnd.py)."""

    def start(total_bytes: int, peer_timeout: float | None = None):
        src = str(tmp_path / "src")
        random_tree(src, total_bytes, 4 << 20)
        config, sock, address = tcp_config(rundir, tmp_path, tls_files, src)
        prefix: tuple[str, ...] = ()
        if peer_timeout is not None:
            monkeypatch.setenv("CAIRN_TEST_PEER_TIMEOUT", str(peer_timeout))
            prefix = LAUNCHER
        daemon = start_daemon("--config", config, socket_path=sock, prefix=prefix)
        daemon.ok("backup", "--level", "full", timeout=240)
        return daemon, src, address

    return start


def _suspend_a_restore_and_a_push(port: int, address: str, ca: str, token: str, copy: Path, segment: str,
                                  clients: list[subprocess.Popen]) -> dict[str, tuple[int, float]]:
    """Start a restore and a WAL push of `segment` (its bytes also written to `copy`) from other
    hosts and stop both mid-stream: the restore once the daemon's socket holds bytes its kernel
    will not take, the push once the daemon has some of the segment. Both are added to
    `clients`; returns each one's connection and when it was stopped, for _dropped_within. The
    push's client is started first and waits, so that the two stops are close together (its
    start under load took seconds, which the stopped restore had to wait as well)."""
    before = set(_daemon_connections(port))
    pusher = subprocess.Popen([sys.executable, "-c", PUSHER, address, ca, token, str(copy), segment],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env_for())
    clients.append(pusher)
    assert pusher.stdin is not None and pusher.stdout is not None and pusher.stderr is not None
    assert pusher.stdout.readline().strip() == "ready", pusher.stderr.read()
    restorer = subprocess.Popen([sys.executable, "-c", RESTORER, address, ca, token],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for())
    clients.append(restorer)
    assert restorer.stdout is not None
    assert restorer.stdout.readline().strip() == "reading", restorer.stdout.read()
    restoring = _new_connection(port, before)
    restorer.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while not _daemon_connections(port).get(restoring):  # its kernel's buffer fills, then the daemon's holds bytes
        assert time.monotonic() < deadline, "the stopped client's receive window never shut"
        time.sleep(0.05)
    restore_stopped = time.monotonic()
    pusher.stdin.write("go\n")
    pusher.stdin.flush()
    assert pusher.stdout.readline().strip() == "pushing", pusher.stderr.read()
    pushing = _new_connection(port, before | {restoring})
    pusher.send_signal(signal.SIGSTOP)  # mid-push: the daemon waits for the rest
    return {"restore": (restoring, restore_stopped), "WAL push": (pushing, time.monotonic())}


@pytest.mark.slow
def test_remote_clients_suspended_keep_their_streams_until_the_peer_timeout(remote, tmp_path, tls_files):
    """A restore with its window shut and a WAL push, both suspended at once on one daemon (each
    connection watched apart): suspended for half the peer timeout they complete; left
    suspended, the daemon drops them after the peer timeout, not before, and not at gRPC's
    defaults (20 s for the restore's TCP_USER_TIMEOUT, a minute for the push's ping timeout).
    Its default of 660 s is tests/unit/rpc/test_transport_options.py's."""
    daemon, _src, address = remote(TREE_BYTES, peer_timeout=PEER_TIMEOUT)
    port = int(address.rsplit(":", 1)[1])
    token = Path(tls_files["token"]).read_text().strip()
    copies = [tmp_path / "pushed-1", tmp_path / "pushed-2"]
    clients: list[subprocess.Popen] = []
    try:
        peers = _suspend_a_restore_and_a_push(port, address, tls_files["ca"], token, copies[0], SEGMENTS[0], clients)
        pusher, restorer = clients
        held = _dropped_within(port, peers, SUSPENDED)
        for client in clients:
            client.send_signal(signal.SIGCONT)
        out, _ = restorer.communicate(timeout=120)
        pushed, push_err = pusher.communicate(timeout=120)
        assert not held, f"the daemon dropped stopped clients before the peer timeout (seconds after): {held}"
        assert restorer.returncode == 0, f"the restore client said: {out}"
        received = out.strip().splitlines()[-1].split()
        assert received[0] == "received" and received[1] == received[3] and int(received[1]) >= TREE_BYTES, out
        assert pusher.returncode == 0 and pushed.strip() == "stored", f"the WAL push client said:\n{pushed}{push_err}"

        # again, left suspended: the daemon's peer timeout, not gRPC's defaults, decides when
        peers = _suspend_a_restore_and_a_push(port, address, tls_files["ca"], token, copies[1], SEGMENTS[1], clients)
        dropped = _dropped_within(port, peers, OLD_PEER_TIMEOUT)
    finally:
        for client in clients:
            if client.poll() is None:
                client.send_signal(signal.SIGCONT)
                client.kill()
                client.wait(10)
    assert set(dropped) == set(peers), f"the daemon kept stopped clients for {OLD_PEER_TIMEOUT:.0f}s, past its peer " \
                                       f"timeout of {PEER_TIMEOUT:.0f}s (dropped, seconds after: {dropped})"
    for name, took in dropped.items():
        assert took >= PEER_TIMEOUT - 1, f"the daemon dropped the stopped {name} client {took:.1f}s after it stopped"
    daemon.ok("wal-fetch", SEGMENTS[0], str(tmp_path / "fetched"))
    assert (tmp_path / "fetched").read_bytes() == copies[0].read_bytes()
    daemon.ok("status", timeout=10)


def test_a_killed_remote_client_frees_its_stream_at_once(remote, tmp_path, tls_files):
    daemon, _src, address = remote(64 << 20)
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(Path(tls_files["ca"]).read_bytes()),
        grpc.access_token_call_credentials(Path(tls_files["token"]).read_text().strip()))
    # every data slot of the TCP listener but one is held by a stream that reads no more
    channels = [grpc.secure_channel(address, creds, options=[("grpc.http2.bdp_probe", 0)])
                for _ in range(DATA_STREAMS)]
    try:
        held = []
        for ch in channels[:-1]:
            call = pb_grpc.CairnStub(ch).Restore(pb.RestoreRequest(set="latest"), timeout=120)
            next(call)
            held.append(call)
        target = tmp_path / "killed"
        client = _remote_restore(address, tls_files, target, tmp_path / "killed.log")
        try:
            _wait_written(client, target)
            client.send_signal(signal.SIGSTOP)  # mid-flight: far more is left than any buffer holds
            probe = pb_grpc.CairnStub(channels[-1]).Restore(pb.RestoreRequest(set="latest"), timeout=30)
            with pytest.raises(grpc.RpcError) as refused:  # the stopped client holds the last slot
                next(probe)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        finally:
            client.kill()
            client.wait(10)
        # its kernel closed the connection: the slot comes free at once, not after the stall timeout
        wait_for_restore_slot(channels[-1], 10, "the killed client's stream still holds its slot")
        daemon.ok("status", timeout=10)
    finally:
        for ch in channels:
            ch.close()
