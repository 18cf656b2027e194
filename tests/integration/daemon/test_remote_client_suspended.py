"""Remote clients that are suspended keep their streams; one that is killed frees its stream.

The real daemon with its TCP listener (TLS and a token) and client processes on it. A client
streaming a restore is stopped with SIGSTOP and held while its connection's receive window is
shut (the daemon's socket holds bytes the client's kernel will not take: read from
/proc/net/tcp*), which is where gRPC's default server settings had the kernel drop the
connection 20 s later (TCP_USER_TIMEOUT); it is continued after more than that and must receive
every byte of the set. The client announces a stream window far larger than a socket's buffers
(and no window probing), so that the window shuts every time: with gRPC's own growing window
whether it shut depended on the run. A
client streaming a WAL push is stopped past gRPC's default ping timeout (1 minute, for the
daemon's flow-control pings) and its segment must be archived whole. Both are suspended at the
same time on one daemon (each connection watched apart): the wait past the longer timeout,
which no setting of the daemon can shorten, is paid once. A client killed with
SIGKILL while it holds a stream frees the stream's slot at once, long before the stall watch
would.
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
SUSPENDED = OLD_PEER_TIMEOUT + 12  # past it, with room for the kernel's probe timer
TREE_BYTES = 192 << 20  # enough that the restore is still mid-flight when its window has shut
OLD_PING_TIMEOUT = 60.0  # gRPC's default wait of the daemon for the answer to a ping it sent (seconds)
SEGMENT = "000000010000000000000001"

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
# 64 KiB a few milliseconds apart; "pushing" once the daemon has some, the reply at the end.
PUSHER = """
import os, sys, time, grpc
from cairn.proto.cairn.v1 import cairn_pb2 as pb, cairn_pb2_grpc as pbg
address, ca, token, copy = sys.argv[1:5]
creds = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(open(ca, "rb").read()),
                                           grpc.access_token_call_credentials(token))
pieces = [os.urandom(64 << 10) for _ in range(160)]
open(copy, "wb").write(b"".join(pieces))
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


def _dropped_within(port: int, peers: dict[str, int], seconds: float) -> dict[str, float]:
    """Watch the daemon's connections from `peers` (a name -> the peer's port) for `seconds`:
    for each it dropped meanwhile, how long it took (empty: it kept them all)."""
    began, dropped = time.monotonic(), {}
    while time.monotonic() - began < seconds:
        alive = _daemon_connections(port)
        for name, peer in peers.items():
            if peer not in alive and name not in dropped:
                dropped[name] = time.monotonic() - began
        time.sleep(0.5)
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
def remote(start_daemon, rundir, tmp_path, tls_files):
    """remote(total_bytes) -> (daemon, source, address): a daemon with a TCP listener and a full
    set of `total_bytes` of incompressible files."""

    def start(total_bytes: int):
        src = str(tmp_path / "src")
        random_tree(src, total_bytes, 4 << 20)
        config, sock, address = tcp_config(rundir, tmp_path, tls_files, src)
        daemon = start_daemon("--config", config, socket_path=sock)
        daemon.ok("backup", "--level", "full", timeout=240)
        return daemon, src, address

    return start


@pytest.mark.slow
def test_a_remote_restore_and_a_wal_push_suspended_past_the_old_timeouts_complete(remote, tmp_path, tls_files):
    """Both suspended at once on one daemon, so one wait (past the longer of gRPC's old
    timeouts) covers both: the restore past the old TCP_USER_TIMEOUT, the push past the old
    ping timeout."""
    daemon, _src, address = remote(TREE_BYTES)
    port = int(address.rsplit(":", 1)[1])
    token = Path(tls_files["token"]).read_text().strip()
    copy = tmp_path / "pushed"
    before = set(_daemon_connections(port))
    restorer = subprocess.Popen([sys.executable, "-c", RESTORER, address, tls_files["ca"], token],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for())
    clients = [restorer]
    dropped: dict[str, float] = {}
    try:
        assert restorer.stdout is not None
        assert restorer.stdout.readline().strip() == "reading", restorer.stdout.read()
        restoring = _new_connection(port, before)
        restorer.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while not _daemon_connections(port).get(restoring):  # its kernel's buffer fills, then the daemon's holds bytes
            assert time.monotonic() < deadline, "the stopped client's receive window never shut"
            time.sleep(0.05)
        pusher = subprocess.Popen([sys.executable, "-c", PUSHER, address, tls_files["ca"], token, str(copy), SEGMENT],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for())
        clients.append(pusher)
        assert pusher.stdout is not None and pusher.stderr is not None
        assert pusher.stdout.readline().strip() == "pushing", pusher.stderr.read()
        pushing = _new_connection(port, before | {restoring})
        pusher.send_signal(signal.SIGSTOP)  # mid-push: the daemon waits for the rest
        # the daemon holds on to both connections: gRPC's defaults had the kernel abort the
        # restore's after 20 s, and closed the push's after a minute ("ping timeout")
        dropped = _dropped_within(port, {"restore": restoring, "WAL push": pushing},
                                  max(SUSPENDED, OLD_PING_TIMEOUT + 8))
        for client in clients:
            client.send_signal(signal.SIGCONT)
        out, _ = restorer.communicate(timeout=120)
        pushed, push_err = pusher.communicate(timeout=120)
    finally:
        for client in clients:
            if client.poll() is None:
                client.send_signal(signal.SIGCONT)
                client.kill()
                client.wait(10)
    assert not dropped, f"the daemon dropped stopped clients (seconds after): {dropped}"
    assert restorer.returncode == 0, f"the restore client said: {out}"
    received = out.strip().splitlines()[-1].split()
    assert received[0] == "received" and received[1] == received[3] and int(received[1]) >= TREE_BYTES, out
    assert pusher.returncode == 0 and pushed.strip() == "stored", f"the WAL push client said:\n{pushed}{push_err}"
    daemon.ok("wal-fetch", SEGMENT, str(tmp_path / "fetched"))
    assert (tmp_path / "fetched").read_bytes() == copy.read_bytes()


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
