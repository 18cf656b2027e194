"""The order of a consistent capture (daemon/windows/capture.py), with a stand-in for the PostgreSQL
connection and a real repository, real hooks and a real window: where the hint is made, where
pg_backup_start and pg_backup_stop run, the fresh hint before the hot content walk, and the
WAL wait before commit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from cairn.daemon.databases.postgres import walarchive
from cairn.daemon.databases.postgres.connection import BackupStart, BackupStop, PgInfo
from cairn.daemon.runtime.config import DatabaseConfig, QuiesceConfig, SourceConfig
from cairn.daemon.windows import capture
from cairn.errors import DeadlineError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from cairn.store.model import BackupRequest, ChangeHint
from cairn.store.repository import Repository

SEG1, SEG2 = "000000010000000000000001", "000000010000000000000002"


class FakeBackup:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def __enter__(self) -> FakeBackup:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, label: str, fast: bool = True) -> BackupStart:
        self.conn.events.append(("start", time.time()))
        if self.conn.on_start is not None:
            self.conn.on_start()
        return BackupStart("0/1000028", 1, SEG1, time.time())

    def stop(self, timeout: float = 600.0, wait_for_archive: bool = True) -> BackupStop:
        self.conn.events.append(("stop", wait_for_archive))
        return BackupStop("0/2000100", b"START WAL LOCATION: 0/1000028\n", b"", SEG2, time.time())


class FakeConn:
    def __init__(self, on_start=None) -> None:
        self.events: list[tuple] = []
        self.on_start = on_start
        self.closed = False

    def __enter__(self) -> FakeConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def info(self) -> PgInfo:
        return PgInfo("15.0", 150000, 42, 1, "/pg", (), "on", "cairn wal-push %p", 16 << 20)

    def base_backup(self) -> FakeBackup:
        return FakeBackup(self)

    def create_restore_point(self, name: str) -> str:
        self.events.append(("point", name))
        return "0/2000200"

    def switch_wal(self) -> str:
        return "0/2000300"

    def cancel(self) -> None:
        pass

    def query_one(self, sql: str, *args: object) -> tuple:
        # pg_stat_archiver of a primary whose archiver has never failed
        assert "pg_stat_archiver" in sql
        return ("000000010000000000000002", "", 0.0, 0, "", 0.0, False)


class Planner:
    """Records when it was asked; `plan` gives hint1, `refresh` hint2."""

    def __init__(self, repo: Repository, hint1: ChangeHint | None, hint2: ChangeHint | None, log: Path) -> None:
        self.repo, self.hint1, self.hint2, self.log = repo, hint1, hint2, log
        self.asked: list[tuple[str, list[str]]] = []

    def plan(self) -> capture.SetPlan:
        self.asked.append(("plan", self.log.read_text().split() if self.log.exists() else []))
        level, base, note = self.repo.choose_base("app", "incremental")
        return capture.SetPlan(level, base, note, self.hint1 if base is not None else None)

    def refresh(self) -> ChangeHint | None:
        self.asked.append(("refresh", []))
        return self.hint2


def setup(tmp_path: Path, mode: str, freeze_log: Path) -> tuple[Repository, SourceConfig, DatabaseConfig]:
    for d in ("data/a", "data/b", "pg"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "data/a/one.txt").write_text("1")
    (tmp_path / "data/b/two.txt").write_text("2")
    (tmp_path / "pg/PG_VERSION").write_text("15\n")
    q = QuiesceConfig(mode, freeze=(("sh", "-c", f'echo frozen >> "{freeze_log}"'),),
                      thaw=(("sh", "-c", f'echo thawed >> "{freeze_log}"'),), timeout=10.0)
    src = SourceConfig("app", (str(tmp_path / "data"),), database="db", databases=("db",), quiesce=q)
    db = DatabaseConfig("db", "host=/nowhere", str(tmp_path / "pg"), wal_timeout=1.0)
    return Repository.init_local(str(tmp_path / "repo")), src, db


def take(repo, src, db, tmp_path, planner, conn) -> object:
    req = BackupRequest(source="app", paths=src.paths, level="incremental")
    return capture.capture_set(repo, str(tmp_path / "state"), src, [db], req, None, threading.Event(),
                               planner=planner, connect=lambda cfg: conn)


def test_cold_the_hint_follows_every_freeze_and_the_checkpoint_precedes_it(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    repo, src, db = setup(tmp_path, "cold", log)
    repo.put_wal(SEG1, b"one")
    repo.put_wal(SEG2, b"two")
    planner = Planner(repo, None, None, log)
    conn = FakeConn(on_start=lambda: conn.events.append(("hooks at start", log.read_text() if log.exists() else "")))
    s = take(repo, src, db, tmp_path, planner, conn)
    # pg_backup_start before any freeze hook; the plan after the freeze; stop without waiting
    assert conn.events[1] == ("hooks at start", "")
    assert planner.asked == [("plan", ["frozen"])]
    assert ("stop", False) in conn.events
    assert s.extra["databases"][0]["wal"] == {"first": SEG1, "last": SEG2}
    assert "db:db" in s.attachments


def test_a_set_is_not_committed_before_its_wal_is_archived(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    repo, src, db = setup(tmp_path, "cold", log)
    repo.put_wal(SEG1, b"one")  # SEG2, which holds the stop LSN, never arrives
    with pytest.raises(DeadlineError) as e:
        take(repo, src, db, tmp_path, Planner(repo, None, None, log), FakeConn())
    assert f"WAL segment {SEG2} of database 'db' did not reach the archive within 1s" in e.value.message
    assert repo.list_sets() == []
    assert log.read_text().split() == ["frozen", "thawed"]  # thawed before the wait failed


def test_hot_content_walk_uses_a_fresh_hint(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    repo, src, db = setup(tmp_path, "hot", log)
    repo.put_wal(SEG1, b"one")
    repo.put_wal(SEG2, b"two")
    first = take(repo, src, db, tmp_path, Planner(repo, None, None, log), FakeConn())
    a, b = tmp_path / "data/a", tmp_path / "data/b"
    (a / "one.txt").write_text("changed before the set")

    def written_while_copying() -> None:  # a file the rows will name, in a directory hint1 misses
        (b / "new.txt").write_text("written while the database was copied")

    planner = Planner(repo, ChangeHint(paths=frozenset({str(a / "one.txt")})),
                      ChangeHint(paths=frozenset({str(a / "one.txt"), str(b / "new.txt")})), log)
    s = take(repo, src, db, tmp_path, planner, FakeConn(on_start=written_while_copying))
    assert s.base == first.id and [k for k, _ in planner.asked] == ["plan", "refresh"]
    names = {e.path for e in repo.list_tree(s, "", recursive=True)}
    assert "b/new.txt" in names and "a/one.txt" in names


def test_capture_first_keeps_its_place_and_is_taken_before_the_database(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    repo, src, db = setup(tmp_path, "hot", log)
    idx = tmp_path / "data/index"
    idx.mkdir()
    (idx / "snapshot.txt").write_text("before")
    src = SourceConfig("app", src.paths, database="db", databases=("db",), quiesce=src.quiesce,
                       capture_first=(str(idx),))
    repo.put_wal(SEG1, b"one")
    repo.put_wal(SEG2, b"two")

    def index_moves_on() -> None:  # the index changes once the database is being copied
        (idx / "snapshot.txt").write_text("after")

    s = take(repo, src, db, tmp_path, Planner(repo, None, None, log), FakeConn(on_start=index_moves_on))
    out = tmp_path / "restored"
    repo.restore(s, str(out))
    assert (out / "index/snapshot.txt").read_text() == "before"
    assert (out / "a/one.txt").read_text() == "1"


def long_header(sysid: int) -> bytes:
    """The start of a segment: XLogLongPageHeaderData with XLP_LONG_HEADER, xlp_sysid, 16 MiB, 8 kB."""
    return ((0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + bytes(20) + sysid.to_bytes(8, "little")
            + (16 << 20).to_bytes(4, "little") + (8192).to_bytes(4, "little") + bytes(24))


def test_a_segment_of_another_server_under_the_same_name_fails_the_set(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    repo, src, db = setup(tmp_path, "cold", log)
    header = long_header(7)  # xlp_sysid 7; the server is 42; flat entries of an older archive
    repo.put_wal(SEG1, header)
    repo.put_wal(SEG2, header)
    with pytest.raises(FailedPreconditionError) as e:
        take(repo, src, db, tmp_path, Planner(repo, None, None, log), FakeConn())
    assert (f"WAL segment {SEG2} in the repository belongs to another server (system identifier 7, "
            "database 'db' is 42)") in e.value.message
    assert repo.list_sets() == []
    assert walarchive.wal_system_identifier(long_header(42)) == 42


def test_the_servers_own_name_space_wins_over_another_servers_flat_segments(tmp_path: Path) -> None:
    # an older flat archive holds server 7's segments under the names server 42 uses now; with
    # 42's WAL in its own name space the set is committed and a restore reads 42's segments
    log = tmp_path / "hooks.log"
    repo, src, db = setup(tmp_path, "cold", log)
    for seg in (SEG1, SEG2):
        repo.put_wal(seg, long_header(7))
        repo.put_wal(seg, long_header(42) + b"own", "42")
    s = take(repo, src, db, tmp_path, Planner(repo, None, None, log), FakeConn())
    assert [x.id for x in repo.list_sets()] == [s.id]
    assert walarchive.fetch_wal(repo, SEG2, "42") == long_header(42) + b"own"
    # a name the server's name space lacks is read from the flat name space, unless another server wrote it
    repo.put_wal("000000010000000000000009", long_header(7))
    repo.put_wal("00000002.history", b"1\t0/9000000\tno recovery target specified\n")
    with pytest.raises(NotFoundError, match="belongs to system 7"):
        walarchive.fetch_wal(repo, "000000010000000000000009", "42")
    assert walarchive.fetch_wal(repo, "00000002.history", "42").startswith(b"1\t")
    assert walarchive.push_namespace(SEG1, long_header(42)) == "42"
    assert walarchive.push_namespace("00000002.history", b"1\t0/9000000\t\n", "42") == "42"
    assert walarchive.push_namespace("00000002.history", b"1\t0/9000000\t\n") == ""
    with pytest.raises(InvalidArgumentError, match="system identifier 42, not 7"):
        walarchive.push_namespace(SEG1, long_header(42), "7")
