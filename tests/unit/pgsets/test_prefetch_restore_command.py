"""The restore_command restore-db writes takes a segment from this boot's prefetch spool with a
plain `mv`, and never from a spool an earlier boot left (its content may not have reached the
disk before the crash): then the client is run."""

from __future__ import annotations

import os
import subprocess
import threading
import time

from cairn.client import walfetch
from cairn.daemon.databases.postgres import restoredb

SEG = "000000010000000000000007"


def run_command(datadir, marker) -> int:
    fallback = f"/bin/sh -c 'echo called > {marker}; exit 1' --"  # stands in for `cairn wal-fetch`
    cmd = restoredb.prefetching_restore_command("/nonexistent.sock", executable="/bin/true")
    cmd = cmd.replace(restoredb.restore_command("/nonexistent.sock", "/bin/true"), fallback)
    cmd = cmd.replace("%f", SEG).replace("%p", "pg_wal/RECOVERYXLOG")
    return subprocess.run(["/bin/sh", "-c", cmd], cwd=datadir).returncode


def test_this_boots_spool_is_used_and_an_earlier_boots_is_not(tmp_path) -> None:
    pg_wal = tmp_path / "pg_wal"
    spool = walfetch.spool_of(str(pg_wal / "RECOVERYXLOG"))
    assert walfetch.boot_keyed(spool)
    old = pg_wal / "cairn-prefetch" / "0123abcd-0000-4000-8000-000000000000"
    old.mkdir(parents=True)
    (old / SEG).write_bytes(b"old boot")
    marker = tmp_path / "called"
    assert run_command(tmp_path, marker) == 1 and marker.exists()  # the client was asked
    assert not (pg_wal / "RECOVERYXLOG").exists() and (old / SEG).exists()
    marker.unlink()


    os.makedirs(spool)
    with open(os.path.join(spool, SEG), "wb") as f:
        f.write(b"this boot")
    assert run_command(tmp_path, marker) == 0 and not marker.exists()
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == b"this boot"


def test_a_segment_being_prefetched_is_waited_for_in_the_shell(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(restoredb, "SHELL_WAIT_TICKS", 500)
    pg_wal = tmp_path / "pg_wal"
    spool = walfetch.spool_of(str(pg_wal / "RECOVERYXLOG"))
    os.makedirs(spool)
    tmp = os.path.join(spool, f".{SEG}.tmp")
    with open(tmp, "wb") as f:
        f.write(b"half")

    def finish() -> None:
        with open(tmp, "ab") as f:
            f.write(b" and the rest")
        os.replace(tmp, os.path.join(spool, SEG))

    timer = threading.Timer(0.3, finish)
    timer.start()
    marker = tmp_path / "called"
    try:
        assert run_command(tmp_path, marker) == 0 and not marker.exists()  # no client started
    finally:
        timer.join()
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == b"half and the rest"


def test_a_leftover_partial_file_is_waited_for_only_a_bounded_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(restoredb, "SHELL_WAIT_TICKS", 20)
    spool = walfetch.spool_of(str(tmp_path / "pg_wal" / "RECOVERYXLOG"))
    os.makedirs(spool)
    open(os.path.join(spool, f".{SEG}.tmp"), "wb").close()  # a prefetcher killed mid-fetch
    marker = tmp_path / "called"
    t0 = time.monotonic()
    assert run_command(tmp_path, marker) == 1 and marker.exists()  # then the client is asked
    assert time.monotonic() - t0 < 10


def test_the_shell_answers_placed_wal_and_the_own_point_without_the_client(tmp_path) -> None:
    """What `cairn wal-fetch` answers without the archive (exit non-zero: PostgreSQL reads
    pg_wal/) is answered by the shell: no interpreter starts for it."""
    placed = ["000000010000000000000005", "000000010000000000000006"]
    cmd = restoredb.prefetching_restore_command("/nonexistent.sock", executable="/bin/true", placed=placed,
                                                own_point=True)
    marker = tmp_path / "called"
    fallback = f"/bin/sh -c 'echo called > {marker}; exit 1' --"
    cmd = cmd.replace(restoredb.restore_command("/nonexistent.sock", "/bin/true"), fallback)
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    for n in placed:
        (pg_wal / n).write_bytes(b"placed")

    def fetch(name: str) -> tuple[int, bool]:
        with_name = cmd.replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG")
        code = subprocess.run(["/bin/sh", "-c", with_name], cwd=tmp_path).returncode
        called = marker.exists()
        if called:
            marker.unlink()
        return code, called

    assert fetch("000000010000000000000006") == (1, False)  # placed: read from pg_wal/
    assert fetch("00000001.history") == (1, False)  # never exists
    assert fetch("000000010000000000000007") == (1, True)  # own point not marked: the client decides
    (pg_wal / restoredb.OWN_POINT).write_bytes(b"")
    assert fetch("000000010000000000000007") == (1, False)  # past the own point: never needed
    assert fetch("00000001000000000000000A") == (1, False)
    assert fetch("00000001000000000000000B") == (1, True)  # beyond what the shell names
    assert fetch("00000002.history") == (1, True)  # a later timeline's history: the archive decides
    (pg_wal / placed[0]).unlink()
    assert fetch(placed[0]) == (1, True)  # listed but gone from pg_wal/: the client fetches it


def test_only_wal_file_names_reach_the_shell() -> None:
    cmd = restoredb.local_answers(["000000010000000000000005", "x;rm -rf /", "$(id)"], own_point=False)
    assert "rm" not in cmd and "$(id)" not in cmd and "000000010000000000000005)" in cmd
