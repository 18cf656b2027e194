"""wal-fetch's prefetch spool through the real client and daemon: after one fetch the next
segments arrive in the spool in the background, the spool stays within its bound, and later
fetches are served from it without the daemon (it is killed first)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from cairn.client import walfetch
from cairnd_harness import Daemon

SEG = 1 << 20  # segment size of this test's archive (the spool learns it from the first fetch)


def name(n: int) -> str:
    return f"00000001{0:08X}{n:08X}"


def wait_for(cond: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what()}")
        time.sleep(0.05)


def test_prefetch_fills_a_bounded_spool_and_serves_without_the_daemon(start_daemon, rundir: str) -> None:
    d: Daemon = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", rundir)
    src = os.path.join(rundir, "wal")
    os.makedirs(src)
    bodies = {}
    for n in range(1, 13):
        bodies[n] = os.urandom(SEG)
        path = os.path.join(src, name(n))
        with open(path, "wb") as f:
            f.write(bodies[n])
        d.ok("wal-push", path)
    pg_wal = os.path.join(rundir, "data", "pg_wal")
    os.makedirs(pg_wal)
    dest = os.path.join(pg_wal, "RECOVERYXLOG")
    spool = walfetch.spool_of(dest)

    def spooled() -> set[str]:
        return {e for e in os.listdir(spool) if not e.startswith(".")} if os.path.isdir(spool) else set()

    d.ok("wal-fetch", name(1), dest, "--prefetch", "4")
    assert open(dest, "rb").read() == bodies[1]
    # deadlines are generous: on a loaded machine the prefetcher's interpreter alone may take seconds
    wait_for(lambda: spooled() == {name(n) for n in range(2, 6)}, 90,
             lambda: f"segments 2-5 in the spool (it holds {sorted(spooled())})")
    d.ok("wal-fetch", name(2), dest, "--prefetch", "4")
    assert open(dest, "rb").read() == bodies[2]
    wait_for(lambda: spooled() == {name(n) for n in range(3, 7)}, 90,
             lambda: f"the window to move to 3-6 (the spool holds {sorted(spooled())})")
    assert len(spooled()) <= 4

    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    for n in (3, 4):
        d.ok("wal-fetch", name(n), dest, "--prefetch", "4")  # served from the spool
        assert open(dest, "rb").read() == bodies[n]
    r = d.cli("wal-fetch", name(9), dest, "--prefetch", "4")  # not spooled: needs the daemon
    assert r.returncode == 255 and "unable to reach cairnd" in r.stderr  # above 125: recovery stops
    # without prefetch the spool is never used
    r = d.cli("wal-fetch", name(5), dest, "--prefetch", "0")
    assert r.returncode == 255


def test_the_daemon_writes_spooled_segments_itself_and_a_refusal_falls_back_to_streaming(
        start_daemon, rundir: str, monkeypatch) -> None:
    """The prefetcher's fetcher over the real socket: the daemon writes each segment into the
    client's claim file (nothing crosses gRPC); when the daemon refuses the claim, the segment
    is streamed instead and later ones are streamed at once. Nothing is left beside the file."""
    import grpc
    from cairn.client.connection import Connection, resolve_endpoint
    from cairn.fsio import claims
    from cairn.proto.cairn.v1 import cairn_pb2 as pb

    d: Daemon = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", rundir)
    src = os.path.join(rundir, "wal")
    os.makedirs(src)
    bodies = {}
    for n in range(1, 5):
        bodies[n] = os.urandom(SEG)
        with open(os.path.join(src, name(n)), "wb") as f:
            f.write(bodies[n])
        d.ok("wal-push", os.path.join(src, name(n)))
    spool = os.path.join(rundir, "spool")
    os.makedirs(spool)
    with Connection(resolve_endpoint(socket=d.socket)) as conn:
        fetch = walfetch.GrpcFetcher(conn, pb, grpc, sync=True)
        assert fetch(name(1), os.path.join(spool, ".1.tmp")) and fetch(name(2), os.path.join(spool, ".2.tmp"))
        assert (fetch.written_by_daemon, fetch.streamed) == (2, 0)
        assert not fetch(name(9), os.path.join(spool, ".9.tmp"))  # not archived: False, no file
        # a claim the daemon does not accept (here: not named as the protocol says)
        monkeypatch.setattr(claims, "CLAIM_PREFIX", ".not-a-claim-")
        refused = walfetch.GrpcFetcher(conn, pb, grpc, sync=False)
        assert refused(name(3), os.path.join(spool, ".3.tmp")) and refused(name(4), os.path.join(spool, ".4.tmp"))
        assert (refused.written_by_daemon, refused.streamed, refused.local) == (0, 2, False)
    for n in range(1, 5):
        assert open(os.path.join(spool, f".{n}.tmp"), "rb").read() == bodies[n]
    assert sorted(os.listdir(spool)) == [f".{n}.tmp" for n in range(1, 5)]
