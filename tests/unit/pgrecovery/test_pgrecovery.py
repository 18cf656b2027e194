"""Recovery preparation without a server: write_recovery on a directory, recovery_stream on records."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cairn.daemon.databases.postgres.recovery import (
    int_to_lsn,
    is_wal_file_name,
    lsn_to_int,
    merge_auto_conf,
    recovery_stream,
    wal_segment_name,
    write_recovery,
)
from cairn.errors import InvalidArgumentError
from cairn.fsio.records import Data, EntryMeta, Hole, LaneData, LaneEnd
from cairn.fsio.writer import ParallelTreeWriter, TreeWriter


def _fake_datadir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "pg_wal" / "archive_status").mkdir(parents=True)
    (d / "pg_wal" / "000000010000000000000003").write_bytes(b"x")
    (d / "pg_wal" / "archive_status" / "000000010000000000000003.done").write_bytes(b"")
    (d / "PG_VERSION").write_text("15\n")
    (d / "postmaster.pid").write_text("123\n")
    (d / "postgresql.auto.conf").write_text("work_mem = '8MB'\nrecovery_target_time = 'old'\n")
    return d


LABEL = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nLABEL: x\n"


def test_write_recovery_lays_down_label_signal_settings_and_empty_wal(tmp_path: Path) -> None:
    d = _fake_datadir(tmp_path)
    spcmap = b"16385 /old/spc\n16386 /keep/spc\n"
    plan = write_recovery(str(d), LABEL, spcmap, "cp /a/%f %p", target_lsn="0/3000100",
                          owner=(os.getuid(), os.getgid()), tablespace_remap={16385: "/new/spc"})
    assert (d / "backup_label").read_bytes() == LABEL
    assert (d / "tablespace_map").read_bytes() == b"16385 /new/spc\n16386 /keep/spc\n"
    assert (d / "recovery.signal").read_bytes() == b""
    assert not (d / "postmaster.pid").exists()
    assert os.listdir(d / "pg_wal") == ["archive_status"] and os.listdir(d / "pg_wal" / "archive_status") == []
    conf = (d / "postgresql.auto.conf").read_text()
    assert "work_mem = '8MB'" in conf and "'old'" not in conf
    assert "restore_command = 'cp /a/%f %p'" in conf
    assert "recovery_target_lsn = '0/3000100'" in conf and "recovery_target_action = 'promote'" in conf
    assert (d.stat().st_mode & 0o777) == 0o700
    assert plan.target == "lsn 0/3000100"


def test_write_recovery_defaults_to_immediate_and_replaces_a_pg_wal_symlink(tmp_path: Path) -> None:
    d = _fake_datadir(tmp_path)
    live_wal = tmp_path / "live-wal"
    live_wal.mkdir()
    (live_wal / "keep").write_text("live")
    shutil.rmtree(d / "pg_wal")
    (d / "pg_wal").symlink_to(live_wal)
    write_recovery(str(d), LABEL, b"", "cp '/x y/%f' %p")
    assert not (d / "pg_wal").is_symlink() and (d / "pg_wal" / "archive_status").is_dir()
    assert (live_wal / "keep").read_text() == "live"
    assert not (d / "tablespace_map").exists()
    conf = (d / "postgresql.auto.conf").read_text()
    assert "recovery_target = 'immediate'" in conf and "restore_command = 'cp ''/x y/%f'' %p'" in conf


def test_write_recovery_rejects_bad_input(tmp_path: Path) -> None:
    d = _fake_datadir(tmp_path)
    with pytest.raises(InvalidArgumentError, match="at most one"):
        write_recovery(str(d), LABEL, b"", "cp", target_time="2024-01-01 00:00:00+00", target_lsn="0/1")
    with pytest.raises(InvalidArgumentError, match="invalid target LSN 'zz'"):
        write_recovery(str(d), LABEL, b"", "cp", target_lsn="zz")
    with pytest.raises(InvalidArgumentError, match="not a PostgreSQL data directory"):
        write_recovery(str(tmp_path), LABEL, b"", "cp")
    with pytest.raises(InvalidArgumentError, match="not a backup label"):
        write_recovery(str(d), b"garbage", b"", "cp")




def _stream(pg_wal_symlink: bool = False) -> list:
    """A restore stream of a tiny data directory, rooted at 'main' inside a multi-path set."""
    recs = [
        EntryMeta(path=b"content", kind="dir", mode=0o755),
        EntryMeta(path=b"content/a.txt", kind="file", mode=0o644, size=1), Data(b"a"),
        EntryMeta(path=b"main", kind="dir", mode=0o700, uid=101, gid=104),
        EntryMeta(path=b"main/PG_VERSION", kind="file", mode=0o600, uid=101, gid=104, size=3), Data(b"15\n"),
        EntryMeta(path=b"main/postmaster.pid", kind="file", mode=0o600, uid=101, gid=104, size=4), Data(b"123\n"),
        EntryMeta(path=b"main/backup_label", kind="file", mode=0o600, size=3), Data(b"old"),
        EntryMeta(path=b"main/postgresql.auto.conf", kind="file", mode=0o600, uid=101, gid=104, size=30),
        Data(b"work_mem = '8MB'\n"), Hole(2), Data(b"\nrestore_command = 'x'\n"),
        EntryMeta(path=b"main/base", kind="dir", mode=0o700, uid=101, gid=104),
        EntryMeta(path=b"main/base/1", kind="file", mode=0o600, uid=101, gid=104, size=4), Data(b"rel1"),
        EntryMeta(path=b"main/base/1b", kind="hardlink", link_to=b"main/base/1"),
    ]
    if pg_wal_symlink:  # made by root (moved to another disk by hand), not by the database's user
        recs.append(EntryMeta(path=b"main/pg_wal", kind="symlink", target=b"/live/wal", uid=0, gid=0))
    else:
        recs += [EntryMeta(path=b"main/pg_wal", kind="dir", mode=0o700, uid=101, gid=104),
                 EntryMeta(path=b"main/pg_wal/000000010000000000000001", kind="file", size=2), Data(b"xx")]
    return recs


def test_recovery_stream_reroots_drops_merges_and_adds(tmp_path: Path) -> None:
    out = list(recovery_stream(_stream(), LABEL, b"16385 /spc\n", "cairn wal-fetch %f %p",
                               target_time="2025-01-02 03:04:05+00", root=b"main"))
    metas = [r for r in out if isinstance(r, EntryMeta)]
    paths = [m.path for m in metas]
    assert paths == [b"PG_VERSION", b"postgresql.auto.conf", b"base", b"base/1", b"base/1b", b"pg_wal",
                     b"pg_wal/archive_status", b"backup_label", b"tablespace_map", b"recovery.signal"]
    assert metas[4].link_to == b"base/1"
    added = {m.path: m for m in metas[-3:]}
    assert all((m.uid, m.gid, m.mode) == (101, 104, 0o600) for m in added.values())
    # write it with the client's writer and look at the result
    target = tmp_path / "restored"
    w = TreeWriter(str(target))
    for rec in out:
        w.apply(rec)
    w.finish()
    assert (target / "backup_label").read_bytes() == LABEL
    assert (target / "tablespace_map").read_bytes() == b"16385 /spc\n"
    assert (target / "recovery.signal").read_bytes() == b""
    assert not (target / "postmaster.pid").exists()
    assert os.listdir(target / "pg_wal") == ["archive_status"]
    conf = (target / "postgresql.auto.conf").read_bytes()
    assert conf.startswith(b"work_mem = '8MB'\n\0\0\n# recovery settings")
    assert b"'x'" not in conf and b"restore_command = 'cairn wal-fetch %f %p'\n" in conf
    assert b"recovery_target_time = '2025-01-02 03:04:05+00'\n" in conf
    assert b"recovery_target_action = 'promote'\n" in conf
    assert os.stat(target / "postgresql.auto.conf").st_size == len(conf)


def test_recovery_stream_replaces_a_pg_wal_symlink_and_creates_missing_auto_conf() -> None:
    recs = _stream(pg_wal_symlink=True)
    i = next(i for i, r in enumerate(recs) if isinstance(r, EntryMeta) and r.path == b"main/postgresql.auto.conf")
    del recs[i:i + 4]  # the auto.conf entry and its three data records
    out = list(recovery_stream(recs, LABEL, b"", "cp /w/%f %p", root=b"main"))
    metas = [r for r in out if isinstance(r, EntryMeta)]
    by_path = {m.path: m for m in metas}
    assert by_path[b"pg_wal"].kind == "dir" and b"tablespace_map" not in by_path
    # the directory belongs to the database's user (PostgreSQL writes there), not to the link's owner
    assert (by_path[b"pg_wal"].uid, by_path[b"pg_wal"].gid, by_path[b"pg_wal"].mode) == (101, 104, 0o700)
    assert [m.path for m in metas].count(b"postgresql.auto.conf") == 1
    conf = out[out.index(by_path[b"postgresql.auto.conf"]) + 1]
    assert isinstance(conf, Data) and b"recovery_target = 'immediate'" in conf.data
    assert (by_path[b"postgresql.auto.conf"].uid, by_path[b"postgresql.auto.conf"].gid) == (101, 104)


def test_recovery_stream_passes_lanes_through_and_drops_those_of_entries_it_leaves_out(tmp_path: Path) -> None:
    """Lanes (large files fed between other entries by the daemon's own writer): a kept file's
    lane is re-rooted, the lane of a WAL segment left out goes with it, and a laned
    postgresql.auto.conf is merged and written at the end, never while another file is open."""
    recs = [
        EntryMeta(path=b"other", kind="file", size=2, lane=True),
        EntryMeta(path=b"main", kind="dir", mode=0o700, uid=101, gid=104),
        EntryMeta(path=b"main/PG_VERSION", kind="file", mode=0o600, uid=101, gid=104, size=3), Data(b"15\n"),
        EntryMeta(path=b"main/postgresql.auto.conf", kind="file", mode=0o600, uid=101, gid=104, size=17,
                  lane=True),
        EntryMeta(path=b"main/base", kind="dir", mode=0o700, uid=101, gid=104),
        EntryMeta(path=b"main/base/big", kind="file", mode=0o600, uid=101, gid=104, size=8, lane=True),
        LaneData(b"main/base/big", b"abcd"), LaneData(b"other", b"zz"), LaneEnd(b"other"),
        EntryMeta(path=b"main/pg_wal", kind="dir", mode=0o700, uid=101, gid=104),
        EntryMeta(path=b"main/pg_wal/000000010000000000000001", kind="file", size=4, lane=True),
        EntryMeta(path=b"main/base/small", kind="file", mode=0o600, size=1),
        LaneData(b"main/pg_wal/000000010000000000000001", b"wal!"),
        LaneData(b"main/postgresql.auto.conf", b"work_mem = '8MB'\n"), Data(b"s"),
        LaneData(b"main/base/big", b"efgh"), LaneEnd(b"main/postgresql.auto.conf"),
        LaneEnd(b"main/pg_wal/000000010000000000000001"), LaneEnd(b"main/base/big"),
    ]
    out = list(recovery_stream(recs, LABEL, b"", "cp /w/%f %p", root=b"main"))
    lanes = [r for r in out if isinstance(r, (LaneData, LaneEnd))]
    assert {r.path for r in lanes} == {b"base/big"}
    conf = [i for i, r in enumerate(out) if isinstance(r, EntryMeta) and r.path == b"postgresql.auto.conf"]
    assert len(conf) == 1 and not out[conf[0]].lane and isinstance(out[conf[0] + 1], Data)
    assert conf[0] > max(out.index(r) for r in lanes)  # after the last lane record
    target = tmp_path / "restored"
    w = ParallelTreeWriter(str(target))
    for rec in out:
        w.apply(rec)
    st = w.finish()
    assert not st.errors
    assert (target / "base" / "big").read_bytes() == b"abcdefgh" and (target / "base" / "small").read_bytes() == b"s"
    assert (target / "postgresql.auto.conf").read_bytes().startswith(b"work_mem = '8MB'\n# recovery settings")
    assert os.listdir(target / "pg_wal") == ["archive_status"] and not (target / "other").exists()


def test_recovery_stream_validates_before_reading() -> None:
    def boom():
        raise AssertionError("stream read")
        yield
    with pytest.raises(InvalidArgumentError, match="at most one"):
        recovery_stream(boom(), LABEL, b"", "cp", target_time="2025-01-01 00:00+00", target_lsn="0/1")
    with pytest.raises(InvalidArgumentError, match="not a backup label"):
        recovery_stream(boom(), b"nope", b"", "cp")


def test_merge_auto_conf_keeps_other_settings() -> None:
    out = merge_auto_conf(b"a = 1\nRestore_Command = 'old'\nb = 2", {"restore_command": "new"})
    assert out == b"a = 1\nb = 2\n# recovery settings written by cairn restore-db\nrestore_command = 'new'\n"


def test_lsn_and_wal_names() -> None:
    assert lsn_to_int("1/2") == (1 << 32) | 2 and int_to_lsn((1 << 32) | 0xABC) == "1/ABC"
    assert wal_segment_name(1, "0/3000028") == "000000010000000000000003"
    assert wal_segment_name(2, "1/FF000000") == "0000000200000001000000FF"
    assert is_wal_file_name("000000010000000000000003")
    assert is_wal_file_name("00000002.history")
    assert is_wal_file_name("000000010000000000000003.00000028.backup")
    assert not is_wal_file_name("../etc/passwd") and not is_wal_file_name("00000001000000000000000")
    with pytest.raises(InvalidArgumentError):
        lsn_to_int("0-1")
