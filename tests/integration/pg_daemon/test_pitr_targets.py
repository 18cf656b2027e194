"""Point-in-time targets the archive cannot reach are refused before anything is written, end to
end against a real PostgreSQL 15 archiving through `cairn wal-push` into a real cairnd:

- a target time after the last transaction archived, yet before the store's time of the newest
  segment (so the check by store time lets it through), is refused naming that transaction; the
  LSN the hint names restores every archived row;
- a target time or LSN before the set's consistent point names the earlier set that reaches it,
  or says that none does;
- a target LSN past the last archived record, or past the end of the archived WAL, is refused;
- a time after a set whose archived WAL holds no later transaction is refused;
- a timeline id the archive holds no history file for is refused by the daemon itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pbg
from pgserver import chown_postgres
from pgstack import ArchivingServer, Stack, app_stack, make_pg_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with app_stack("cairn-pitrt-", {"a.txt": "a\n"}) as st:
        # no background transactions: the test knows the last one the archive holds
        st.psql("ALTER SYSTEM SET autovacuum = off")
        st.psql("SELECT pg_reload_conf()")
        yield st


@pytest.fixture(scope="module")
def sets(stack: Stack) -> dict:
    """Set a, rows 1-100, set b, rows 101-200 (archived); `last` bounds the last commit's time."""
    stack.psql("CREATE TABLE t (id int PRIMARY KEY)")
    a = stack.backup("app")
    stack.psql("INSERT INTO t SELECT generate_series(1, 100)")
    b = stack.backup("app")
    stack.psql("INSERT INTO t SELECT generate_series(101, 200)")
    last = float(stack.psql("SELECT extract(epoch FROM clock_timestamp())"))  # after that commit
    stack.wait_archived()
    return {"a": a, "b": b, "last": last}


def holder(stack: Stack, prefix: str) -> Path:
    h = make_pg_dir(prefix)
    stack.holders.append(h)
    return h


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + " UTC"


def refused(stack: Stack, set_id: str, target: Path, *options: str, code: int = 1) -> str:
    r = stack.cli("restore-db", set_id, "--database", "appdb", "--target", str(target), *options)
    assert r.returncode == code, r.stdout + r.stderr
    assert not target.exists() or not any(target.iterdir()), "something was written"
    return r.stderr


def start_on(stack: Stack, target: Path) -> ArchivingServer:
    chown_postgres(target)
    target.chmod(0o700)
    srv = ArchivingServer(pgdata=target, settings={"archive_mode": "off"})
    stack.restored.append(srv)
    srv.start(timeout=60)
    srv.wait_promoted()
    return srv


def test_a_time_after_the_last_archived_commit_is_refused_naming_it(stack: Stack, sets: dict) -> None:
    h = holder(stack, "cairn-pitrt-late-")
    # two seconds after the last commit: the newest segment was stored later, so only the WAL's
    # own content tells that no transaction ends after it
    late = utc(sets["last"] + 2.0)
    err = refused(stack, sets["b"]["id"], h / "d", "--target-time", late)
    first, hint = err.splitlines()[0], err.splitlines()[1]
    assert first.startswith(f"cairn: error: unable to restore database 'appdb' to '{late}': the archived WAL of "
                            "timeline 1 ends at "), first
    m = re.search(r"its last transaction ended at (\S+ \S+) \(LSN ([0-9A-F]+/[0-9A-F]+)\)", first)
    assert m is not None and "newest reachable target time is just before" in first, first
    ended = datetime.fromisoformat(m.group(1)).timestamp()
    assert sets["b"]["extra"]["database"]["stopped"] < ended <= sets["last"], (first, sets["last"])
    assert f"--target-lsn {m.group(2)} recovers up to and including that transaction" in hint, hint
    assert "--target-end" in hint
    # an hour from now: past the newest segment's store time too, and the hint names the same transaction
    err = refused(stack, sets["b"]["id"], h / "d", "--target-time", utc(time.time() + 3600))
    assert "is later than the newest WAL archived for database 'appdb'" in err.splitlines()[0], err
    assert (f"hint: the last transaction archived on timeline 1 ended at {m.group(1)} (LSN {m.group(2)}): a target "
            f"time before it is reachable, and --target-lsn {m.group(2)} recovers up to and including it") in err, err
    # the LSN named recovers every archived row
    stack.ok("restore-db", sets["b"]["id"], "--database", "appdb", "--target", str(h / "lsn"), "--target-lsn",
             m.group(2), timeout=120)
    srv = start_on(stack, h / "lsn")
    assert srv.psql("SELECT count(*), max(id) FROM t") == "200|200"
    srv.stop()


