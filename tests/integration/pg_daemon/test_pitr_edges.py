"""Edges of restore-db and WAL archiving an operator meets at night, end to end against a real
PostgreSQL 15 archiving through `cairn wal-push` into a real cairnd:

- a restore-db cut short (the daemon stopped or killed mid-way, a full disk) never leaves a
  directory PostgreSQL starts on: global/pg_control is written last, after every other file is
  complete, and not at all when one could not be written; the same restore with --delta then
  finishes it and the server recovers every committed row;
- wal-push refuses a truncated or empty file under a segment's name, so the real segment can
  still be archived afterwards;
- a target time or LSN just before the set's consistent point is refused, and the message names
  that point exactly (to the microsecond), not rounded to a second that reads as earlier;
- the client writing the directory itself (--stream) on a full disk leaves no pg_control either,
  with the daemon's message, and --delta with room again finishes it;
- --target-end recovers every commit the archive holds, written by the daemon, by the client or
  by a delta; without it recovery still stops at the set's consistent point;
- a target time later than the newest archived segment is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cairn import walnames
from cairnd_harness import CAIRN
from mounts import fill, mount_tmpfs
from pgserver import chown_postgres
from pgstack import ArchivingServer, Stack, app_stack, make_pg_dir

ROWS = 120_000  # about 20 MiB of table: the daemon is still writing when the test looks


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with app_stack("cairn-pitr-", {"a.txt": "a\n"}) as st:
        yield st


@pytest.fixture(scope="module")
def big_set(stack: Stack) -> dict:
    stack.psql("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    stack.psql(f"INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {ROWS}) g")
    return stack.backup("app")


def holder(stack: Stack, prefix: str) -> Path:
    h = make_pg_dir(prefix)
    stack.holders.append(h)
    return h


def files_of(top: Path) -> dict[str, int]:
    """Every regular file below `top` with its size."""
    out = {}
    for root, _dirs, names in os.walk(top):
        for name in names:
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                out[os.path.relpath(p, top)] = os.path.getsize(p)
    return out


def start_restore(stack: Stack, set_id: str, target: Path) -> subprocess.Popen:
    return subprocess.Popen([CAIRN, "--socket", stack.sock, "restore-db", set_id, "--database", "appdb",
                             "--target", str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"restore-db ended before {path.name} appeared: {proc.communicate()}"
        assert time.monotonic() < end, f"{path} did not appear in {timeout}s"
        time.sleep(0.001)


def test_pg_control_comes_last_so_a_cut_restore_never_starts(stack: Stack, big_set: dict) -> None:
    h = holder(stack, "cairn-pitr-cut-")
    daemon = stack.daemon
    assert daemon is not None
    # the daemon writes (local restore); frozen the moment pg_control appears, every other file is complete
    target = h / "frozen"
    proc = start_restore(stack, big_set["id"], target)
    wait_for_file(target / "global" / "pg_control", proc)
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        seen = files_of(target)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    final = files_of(target)
    unfinished = {p: (seen.get(p), n) for p, n in final.items() if p != "global/pg_control" and seen.get(p) != n}
    assert not unfinished, f"pg_control was there before these files were complete: {sorted(unfinished)[:10]}"

    # the daemon killed mid-way: no pg_control, so PostgreSQL refuses the directory
    for attempt in range(3):  # a restore is fast: the cut may come after its end, then try again
        target = h / f"killed{attempt}"
        proc = start_restore(stack, big_set["id"], target)
        wait_for_file(target / "postgresql.conf", proc)  # late in stream order; large files still going
        os.kill(stack.daemon.proc.pid, signal.SIGSTOP)  # held where it is, then killed there
        cut = not (target / "global" / "pg_control").exists()
        stack.kill_daemon()
        proc.communicate(timeout=60)
        stack.start_daemon()  # before any assertion: the module's other tests need the daemon
        if cut:
            break
    assert cut, "each of three restores was complete before the test could cut it short"
    assert proc.returncode == 1
    assert not (target / "global" / "pg_control").exists()
    chown_postgres(target)
    os.chmod(target, 0o700)
    srv = ArchivingServer(pgdata=target, settings={"archive_mode": "off"})
    stack.restored.append(srv)
    with pytest.raises(RuntimeError, match="could not open file .*global/pg_control"):
        srv.start(timeout=30)
    # the same command says how to finish it; with --delta the server recovers every row
    r = stack.cli("restore-db", big_set["id"], "--database", "appdb", "--target", str(target), timeout=120)
    assert r.returncode == 1 and "is not empty" in r.stderr and "--delta" in r.stderr, r.stderr
    stack.ok("restore-db", big_set["id"], "--database", "appdb", "--target", str(target), "--delta", timeout=120)
    srv.start(timeout=60)
    srv.wait_promoted()
    assert srv.psql("SELECT count(*), max(id) FROM big") == f"{ROWS}|{ROWS}"
    srv.stop()


def test_a_restore_on_a_full_disk_leaves_no_pg_control(stack: Stack, big_set: dict) -> None:
    h = holder(stack, "cairn-pitr-full-")
    small = h / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(small)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system: {mounted.stderr.strip()}")
    try:
        target = small / "data"
        r = stack.cli("restore-db", big_set["id"], "--database", "appdb", "--target", str(target), timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "No space left on device" in r.stderr
        assert not (target / "global" / "pg_control").exists()  # files are missing: it must never start
        assert "global/pg_control was not written, so PostgreSQL cannot start on this incomplete directory" \
            in r.stderr
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_wal_push_refuses_a_truncated_segment_so_the_real_one_still_archives(stack: Stack) -> None:
    h = holder(stack, "cairn-pitr-push-")
    sysid = stack.psql("SELECT system_identifier FROM pg_control_system()")
    done = stack.wait_archived()
    stack.ok("wal-fetch", "--system-id", sysid, done, str(h / "whole"))
    whole = (h / "whole").read_bytes()
    assert len(whole) == 16 << 20
    # the segment the server writes now, not archived yet: a cut copy and an empty file under its name
    stack.psql("CREATE TABLE pushed (x int)")  # past the switch: the server writes the next segment
    current = stack.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    assert current > done and stack.cli("wal-fetch", "--system-id", sysid, current, str(h / "no")).returncode == 3
    cut = h / "cut" / current
    cut.parent.mkdir()
    cut.write_bytes(whole[:8192])
    r = stack.cli("wal-push", "--system-id", sysid, str(cut))
    assert r.returncode == 2, r.stdout + r.stderr
    assert (f"WAL segment {current} holds 8192 bytes, but its header gives the segment size {16 << 20}: "
            "a truncated copy is not archived") in r.stderr
    cut.write_bytes(b"")
    r = stack.cli("wal-push", "--system-id", sysid, str(cut))
    assert r.returncode == 2 and f"WAL segment {current} is empty" in r.stderr, r.stdout + r.stderr
    r = stack.cli("wal-push", "--system-id", sysid, str(h / "cut" / "nothing"))
    assert r.returncode == 3 and "unable to read WAL file" in r.stderr
    # the server's own, complete segment of that name is archived as usual, and served whole
    assert stack.wait_archived(timeout=20) >= current
    stack.ok("wal-fetch", "--system-id", sysid, current, str(h / "fetched"))
    assert (h / "fetched").stat().st_size == 16 << 20
    # the same segment again is fine (an archiver's retry); other content under its name is refused
    again = (h / "fetched").read_bytes()
    cut.write_bytes(again)
    assert "already archived (identical)" in stack.ok("wal-push", "--system-id", sysid, str(cut))
    cut.write_bytes(again[:-1] + bytes([again[-1] ^ 1]))
    r = stack.cli("wal-push", "--system-id", sysid, str(cut))
    assert r.returncode == 1 and "is already archived with different content" in r.stderr, r.stderr


def test_a_target_just_before_the_consistent_point_is_refused_naming_the_exact_point(stack: Stack,
                                                                                      big_set: dict) -> None:
    rec = big_set["extra"]["database"]
    h = holder(stack, "cairn-pitr-early-")
    point = datetime.fromtimestamp(rec["stopped"], UTC)
    early = point - timedelta(microseconds=1)  # within the same second as the consistent point
    r = stack.cli("restore-db", big_set["id"], "--database", "appdb", "--target", str(h / "d"), "--target-time",
                  early.isoformat(sep=" "))
    assert r.returncode == 2, r.stdout + r.stderr
    shown = point.astimezone().isoformat(sep=" ", timespec="microseconds")
    assert f"is before the set's consistent point ({shown})" in r.stderr, r.stderr
    assert not (h / "d").exists()
    # an LSN one byte before the stop LSN is refused the same way
    stop = rec["stop_lsn"]
    hi, lo = (int(x, 16) for x in stop.split("/"))
    r = stack.cli("restore-db", big_set["id"], "--database", "appdb", "--target", str(h / "d"), "--target-lsn",
                  f"{hi:X}/{lo - 1:X}")
    assert r.returncode == 2 and f"is before the set's consistent point {stop}" in r.stderr, r.stderr
    assert not (h / "d").exists()


NOT_WRITTEN = ("global/pg_control was not written, so PostgreSQL cannot start on this incomplete directory: "
               "restore it again (--delta writes only what is missing)")


def start_on(stack: Stack, target: Path) -> ArchivingServer:
    """A server on a restored directory (archiving off: a test restore beside the source), promoted."""
    chown_postgres(target)
    os.chmod(target, 0o700)
    srv = ArchivingServer(pgdata=target, settings={"archive_mode": "off"})
    stack.restored.append(srv)
    srv.start(timeout=60)
    srv.wait_promoted()
    return srv


def test_a_streamed_restore_on_a_full_disk_leaves_no_pg_control(stack: Stack, big_set: dict) -> None:
    h = holder(stack, "cairn-pitr-stream-full-")
    # what the restore writes: room for all of it but the big table's file and the placed WAL (16 MiB
    # each), so those fail while every small file after them, pg_control too, would still fit
    whole = h / "whole"
    stack.ok("restore-db", big_set["id"], "--database", "appdb", "--target", str(whole), "--stream", timeout=120)
    sizes = {p: n for p, n in files_of(whole).items() if not p.startswith("pg_wal/")}
    big = max(sizes, key=lambda p: sizes[p])
    assert sizes[big] > 16 << 20, sizes[big]
    room = sum(-(-n // 4096) * 4096 for p, n in sizes.items() if p != big) + (6 << 20)
    small = h / "small"
    small.mkdir()
    mount_tmpfs(str(small))
    try:
        subprocess.run(["mount", "-o", "remount,size=256m", str(small)], check=True)  # room again, below
        filler = fill(str(small / "filler"))
        os.truncate(filler, os.path.getsize(filler) - room)
        target = small / "data"
        r = stack.cli("restore-db", big_set["id"], "--database", "appdb", "--target", str(target), "--stream",
                      timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "written by the daemon" not in r.stdout  # this client wrote it
        assert f"unable to restore '{big}': write failed: No space left on device" in r.stderr, r.stderr[-3000:]
        written = files_of(target)
        assert big not in written and "backup_label" in written and "global/pg_filenode.map" in written, \
            r.stderr[-3000:]  # it went on past the failed file
        assert not (target / "global" / "pg_control").exists()  # files are missing: it must never start
        assert f"cairn: warning: {NOT_WRITTEN}" in r.stderr.splitlines(), r.stderr
        # with room again the delta finishes it, and the server recovers every row
        os.unlink(filler)
        stack.ok("restore-db", big_set["id"], "--database", "appdb", "--target", str(target), "--delta",
                 timeout=120)
        srv = start_on(stack, target)
        assert srv.psql("SELECT count(*), max(id) FROM big") == f"{ROWS}|{ROWS}"
        srv.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.fixture(scope="module")
def late_rows(stack: Stack, big_set: dict) -> int:
    """Rows committed after big_set, in two archived segments: only the archive holds them."""
    stack.psql("CREATE TABLE late (id int PRIMARY KEY)")
    stack.psql("INSERT INTO late SELECT generate_series(1, 500)")
    stack.wait_archived()
    stack.psql("INSERT INTO late SELECT generate_series(501, 1000)")
    stack.wait_archived()  # pg_switch_wal(), then until the server's wal-push stored that segment
    return 1000


def test_target_end_recovers_all_the_archive_holds_and_the_default_stops_at_the_set(
        stack: Stack, big_set: dict, late_rows: int) -> None:
    h = holder(stack, "cairn-pitr-end-")
    target = h / "data"
    out = stack.ok("restore-db", big_set["id"], "--database", "appdb", "--target", str(target))
    stop = big_set["extra"]["database"]["stop_lsn"]
    assert (f"PostgreSQL started on {target} recovers to the set's consistent point (LSN {stop}) on the set's "
            "own timeline, then promotes") in out, out
    conf = (target / "postgresql.auto.conf").read_text()
    assert "recovery_target = 'immediate'" in conf
    srv = start_on(stack, target)
    assert srv.psql("SELECT to_regclass('late') IS NULL") == "t"  # the default: the set's own point
    assert srv.psql("SELECT count(*) FROM big") == str(ROWS)
    srv.stop()
    # the same directory mended by a delta to the end of the archive: every archived commit
    doc = json.loads(stack.ok("--json", "restore-db", big_set["id"], "--database", "appdb", "--target",
                              str(target), "--delta", "--target-end", timeout=120))
    assert (doc["recovery_target"], doc["recovery_target_timeline"], doc["errors"]) == ("end", "current", [])
    conf = (target / "postgresql.auto.conf").read_text()
    assert "recovery_target" not in conf.replace("recovery_target_action", "").replace(
        "recovery_target_timeline", ""), conf
    assert "recovery_target_action = 'promote'" in conf and "recovery_target_timeline = 'current'" in conf
    srv.start(timeout=60)
    srv.wait_promoted()
    assert srv.psql("SELECT count(*), max(id) FROM late") == f"{late_rows}|{late_rows}"
    assert srv.psql("SELECT count(*) FROM big") == str(ROWS)
    srv.stop()


@pytest.mark.parametrize("how", ["--stream", "daemon"])
def test_target_end_written_by_the_client_or_the_daemon(stack: Stack, big_set: dict, late_rows: int,
                                                        how: str) -> None:
    h = holder(stack, "cairn-pitr-end-w-")
    target = h / "data"
    extra = ["--stream"] if how == "--stream" else []
    out = stack.ok("restore-db", big_set["id"], "--database", "appdb", "--target", str(target), "--target-end",
                   *extra, timeout=120)
    assert ("written by the daemon" in out) == (how == "daemon"), out
    assert (f"PostgreSQL started on {target} recovers to the end of the WAL archive (every archived segment is "
            "replayed) on the set's own timeline, then promotes") in out, out
    assert (target / "pg_wal" / walnames.WAL_MARKER).exists() and not (target / "pg_wal" / walnames.OWN_POINT).exists()
    srv = start_on(stack, target)
    assert srv.psql("SELECT count(*), max(id) FROM late") == f"{late_rows}|{late_rows}"
    srv.stop()



@pytest.mark.parametrize("how", ["daemon", "--stream"])
def test_a_target_time_later_than_the_archive_is_refused_before_anything_is_written(
        stack: Stack, big_set: dict, late_rows: int, how: str) -> None:
    """An hour from now no archived record can reach: refused at once (PostgreSQL would replay the
    whole archive first), naming the newest segment and --target-end, and nothing is written;
    with a restore_command of the operator's own it is not Cairn's archive that bounds it."""
    h = holder(stack, "cairn-pitr-late-")
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    extra = ["--stream"] if how == "--stream" else []
    r = stack.cli("restore-db", big_set["id"], "--database", "appdb", "--target", str(h / "d"), "--target-time",
                  later, *extra)
    assert r.returncode == 1, r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert f"target time '{later}' is later than the newest WAL archived for database 'appdb' (0000" in first, first
    assert "--target-end to recover everything archived" in first, first
    assert not (h / "d").exists() or not any((h / "d").iterdir())
    if how == "daemon":  # a restore_command of the operator's own may read another archive: not refused
        r = stack.cli("restore-db", big_set["id"], "--database", "appdb", "--target", str(h / "d"), "--target-time",
                      later, "--restore-command", "cp /elsewhere/%f %p")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "recovery_target_time" in (h / "d" / "postgresql.auto.conf").read_text()
