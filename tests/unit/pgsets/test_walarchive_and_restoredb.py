"""WAL continuity and archive health (daemon/databases/postgres/walarchive.py), restore-db checks
(daemon/databases/postgres/restoredb.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from cairn.daemon.databases.postgres.restoredb import check_target, database_of, restore_command
from cairn.daemon.databases.postgres.walarchive import ArchiveHealth, continuity_problems, parse_segment, segment_name
from cairn.daemon.runtime.config import QuiesceConfig, SourceConfig
from cairn.daemon.windows.capture import capture_paths
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.model import BackupSet, SetStats


class FakeWalRepo:
    def __init__(self, names: list[str], histories: dict[str, bytes] | None = None) -> None:
        self.names = sorted(names + list(histories or {}))
        self.histories = histories or {}

    def list_wal(self, namespace: str = "", flat: bool = True) -> list[str]:
        return self.names

    def get_wal(self, name: str, namespace: str = "") -> bytes:
        return self.histories[name]


def db_set(first: str, last: str, set_id: str = "a" * 64, **db: object) -> BackupSet:
    rec = {"name": "appdb", "attachment": "db:appdb", "wal": {"first": first, "last": last},
           "stop_lsn": "0/5000100", "stopped": 1_700_000_000.0,
           "labelfile": base64.b64encode(b"START WAL LOCATION: 0/4000028").decode(), **db}
    return BackupSet(id=set_id, source="app", level="full", requested_level="full", base=None, time_start=0,
                     time_end=0, hostname="h", paths=("/x",), tree="00", stats=SetStats(),
                     extra={"database": rec}, attachments={"db:appdb": {"tree": "00"}})


def seg(tli: int, n: int) -> str:
    return segment_name(tli, n)


def test_segment_names_round_trip() -> None:
    assert seg(1, 5) == "000000010000000000000005"
    assert seg(2, 0x100 + 3) == "000000020000000100000003"
    assert parse_segment("000000020000000100000003") == (2, 0x103)
    assert parse_segment("00000002.history") is None


def test_continuous_archive_has_no_problems() -> None:
    repo = FakeWalRepo([seg(1, n) for n in range(3, 9)])
    assert continuity_problems(repo, [db_set(seg(1, 4), seg(1, 5))]) == []


def test_gap_inside_the_sets_range_is_fatal_and_later_gap_is_reported() -> None:
    names = [seg(1, n) for n in (4, 6, 7, 9)]
    problems = continuity_problems(FakeWalRepo(names), [db_set(seg(1, 4), seg(1, 6))])
    assert [p.message for p in problems] == [
        f"WAL is not continuous on timeline 1: {seg(1, 5)} missing from the archive; set {'a' * 12} cannot be "
        "restored",
        f"WAL is not continuous on timeline 1: {seg(1, 8)} missing from the archive; set {'a' * 12}: "
        "point-in-time recovery past the gap is impossible (restoring to the set's own point still works)",
    ]
    assert problems[0].sets == ("a" * 64,)


def test_missing_last_segment_of_a_set_is_reported() -> None:
    problems = continuity_problems(FakeWalRepo([seg(1, 4)]), [db_set(seg(1, 4), seg(1, 6))])
    assert len(problems) == 1 and f"{seg(1, 5)} .. {seg(1, 6)} (2 segments)" in problems[0].message


def test_later_timeline_is_checked_from_its_switch_point() -> None:
    history = b"1\t0/7000000\tno recovery target specified\n"
    names = [seg(1, n) for n in range(4, 8)] + [seg(2, 7), seg(2, 9)]
    problems = continuity_problems(FakeWalRepo(names, {"00000002.history": history}),
                                   [db_set(seg(1, 4), seg(1, 5))])
    assert [p.object_id for p in problems] == [seg(2, 8)]


def test_sets_without_a_database_are_ignored() -> None:
    s = db_set(seg(1, 4), seg(1, 5))
    plain = BackupSet(**{**s.__dict__, "extra": {}})
    assert continuity_problems(FakeWalRepo([]), [plain]) == []


def test_archive_health_counts_and_newest_segment() -> None:
    h = ArchiveHealth()
    h.stored(seg(1, 3))
    h.stored("00000002.history")
    h.failed(seg(1, 4), "already archived with different content")
    snap = h.snapshot([seg(1, 2), seg(1, 3), "00000002.history"])
    assert (snap.last_segment, snap.pushed, snap.failures, snap.segments) == (seg(1, 3), 2, 1, 2)
    assert snap.last_time > 0 and snap.last_failure.startswith(seg(1, 4))
    older = ArchiveHealth().snapshot([seg(1, 9)])
    assert older.last_segment == seg(1, 9) and older.last_time == 0.0


def test_the_last_segment_is_the_one_stored_last_across_timelines() -> None:
    """A restored copy archived timeline 2, then the original went on with timeline 1: the
    last push is the original's, whatever the names' order."""
    h = ArchiveHealth()
    h.stored(seg(2, 0xBE))
    h.stored(seg(1, 0xD4))
    snap = h.snapshot([seg(2, 0xBE), seg(1, 0xD4)])
    assert snap.last_segment == seg(1, 0xD4) and snap.last_time > 0


def test_restore_command_names_the_socket_and_quotes() -> None:
    assert restore_command("/run/x y/cairnd.sock", "/usr/bin/cairn") == \
        "/usr/bin/cairn --socket '/run/x y/cairnd.sock' wal-fetch %f %p"


def test_database_of_and_targets() -> None:
    s = db_set(seg(1, 4), seg(1, 5))
    assert database_of(s, "appdb")["stop_lsn"] == "0/5000100"
    with pytest.raises(NotFoundError, match="holds no database 'other' \\(it holds database 'appdb' \\(postgres\\)\\)"):
        database_of(s, "other")
    rec = s.extra["database"]
    check_target(rec, "", "0/6000000")
    check_target(rec, "2030-01-01 00:00:00+00", "")
    assert check_target(rec, "2030-01-01 00:00:00", "").startswith("2030-01-01 00:00:00")  # no zone: local
    with pytest.raises(InvalidArgumentError, match="invalid LSN 'x/y'"):
        check_target(rec, "", "x/y")
    with pytest.raises(InvalidArgumentError, match="before the set's consistent point 0/5000100"):
        check_target(rec, "", "0/4000000")
    with pytest.raises(InvalidArgumentError, match="invalid target time 'yesterday'"):
        check_target(rec, "yesterday", "")
    # a zone name as PostgreSQL's log lines print it, or any tz database name
    assert check_target(rec, "2030-01-01 00:00:00.250 UTC", "") == "2030-01-01 00:00:00.250000+00:00"
    assert check_target(rec, "2030-07-01 12:00:00 Europe/Berlin", "") == "2030-07-01 12:00:00+02:00"
    with pytest.raises(InvalidArgumentError, match="unknown time zone 'CEST'"):
        check_target(rec, "2030-07-01 12:00:00 CEST", "")
    with pytest.raises(InvalidArgumentError, match="has an offset and a time zone"):
        check_target(rec, "2030-07-01 12:00:00+02 UTC", "")
    with pytest.raises(InvalidArgumentError, match="before the set's consistent point"):
        check_target(rec, "2020-01-01 00:00:00+00", "")


def test_capture_paths_adds_aux_paths_and_refuses_clashing_basenames() -> None:
    hot = QuiesceConfig(mode="hot")
    src = SourceConfig(name="app", paths=("/srv/content",), aux_paths=("/srv/index",), quiesce=hot)
    assert capture_paths(src) == ("/srv/content", "/srv/index")
    clash = SourceConfig(name="app", paths=("/a/data",), aux_paths=("/b/data",), quiesce=hot)
    with pytest.raises(InvalidArgumentError, match="same basename 'data'"):
        capture_paths(clash)


def test_continuity_is_checked_in_each_clusters_name_space_and_the_flat_one(tmp_path) -> None:
    from cairn.store.repository import Repository

    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    a, b = "111", "222"
    for n in (4, 5, 6, 7):
        repo.put_wal(seg(1, n), b"a%d" % n, a)
    repo.put_wal(seg(1, 4), b"b4", b)
    repo.put_wal(seg(1, 5), b"flat5")  # an older flat entry: what a restore of either cluster reads
    sa = db_set(seg(1, 4), seg(1, 7), set_id="a" * 64, system_identifier=a)
    sb = db_set(seg(1, 4), seg(1, 6), set_id="b" * 64, system_identifier=b)
    problems = continuity_problems(repo, [sa, sb])
    # b lacks segment 6 (a's segment 6 is not b's); a's range is whole
    assert [(p.message, p.sets) for p in problems] == [
        (f"WAL is not continuous on timeline 1: {seg(1, 6)} missing from the archive of system {b}; "
         f"set {'b' * 12} cannot be restored", ("b" * 64,))]
    repo.close()


def test_restore_db_totals_are_the_data_directory_and_tablespaces_not_the_set() -> None:
    from cairn.daemon.databases.postgres.restoredb import restore_db_totals

    rec = {"name": "appdb", "attachment": "db:appdb", "tablespaces": [{"oid": 16400, "attachment": "db:appdb:ts"}]}
    s = BackupSet(id="b" * 64, source="app", level="full", requested_level="full", base=None, time_start=0,
                  time_end=0, hostname="h", paths=("/x",), tree="00",
                  stats=SetStats(files=1000, bytes_total=10**9), extra={"database": rec},
                  attachments={"db:appdb": {"tree": "00", "files": 900, "bytes_total": 40_000_000},
                               "db:appdb:ts": {"tree": "01", "files": 7, "bytes_total": 5_000},
                               "db:other": {"tree": "02", "files": 50, "bytes_total": 9_000_000}})
    assert restore_db_totals(s, "appdb") == (907, 40_005_000)


def test_a_target_time_past_the_newest_segment_of_its_own_cluster_is_refused() -> None:
    from types import SimpleNamespace

    from cairn.daemon.databases.postgres.restoredb import CLOCK_SKEW, check_reachable
    from cairn.store.errors import FailedPreconditionError
    from cairn.store.storage.backend import MemoryBackend

    backend = MemoryBackend()
    repo = SimpleNamespace(backend=backend)
    rec = {"system_identifier": 111}

    def stored(name: str, when: float) -> None:
        backend.put("wal", name, b"x")
        backend.times[("wal", name)] = when

    stored(f"111@{seg(1, 4)}", 1000.0)
    stored(f"111@{seg(1, 3)}.partial", 1500.0)  # a partial segment counts too
    stored(f"222@{seg(1, 9)}", 9000.0)  # another cluster's segment is not this one's archive
    stored(f"111@{'0' * 7}2.history", 9000.0)  # nor is a history file a segment
    at = lambda t: datetime.fromtimestamp(t, UTC).isoformat(sep=" ")  # noqa: E731
    check_reachable(repo, rec, "appdb", at(1500.0 + CLOCK_SKEW))  # within the clock skew allowed
    with pytest.raises(FailedPreconditionError, match=rf"later than the newest WAL archived for database 'appdb' "
                                                      rf"\({seg(1, 3)}.partial, stored "):
        check_reachable(repo, rec, "appdb", at(1501.0 + CLOCK_SKEW))
    stored(seg(1, 5), 5000.0)  # an older archive's flat name space is read as well
    check_reachable(repo, rec, "appdb", at(4000.0))
    check_reachable(SimpleNamespace(backend=MemoryBackend()), rec, "appdb", at(9e9))  # no WAL: left to recovery
