"""restore-db to the end of the WAL archive (--target-end), without a server: no recovery_target*
setting at all (PostgreSQL then replays every segment restore_command serves and promotes),
restore_command, the timeline and the promotion as for any target; never together with a time
or an LSN. And global/pg_control of a restore-db stream left out by the client's writer too
when a file before it failed (cairn.fsio.pgcontrol), while a files restore passes unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from cairn.daemon.databases.postgres.recovery import describe_target, recovery_settings
from cairn.daemon.databases.postgres.restoredb import restore_db_records
from cairn.fsio.pgcontrol import NOT_WRITTEN, ControlLast
from cairn.fsio.records import Data, EntryMeta, Failed
from cairn.fsio.writer import TreeWriter
from cairn.store.errors import InvalidArgumentError


def test_the_end_of_the_archive_sets_no_recovery_target() -> None:
    got = recovery_settings("cmd %f %p", target="end", target_timeline="latest")
    assert got == {"restore_command": "cmd %f %p", "recovery_target_action": "promote",
                   "recovery_target_timeline": "latest"}
    assert describe_target(got) == "end"
    assert recovery_settings("cmd %f %p")["recovery_target"] == "immediate"  # the default stays
    with pytest.raises(InvalidArgumentError, match="give no target time or LSN"):
        recovery_settings("cmd %f %p", target_lsn="0/5000000", target="end")


def test_the_daemon_refuses_the_end_with_a_time_or_an_lsn_before_reading_the_set() -> None:
    for time_, lsn in (("2030-01-01 00:00:00+00", ""), ("", "FF/0")):
        with pytest.raises(InvalidArgumentError, match="at most one of --target-time, --target-lsn and --target-end"):
            restore_db_records(None, None, "appdb", time_, lsn, "/s", target_end=True)  # type: ignore[arg-type]


def file(path: bytes, data: bytes) -> list:
    return [EntryMeta(path=path, kind="file", mode=0o600, size=len(data)), Data(data)]


def stream(fail_first: bool, signal: bool = True) -> list:
    recs = [EntryMeta(path=b"global", kind="dir", mode=0o700), *file(b"PG_VERSION", b"15\n")]
    recs += [EntryMeta(path=b"base", kind="file", mode=0o600, size=3), Failed("chunk unreadable")] if fail_first \
        else file(b"base", b"abc")
    recs += file(b"recovery.signal", b"") if signal else []
    return recs + file(b"global/pg_control", b"\1" * 8192)


def write(target: Path, records: list) -> TreeWriter:
    w = TreeWriter(target)
    last = ControlLast(w)
    for rec in records:
        if last.admit(rec):
            w.apply(rec)
    w.finish()
    return w


def test_pg_control_is_left_out_when_a_file_before_it_failed(tmp_path: Path) -> None:
    w = write(tmp_path / "a", stream(fail_first=True))
    assert not (tmp_path / "a/global/pg_control").exists()
    assert w.stats.errors[-1] == NOT_WRITTEN and len(w.stats.errors) == 2
    w = write(tmp_path / "b", stream(fail_first=False))
    assert (tmp_path / "b/global/pg_control").stat().st_size == 8192 and not w.stats.errors
    w = write(tmp_path / "c", stream(fail_first=True, signal=False))  # no recovery.signal: not a restore-db stream
    assert (tmp_path / "c/global/pg_control").exists() and NOT_WRITTEN not in w.stats.errors
