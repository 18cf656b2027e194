"""A WalPush never sits in the daemon's heap and is refused once it passes daemon.max_wal_size.

The real daemon's anonymous memory (RssAnon) is sampled while a large segment streams in; a
push larger than the configured maximum gets INVALID_ARGUMENT naming the key, stores nothing,
and the daemon archives the next segment as usual.
"""

from __future__ import annotations

import os
import threading

import grpc
import pytest
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc
from cairnd_harness import write_config

PIECE = 1 << 20
SEGMENT_PIECES = 192  # a 192 MiB segment (PostgreSQL allows up to 1 GiB)
# What a push may add to the heap does not depend on the segment's size: the store's pack
# buffers (three of 16 MiB) and gRPC's receive window; measured about 70 MiB. Holding the
# segment once is 192 MiB (the old code held it twice).
HEAP_GROWTH_LIMIT = 120 << 20


def _rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc status")


def _pieces(name: str, count: int, pulled: list[int]):
    for i in range(count):
        pulled[0] += 1
        yield pb.WalPushRequest(name=name if i == 0 else "", data=os.urandom(PIECE))


def test_a_large_wal_push_does_not_grow_the_heap(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    daemon = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    stub = pb_grpc.CairnStub(daemon.channel())
    # Warm up the paths a push takes (pack writer, compression), then take the baseline.
    assert stub.WalPush(_pieces("000000010000000000000001", 20, [0]), timeout=120).stored
    base = peak = _rss_anon(daemon.proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, _rss_anon(daemon.proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        reply = stub.WalPush(_pieces("000000010000000000000002", SEGMENT_PIECES, [0]), timeout=300)
    finally:
        done.set()
        sampler.join(5)
    assert reply.stored
    assert peak - base < HEAP_GROWTH_LIMIT, f"heap grew by {(peak - base) >> 20} MiB during the push"
    fetched = tmp_path / "fetched"
    daemon.ok("wal-fetch", "000000010000000000000002", str(fetched))
    assert os.path.getsize(fetched) == SEGMENT_PIECES * PIECE


@pytest.fixture
def capped(start_daemon, rundir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sock = os.path.join(rundir, "wal.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)},
                          max_wal_size=8 * PIECE)
    return start_daemon("--config", config, socket_path=sock)


def test_a_push_over_max_wal_size_is_refused_and_stores_nothing(capped, tmp_path):
    stub = pb_grpc.CairnStub(capped.channel())
    pulled = [0]
    with pytest.raises(grpc.RpcError) as err:
        stub.WalPush(_pieces("000000010000000000000003", 10_000, pulled), timeout=120)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (f"WAL file '000000010000000000000003' is larger than daemon.max_wal_size "
                                   f"({8 * PIECE} bytes)")
    assert pulled[0] < 1000  # refused while streaming, not after taking it all in
    r = capped.cli("wal-fetch", "000000010000000000000003", str(tmp_path / "x"))
    assert r.returncode == 3

    exact = tmp_path / "000000010000000000000004"
    exact.write_bytes(os.urandom(8 * PIECE))  # exactly the maximum is fine
    assert capped.ok("wal-push", str(exact)).strip() == f"archived {exact.name}"
    capped.ok("wal-fetch", exact.name, str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == exact.read_bytes()
    assert not [n for n in os.listdir(os.path.join(os.path.dirname(capped.socket), "state"))
                if n.startswith("walpush-")]


def test_a_read_only_daemon_refuses_a_push_before_taking_it_in(start_daemon, tmp_path):
    repo = str(tmp_path / "repo")
    writer = start_daemon("--repo", repo)
    assert writer.terminate(timeout=30)[0] == 0
    daemon = start_daemon("--repo", repo, "--read-only")
    stub = pb_grpc.CairnStub(daemon.channel())
    pulled = [0]
    with pytest.raises(grpc.RpcError) as err:
        stub.WalPush(_pieces("000000010000000000000005", 10_000, pulled), timeout=120)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "read-only" in err.value.details()
    assert pulled[0] < 1000