def test_a_target_before_the_set_names_the_earlier_set_that_reaches_it(stack: Stack, sets: dict) -> None:
    h = holder(stack, "cairn-pitrt-early-")
    a, b = sets["a"], sets["b"]
    ra, rb = a["extra"]["database"], b["extra"]["database"]
    between = utc((ra["stopped"] + rb["stopped"]) / 2)
    err = refused(stack, b["id"], h / "d", "--target-time", between, code=2)
    assert "is before the set's consistent point" in err.splitlines()[0], err
    assert f"hint: set '{a['id'][:8]}' (consistent at " in err and f"cairn restore-db {a['id'][:8]}" in err, err
    err = refused(stack, b["id"], h / "d", "--target-lsn", ra["stop_lsn"], code=2)
    assert f"hint: set '{a['id'][:8]}' (consistent at {ra['stop_lsn']}) reaches it" in err, err
    err = refused(stack, a["id"], h / "d", "--target-time", utc(ra["stopped"] - 60), code=2)
    assert "hint: no earlier set holds a base backup of database 'appdb' that reaches the target" in err, err


def test_a_target_lsn_past_the_archived_wal_is_refused(stack: Stack, sets: dict) -> None:
    h = holder(stack, "cairn-pitrt-lsn-")
    newest = stack.psql("SELECT last_archived_wal FROM pg_stat_archiver")  # the newest segment archived
    end = (int(newest[8:16], 16) << 32) + (int(newest[16:24], 16) + 1) * (16 << 20)  # where it ends
    beyond = f"{end >> 32:X}/{(end & 0xFFFFFFFF) + 0x100:X}"  # past the newest archived segment
    err = refused(stack, sets["b"]["id"], h / "d", "--target-lsn", beyond)
    assert f"unable to restore database 'appdb' to LSN {beyond}: the archived WAL of timeline 1 ends at " \
           f"{end >> 32:X}/{end & 0xFFFFFFFF:X} (segment {newest})" in err, err
    m = re.search(r"the last record archived starts at ([0-9A-F]+/[0-9A-F]+), the newest reachable target LSN", err)
    assert m is not None, err
    # inside the newest segment, after its last record (the zeros after the WAL switch): refused too
    hi, lo = (int(x, 16) for x in m.group(1).split("/"))
    after = f"{hi:X}/{lo + 1:X}"
    err = refused(stack, sets["b"]["id"], h / "d", "--target-lsn", after)
    assert f"to LSN {after}: " in err and f"the last record archived starts at {m.group(1)}" in err, err
    # that record itself is reachable: the checks pass (check_only: nothing is written)
    assert stack.daemon is not None
    with stack.daemon.channel() as channel:
        list(pbg.CairnStub(channel).RestoreDb(pb.RestoreDbRequest(
            set=sets["b"]["id"], database="appdb", target_lsn=m.group(1), check_only=True,
            target_path=str(h / "d").encode()), timeout=60))


def test_a_timeline_without_history_is_refused_by_the_daemon(stack: Stack, sets: dict) -> None:
    h = holder(stack, "cairn-pitrt-tli-")
    assert stack.daemon is not None
    with stack.daemon.channel() as channel:  # the client checks first: ask the daemon directly
        with pytest.raises(grpc.RpcError) as caught:
            list(pbg.CairnStub(channel).RestoreDb(pb.RestoreDbRequest(
                set=sets["b"]["id"], database="appdb", target_timeline="7", check_only=True,
                target_path=str(h / "d").encode()), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timeline 7 of database 'appdb' is not in the archive (no 00000007.history)" in caught.value.details()
    err = refused(stack, sets["b"]["id"], h / "d", "--target-timeline", "7", code=2)
    assert "timeline 7 of database 'appdb' is not in the archive" in err, err


def test_a_time_after_a_set_with_no_later_transaction_is_refused(stack: Stack, sets: dict) -> None:
    h = holder(stack, "cairn-pitrt-quiet-")
    c = stack.backup("app")  # nothing commits after it (autovacuum is off)
    stopped = c["extra"]["database"]["stopped"]
    deadline = time.monotonic() + 10
    while datetime.now(UTC).timestamp() < stopped + 0.5:  # a target after the consistent point, not in the future
        assert time.monotonic() < deadline
        time.sleep(0.05)
    when = utc(stopped + 0.5)
    err = refused(stack, c["id"], h / "d", "--target-time", when)
    assert (f"unable to restore database 'appdb' to '{when}': the archived WAL of timeline 1 ends at ") in err, err
    assert "no transaction ended after the set's consistent point in it" in err, err
    assert "hint: restore to the set's own point (no target option)" in err, err
    # a later transaction, archived, makes that time reachable
    stack.psql("INSERT INTO t VALUES (1000)")
    stack.wait_archived()
    stack.ok("restore-db", c["id"], "--database", "appdb", "--target", str(h / "ok"), "--target-time", when,
             timeout=120)
