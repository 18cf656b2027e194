"""restore-db's checks and verify's WAL-gap report, without a server: the recovery timeline
(daemon/databases/postgres/recovery.py), a target time without a zone and the databases a set
holds (restoredb.py), a WAL gap reported per set (walarchive.py), and on the client's side
(client/restoring.py) the places of `restore --databases` and the timeline restore-db sets."""

from __future__ import annotations

import base64
import time
from datetime import datetime

import pytest
from cairn.daemon.databases.postgres.recovery import check_timeline, recovery_settings
from cairn.daemon.databases.postgres.restoredb import check_target, database_of, earlier_set
from cairn.daemon.databases.postgres.walarchive import continuity_problems, segment_name
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.model import BackupSet, SetStats


class FakeWalRepo:
    def __init__(self, names: list[str]) -> None:
        self.names = sorted(names)

    def list_wal(self, namespace: str = "", flat: bool = True) -> list[str]:
        return self.names

    def get_wal(self, name: str, namespace: str = "") -> bytes:
        raise KeyError(name)


def seg(n: int, tli: int = 1) -> str:
    return segment_name(tli, n)


def a_set(set_id: str, first: int, last: int, stopped: float = 1_700_000_000.0,
          dumps: tuple[str, ...] = ()) -> BackupSet:
    rec = {"name": "appdb", "kind": "postgres", "attachment": "db:appdb",
           "wal": {"first": seg(first), "last": seg(last)}, "stop_lsn": f"0/{last:X}000100", "stopped": stopped,
           "labelfile": base64.b64encode(b"START WAL LOCATION: 0/4000028").decode()}
    recs = [rec] + [{"name": d, "kind": "command", "attachment": f"db:{d}", "layout": "stream"} for d in dumps]
    return BackupSet(id=set_id, source="app", level="full", requested_level="full", base=None, time_start=0,
                     time_end=0, hostname="h", paths=("/x",), tree="00", stats=SetStats(),
                     extra={"databases": recs}, attachments={f"db:{r['name']}": {"tree": "00"} for r in recs})


def test_recovery_follows_the_sets_own_timeline_unless_told() -> None:
    assert recovery_settings("cmd %p")["recovery_target_timeline"] == "current"
    assert recovery_settings("cmd %p", target_timeline="latest")["recovery_target_timeline"] == "latest"
    assert recovery_settings("cmd %p", target_timeline="3")["recovery_target_timeline"] == "3"
    assert check_timeline(" Latest ") == "latest" and check_timeline("007") == "7"
    for bad in ("0", "-1", "two", "0x2", "", "99999999999"):
        with pytest.raises(InvalidArgumentError, match="invalid target timeline"):
            check_timeline(bad)


def test_a_target_time_without_a_zone_is_local_time_and_checked() -> None:
    stopped = time.time()
    rec = a_set("a" * 64, 4, 5, stopped=stopped).extra["databases"][0]
    before = datetime.fromtimestamp(stopped - 3600).strftime("%Y-%m-%d %H:%M:%S")  # local, no zone
    with pytest.raises(InvalidArgumentError, match="before the set's consistent point"):
        check_target(rec, before, "")
    after = datetime.fromtimestamp(stopped + 3600)
    written = check_target(rec, after.strftime("%Y-%m-%d %H:%M:%S"), "")
    # written with the local zone's offset: the restored server reads the same instant
    assert datetime.fromisoformat(written).tzinfo is not None
    assert abs(datetime.fromisoformat(written).timestamp() - int(after.timestamp())) < 1
    assert check_target(rec, "", "") == ""


def test_a_target_before_the_set_names_the_newest_set_consistent_before_it() -> None:
    """At 3 a.m. the operator takes the newest set and a time before it: the refusal's hint names
    the set to take instead, the newest of the same cluster consistent before the target (by time
    or by LSN), never another cluster's or one after it; or says there is none."""
    import dataclasses

    t0 = 1_700_000_000.0
    first, second, newest = (a_set(c * 64, n, n + 1, stopped=t0 + 100 * n) for c, n in (("a", 4), ("b", 6), ("c", 8)))
    other = a_set("d" * 64, 7, 7, stopped=t0 + 700)
    other_rec = dict(other.extra["databases"][0], system_identifier="7000000000000000001")
    other_cluster = dataclasses.replace(other, extra={"databases": [other_rec]})

    class Sets:
        def list_sets(self) -> list[BackupSet]:
            return [newest, other_cluster, first, second]

    rec = newest.extra["databases"][0]

    def earlier(when: float | None, lsn: int | None) -> str:
        return earlier_set(Sets(), newest, rec, "appdb", when, lsn)  # type: ignore[arg-type]

    between = datetime.fromtimestamp(t0 + 750).astimezone().isoformat(sep=" ")
    with pytest.raises(InvalidArgumentError) as refused:
        check_target(rec, between, "", earlier)
    assert "choose a set taken before the target" in refused.value.message
    assert refused.value.hint.startswith("set 'bbbbbbbb' (consistent at ")
    with pytest.raises(InvalidArgumentError) as refused:
        check_target(rec, "", "0/5000100", earlier)  # first's stop LSN: 0/5000100
    assert refused.value.hint.startswith("set 'aaaaaaaa' (consistent at 0/5000100)")
    too_early = datetime.fromtimestamp(t0).astimezone().isoformat(sep=" ")
    with pytest.raises(InvalidArgumentError) as refused:
        check_target(rec, too_early, "", earlier)
    assert refused.value.hint == "no earlier set holds a base backup of database 'appdb' that reaches the target"


