"""Health checks, reflection and malformed calls cannot stop the real daemon from serving backups.

A flood of grpc.health.v1 Check/Watch calls with short deadlines, cancelled streams, watches
left open, reflection streams and undecodable requests from several threads; afterwards (with
the open watches still open) `cairn backup`, `cairn wal-push`, `status` and `verify` must
succeed within a bound.
"""

from __future__ import annotations

import os
import random
import threading
import time

import grpc
import pytest
from cairn.daemon.rpc.health import AUX_STREAMS  # open watch + reflection streams admitted at once
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

THREADS = 4
CALLS_PER_THREAD = 600
LOAD_BUDGET = 12.0  # seconds the flood may take on a loaded machine; what it got done is checked
AFTER_BOUND = 20.0  # a backup and a wal-push after the flood must each finish within this

GARBAGE = (b"\xff\xff\xff", b"\x0a\xff", b"\x08" + b"\xff" * 11, os.urandom(64))
RAW_METHODS = (
    "/cairn.v1.Cairn/Status",
    "/cairn.v1.Cairn/ListSets",
    "/grpc.health.v1.Health/Check",
    "/cairn.v1.Cairn/NoSuchMethod",
    "/no.such.Service/Call",
)


@pytest.fixture
def daemon(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    d.src = src
    return d


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def _flood(sock: str, seed: int, counts: dict[str, int], lock: threading.Lock, stop_at: float) -> None:
    rng = random.Random(seed)
    channel = grpc.insecure_channel("unix:" + sock)
    health = health_pb2_grpc.HealthStub(channel)
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    raw_unary = {m: channel.unary_unary(m) for m in RAW_METHODS}
    raw_stream = channel.unary_stream("/cairn.v1.Cairn/Backup")
    done: dict[str, int] = {}
    try:
        for i in range(CALLS_PER_THREAD):
            if time.monotonic() > stop_at:
                break
            kind = ("check", "watch-deadline", "watch-cancel", "raw", "raw-stream", "reflection")[i % 6]
            deadline = rng.choice((0.001, 0.005, 0.02, 0.1))
            try:
                if kind == "check":
                    health.Check(health_pb2.HealthCheckRequest(service=rng.choice(("", "x"))), timeout=deadline)
                elif kind == "watch-deadline":
                    for _ in health.Watch(health_pb2.HealthCheckRequest(), timeout=deadline):
                        pass
                elif kind == "watch-cancel":
                    call = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
                    if rng.random() < 0.5:
                        next(call, None)
                    call.cancel()
                elif kind == "raw":
                    raw_unary[rng.choice(RAW_METHODS)](rng.choice(GARBAGE), timeout=deadline * 10)
                elif kind == "raw-stream":
                    call = raw_stream(rng.choice(GARBAGE), timeout=deadline * 10)
                    for _ in call:
                        pass
                else:
                    req = reflection_pb2.ServerReflectionRequest(list_services="")
                    call = refl.ServerReflectionInfo(iter([req]), timeout=deadline * 10)
                    next(call, None)
                    call.cancel()
            except grpc.RpcError:
                pass
            done[kind] = done.get(kind, 0) + 1
    finally:
        channel.close()
        with lock:
            for k, v in done.items():
                counts[k] = counts.get(k, 0) + v


def test_health_and_malformed_flood_leaves_backup_and_wal_push_working(daemon, tmp_path):
    # Watches left open for the whole test: only AUX_STREAMS of them are admitted, the rest
    # are refused at once, and the admitted ones cannot take the threads backups need.
    holder = grpc.insecure_channel("unix:" + daemon.socket)
    held = [health_pb2_grpc.HealthStub(holder).Watch(health_pb2.HealthCheckRequest(), timeout=120)
            for _ in range(AUX_STREAMS + 4)]
    try:
        outcomes = []
        for call in held:
            try:
                outcomes.append(next(call).status)
            except grpc.RpcError as exc:
                outcomes.append(exc.code())

        rss_before = _rss(daemon.proc.pid)
        counts: dict[str, int] = {}
        lock = threading.Lock()
        stop_at = time.monotonic() + LOAD_BUDGET
        threads = [threading.Thread(target=_flood, args=(daemon.socket, n, counts, lock, stop_at))
                   for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LOAD_BUDGET + 30)
        assert not any(t.is_alive() for t in threads)
        grown = _rss(daemon.proc.pid) - rss_before
        assert grown < 64 << 20, f"the flood left the daemon {grown >> 20} MiB larger"  # measured: 1 MiB

        seg = tmp_path / "000000010000000000000001"
        seg.write_bytes(os.urandom(1 << 20))
        start = time.monotonic()
        out = daemon.ok("backup", "--level", "full", timeout=AFTER_BOUND)
        assert "full set of source 'src' done" in out
        assert daemon.ok("wal-push", str(seg), timeout=AFTER_BOUND).strip() == f"archived {seg.name}"
        assert daemon.ok("status", timeout=AFTER_BOUND)
        assert daemon.ok("verify", timeout=AFTER_BOUND).startswith("repository ok: 1 set")
        assert time.monotonic() - start < 2 * AFTER_BOUND
        assert daemon.alive
        total = sum(counts.values())
        assert total >= 1000, counts  # thousands on an idle machine; at least this many under load
        assert outcomes.count(health_pb2.HealthCheckResponse.SERVING) == AUX_STREAMS, outcomes
        assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 4, outcomes
    finally:
        for call in held:
            call.cancel()
        holder.close()


def test_watch_slots_free_again_and_watches_end_when_the_daemon_stops(daemon):
    channel = daemon.channel()
    stub = health_pb2_grpc.HealthStub(channel)
    held = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=60) for _ in range(AUX_STREAMS)]
    for call in held:
        assert next(call).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as refused:
        next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=10))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "health watch" in refused.value.details()

    held.pop().cancel()  # its slot comes back once the daemon sees the cancel
    deadline = time.monotonic() + 10
    while True:
        try:
            again = stub.Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(again).status == health_pb2.HealthCheckResponse.SERVING
            held.append(again)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "a cancelled watch never gave its slot back"
            time.sleep(0.05)

    code, _ = daemon.terminate(timeout=30)
    assert code == 0
    for call in held:  # each open watch saw NOT_SERVING (or its end) rather than hanging
        rest = []
        try:
            rest = [r.status for r in call]
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert all(s == health_pb2.HealthCheckResponse.NOT_SERVING for s in rest)
    channel.close()
