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