def test_an_unknown_database_names_every_database_with_its_kind() -> None:
    s = a_set("a" * 64, 4, 5, dumps=("shop",))
    with pytest.raises(NotFoundError, match=r"holds no database 'x' \(it holds database 'appdb' \(postgres\), "
                                            r"'shop' \(command\)\)"):
        database_of(s, "x")
    with pytest.raises(InvalidArgumentError, match="is a dump"):
        database_of(s, "shop")


def test_a_gap_names_the_set_it_breaks_and_the_one_that_only_loses_pitr() -> None:
    older, newer = a_set("a" * 64, 4, 5), a_set("b" * 64, 7, 9)
    names = [seg(n) for n in (4, 5, 6, 7, 9, 10)]  # 8 is missing: inside newer's range, after older's
    problems = continuity_problems(FakeWalRepo(names), [older, newer])
    assert [(p.object_id, p.sets) for p in problems] == [(seg(8), ("b" * 64,)), (seg(8), ("a" * 64,))]
    assert problems[0].message.endswith(f"set {'b' * 12} cannot be restored")
    assert f"set {'a' * 12}: point-in-time recovery past the gap is impossible" in problems[1].message
    assert "cannot be restored" not in problems[1].message


def test_database_places_are_checked_against_each_other_and_the_target(tmp_path) -> None:
    from cairn.client.restoring import database_targets
    from cairn.errors import InvalidArgumentError as ClientInvalid

    target = str(tmp_path / "app")
    assert database_targets(target, ["a", "b"], None) == {"a": f"{target}-db-a", "b": f"{target}-db-b"}
    for places, says in (([f"a={target}"], "is the files target"),
                         ([f"a={tmp_path}/x", f"b={tmp_path}/x"], "is the place of database 'a'"),
                         ([f"a={tmp_path}/x", f"b={tmp_path}/x/y"], "lies inside the place of database 'a'"),
                         ([f"a={tmp_path}"], "holds the files target"),
                         (["shop=/elsewhere"], r"a dump \(kind command\)")):
        with pytest.raises(ClientInvalid, match=says):
            database_targets(target, ["a", "b"], places, {"shop": "command"})
    assert list(tmp_path.iterdir()) == []


def test_the_timeline_asked_for_is_checked_by_the_client(tmp_path) -> None:
    from cairn.client.restoring import check_timeline as client_check

    assert client_check("latest") == "latest" and client_check(" Current ") == "current"
    assert client_check("2") == "2"
    with pytest.raises(Exception, match="invalid --target-timeline 'x'"):
        client_check("x")


def test_without_pg_waldump_only_the_end_of_the_newest_segment_bounds_a_target(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cairn.daemon.databases.postgres import walend
    from cairn.daemon.databases.postgres.restoredb import check_archive_reaches
    from cairn.store.errors import FailedPreconditionError

    monkeypatch.setattr(walend, "find_waldump", lambda major: None)
    rec = dict(a_set("a" * 64, 4, 5).extra["databases"][0], server_version_num=150000)
    repo = FakeWalRepo([seg(4), seg(5), seg(6), seg(7), seg(9), seg(8, tli=2), seg(7) + ".partial"])
    end = walend.read_end(repo, rec)
    # the run from the set ends at 7 (8 is missing on timeline 1; 9 lies past the gap)
    assert end is not None and (end.segment, end.end_lsn, end.last_lsn, end.last_xact) == (seg(7), 8 << 24,
                                                                                          None, None)
    check_archive_reaches(repo, rec, "appdb", "", "0/7FFFFFF")
    with pytest.raises(FailedPreconditionError, match=r"unable to restore database 'appdb' to LSN 0/8000000: the "
                                                      r"archived WAL of timeline 1 ends at 0/8000000 \(segment "
                                                      rf"{seg(7)}\); the newest reachable target LSN is before"):
        check_archive_reaches(repo, rec, "appdb", "", "0/8000000")
    check_archive_reaches(repo, rec, "appdb", "2999-01-01 00:00:00 UTC", "")  # a time: not known, not refused


def test_a_pg_waldump_that_reads_no_record_teaches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from cairn.daemon.databases.postgres import walend
    from cairn.daemon.databases.postgres.restoredb import check_archive_reaches

    class Repo(FakeWalRepo):
        def get_wal_entry(self, name: str, namespace: str = "") -> tuple[str, bytes]:
            return namespace, b"\0" * 8192

    monkeypatch.setattr(walend, "find_waldump", lambda major: "/bin/true")  # runs, prints no record
    rec = dict(a_set("a" * 64, 4, 5).extra["databases"][0], server_version_num=150000)
    repo = Repo([seg(4), seg(5)])
    end = walend.read_end(repo, rec)
    assert end is not None and (end.last_lsn, end.last_xact, end.whole) == (None, None, False)
    check_archive_reaches(repo, rec, "appdb", "2999-01-01 00:00:00 UTC", "")  # not taken for "no commit after"


def test_the_earlier_set_named_for_a_target_is_on_the_sets_own_timeline() -> None:
    from types import SimpleNamespace

    from cairn.daemon.databases.postgres.restoredb import earlier_set

    old = a_set("1" * 64, 2, 2, stopped=1000.0)
    other = a_set("2" * 64, 3, 3, stopped=2000.0)  # newer, but a copy's timeline 2
    other.extra["databases"][0]["wal"] = {"first": seg(3, tli=2), "last": seg(3, tli=2)}
    late = a_set("3" * 64, 4, 5, stopped=3000.0)
    repo = SimpleNamespace(list_sets=lambda: [old, other, late])
    rec = late.extra["databases"][0]
    assert earlier_set(repo, late, rec, "appdb", 2500.0, None).startswith(  # type: ignore[arg-type]
        "set '11111111' (consistent at ")
    assert earlier_set(repo, late, rec, "appdb", 500.0, None) == (  # type: ignore[arg-type]
        "no earlier set holds a base backup of database 'appdb' that reaches the target")
