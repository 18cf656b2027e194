"""PostgreSQL's archive and restore commands wait while every WAL slot of the daemon is taken.

The daemon serves WAL_STREAMS WAL calls at a time and refuses one more with RESOURCE_EXHAUSTED.
Two restored clusters of one application recovering at once (each with its prefetcher) beside
the servers archiving into the same daemon take more than that; a refusal then stopped the
recovery of a restored server (`could not restore file ... from archive`, startup process
exits) and failed archive attempts. Here the test itself holds every WAL slot (WalPush calls
that send nothing) while a real server archives a segment and while a restored server recovers
from the archive; the slots are given back once the command waits (its note in the server log).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from cairn.daemon.rpc.streams import WAL_STREAMS
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pbg
from pgstack import ArchivingServer, Stack, app_stack, make_pg_dir

WAITS = "every WAL slot of the daemon is taken"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with app_stack("cairn-walslots-", {"a.txt": "a\n"}) as st:
        st.psql("CREATE TABLE t (n int PRIMARY KEY)")
        yield st


@contextlib.contextmanager
def every_wal_slot_taken(stack: Stack) -> Iterator[threading.Event]:
    """Hold every WAL slot of the daemon's socket until the block ends (or the event is set)."""
    assert stack.daemon is not None
    release = threading.Event()
    channel = stack.daemon.channel()
    stub = pbg.CairnStub(channel)

    def nothing() -> Iterator[pb.WalPushRequest]:
        release.wait(120)
        return
        yield  # a generator that sends no request

    calls = [stub.WalPush.future(nothing(), timeout=180) for _ in range(WAL_STREAMS)]
    try:
        deadline = time.monotonic() + 30
        while True:  # held once one more WAL call is refused
            try:
                list(stub.WalFetch(pb.WalFetchRequest(name="0000000100000000000000FF"), timeout=10))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
            assert time.monotonic() < deadline, "the WAL slots were not taken"
            time.sleep(0.05)
        yield release
    finally:
        release.set()
        for c in calls:
            with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
                c.result(timeout=30)
        channel.close()


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_archiving_waits_for_a_slot_instead_of_failing(stack: Stack) -> None:
    stack.wait_archived()
    failed = int(stack.psql("SELECT failed_count FROM pg_stat_archiver"))
    with every_wal_slot_taken(stack) as release:
        stack.psql("INSERT INTO t SELECT generate_series(1, 100)")
        stack.psql("SELECT pg_switch_wal()")
        # the archiver's wal-push either waits (its note) or failed (the defect)
        wait_for(lambda: WAITS in stack.pg.log_text()
                 or int(stack.psql("SELECT failed_count FROM pg_stat_archiver")) > failed,
                 "the archiver's attempt")
        release.set()
    stack.wait_archived()
    assert int(stack.psql("SELECT failed_count FROM pg_stat_archiver")) == failed, stack.pg.log_tail()
    assert WAITS in stack.pg.log_text()


def test_recovery_waits_for_a_slot_instead_of_stopping(stack: Stack) -> None:
    s = stack.backup("app")
    stack.psql("INSERT INTO t SELECT generate_series(1001, 1100)")
    stack.psql("SELECT pg_switch_wal()")  # WAL past the set: recovery must fetch it from the daemon
    stack.psql("INSERT INTO t SELECT generate_series(1101, 1200)")
    stack.wait_archived()
    want = stack.psql("SELECT count(*) || ':' || sum(n) FROM t")
    holder = make_pg_dir("cairn-walslots-rdb-")
    stack.holders.append(holder)
    target = holder / "data"
    stack.ok("restore-db", s["id"], "--database", "appdb", "--target", str(target), "--target-end")
    srv = ArchivingServer(pgdata=target, settings={"archive_mode": "off"})
    stack.restored.append(srv)
    with every_wal_slot_taken(stack) as release:
        srv.start(wait_ready=False)
        # restore_command either waits (its note) or recovery stopped (the defect)
        wait_for(lambda: WAITS in srv.log_text() or not srv.running(), "the first fetch from the archive")
        release.set()
    srv.wait_promoted(timeout=120)
    assert srv.psql("SELECT count(*) || ':' || sum(n) FROM t") == want
    assert "could not restore file" not in srv.log_text()
    srv.stop()
