"""Clients that stop reading cannot take the daemon's threads (the real daemon, real gRPC).

Restore streams of a set of incompressible data are opened and never read, more of them than the
listener has data-stream slots: the ones beyond are refused at once with RESOURCE_EXHAUSTED,
while `cairn status` and a WalFetch (the WAL pool) still answer at once. With the daemon's stall
timeout short, the stalled streams are cancelled (their clients see CANCELLED) and a new restore
is admitted again.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest
from cairn.daemon.rpc.streams import DATA_STREAMS
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pbg
from cairnd_harness import wait_for_restore_slot

STALL = 10.0  # the daemon's stall timeout in this test (seconds): longer than opening the streams takes


@pytest.fixture
def daemon(start_daemon, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))  # far beyond a stream's flow-control window
    monkeypatch.setenv("CAIRN_RPC_STALL_TIMEOUT", str(STALL))
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    d.ok("backup", "--level", "full")
    return d


def _first_reply(call) -> None:
    """Wait until the daemon is sending (the stream holds its slot), without reading on."""
    next(call)


def test_stalled_restore_streams_leave_status_and_wal_calls_served_and_are_cancelled(daemon):
    # no window growth (BDP probing) on the clients: on a fast host it let a whole restore land in
    # the client's buffers, the stream ended and freed its slot, and the extra call was admitted
    channels = [grpc.insecure_channel("unix:" + daemon.socket, options=[("grpc.http2.bdp_probe", 0)])
                for _ in range(DATA_STREAMS + 2)]
    try:
        stalled = []
        opening = time.monotonic()
        for ch in channels[:DATA_STREAMS]:
            call = pbg.CairnStub(ch).Restore(pb.RestoreRequest(set="latest"), timeout=120)
            _first_reply(call)
            stalled.append(call)
        # the first stream must still be stalled, not cancelled already, for the refusal below
        assert time.monotonic() - opening < STALL * 0.8, "opening the streams took nearly the stall timeout"
        # every data slot is held by a client that reads no more: one more is refused at once
        extra = pbg.CairnStub(channels[DATA_STREAMS]).Restore(pb.RestoreRequest(set="latest"), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            next(extra)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        assert "at most" in refused.value.details()
        # unary calls and the WAL pool are not affected
        started = time.monotonic()
        daemon.ok("status", timeout=10)  # fails on a timeout or an error
        stub = pbg.CairnStub(channels[DATA_STREAMS + 1])
        with pytest.raises(grpc.RpcError) as missing:
            list(stub.WalFetch(pb.WalFetchRequest(name="000000010000000000000042"), timeout=10))
        assert missing.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED, missing.value
        assert time.monotonic() - started < 8
        # after the stall timeout the stalled streams are cancelled and their slots free again
        wait_for_restore_slot(channels[DATA_STREAMS], STALL + 30, "no stalled stream was cancelled")
        with pytest.raises(grpc.RpcError) as cancelled:
            for _ in stalled[0]:  # the client resumes reading: what was buffered, then the end
                pass
        assert cancelled.value.code() == grpc.StatusCode.CANCELLED, cancelled.value
        with open(daemon.stderr_path, encoding="utf-8", errors="replace") as f:
            assert "cancelled a call whose client has not taken a Restore reply" in f.read()
    finally:
        for ch in channels:
            ch.close()
