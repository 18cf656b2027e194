"""The archiver watch (daemon/databases/postgres/archwatch.py): since when WAL waits, whether an
archive_command is Cairn's, and a sampler that logs a server it cannot ask once, not per sample."""

from __future__ import annotations

import logging
from dataclasses import replace

from cairn.daemon.databases.postgres.archwatch import (
    ArchiverSampler,
    Listening,
    PendingClock,
    PendingClocks,
    calls_cairn,
    elsewhere,
    judge,
    problems,
)
from cairn.daemon.databases.postgres.walarchive import DatabaseArchive
from cairn.daemon.runtime.config import DatabaseConfig


def seg(n: int, tli: int = 1) -> str:
    return f"{tli:08X}{0:08X}{n:08X}"


def test_a_busy_server_whose_archiver_keeps_up_shows_no_long_wait() -> None:
    clock = PendingClock()
    # each observation finds one finished segment in flight, a new one each time: the one before
    # the segment being written, which the previous observation saw being written
    for t, n in enumerate(range(10, 20)):
        assert clock.observe(seg(n), 1, 100.0 + t) == 100.0 + t


def test_a_stuck_archiver_keeps_the_time_its_oldest_segment_was_seen_finished() -> None:
    clock = PendingClock()
    assert clock.observe(seg(5), 0, 10.0) == 0.0
    assert clock.observe(seg(6), 1, 20.0) == 20.0  # 5 waits, first seen finished now
    assert clock.observe(seg(8), 3, 30.0) == 20.0  # still 5 waits
    assert clock.observe(seg(9), 4, 40.0) == 20.0
    assert clock.observe(seg(9), 2, 50.0) == 30.0  # 5 and 6 archived: 7 was first seen finished at 30
    assert clock.observe(seg(9), 0, 60.0) == 0.0
    assert clock.observe(seg(1, tli=2), 0, 70.0) == 0.0  # a new timeline starts afresh
    assert clock.observe(seg(3, tli=2), 2, 80.0) == 80.0


def test_the_servers_ready_file_dates_a_backlog_older_than_the_first_look() -> None:
    clock = PendingClock()
    # a daemon started with segments 5 and 6 waiting; the server made 5's .ready file at 3.0
    assert clock.observe(seg(7), 2, 100.0, ready_since=3.0) == 3.0
    assert clock.observe(seg(8), 3, 110.0) == 3.0  # remembered when the next look cannot list it
    assert clock.observe(seg(8), 2, 120.0) == 100.0  # 5 archived: 6 was waiting at the first look
    assert clock.observe(seg(8), 2, 125.0, ready_since=50.0) == 50.0  # and was finished at 50
    assert clock.observe(seg(8), 2, 130.0, ready_since=150.0) == 50.0  # a later (skewed) time changes nothing
    assert clock.observe(seg(8), 0, 140.0, ready_since=4.0) == 0.0  # nothing waits


def test_clocks_leave_a_standby_and_an_unreadable_server_alone() -> None:
    clocks = PendingClocks(clock=lambda: 5.0)
    standby = DatabaseArchive(name="a", in_recovery=True, lag_segments=0)
    assert clocks.observe(standby).pending_since == 0.0
    broken = DatabaseArchive(name="b", error="unable to connect")
    assert clocks.observe(broken) is broken
    waiting = DatabaseArchive(name="c", current_segment=seg(4), last_archived=seg(1), lag_segments=2)
    assert clocks.observe(waiting).pending_since == 5.0


def test_calls_cairn_by_the_command_or_by_the_archive() -> None:
    asked: list[tuple[str, str]] = []

    def here(namespace: str, name: str) -> bool:
        asked.append((namespace, name))
        return name == seg(3)

    ours = DatabaseArchive(name="a", archive_command="/usr/bin/cairn --socket /run/c.sock wal-push %p",
                           last_archived=seg(7), system_id="42")
    assert calls_cairn(ours, here) and asked == []  # the command says so: the repository is not listed
    wrapper = DatabaseArchive(name="a", archive_command="/usr/local/bin/archive %p", last_archived=seg(3),
                              system_id="42")
    assert calls_cairn(wrapper, here) and asked == [("42", seg(3))]
    foreign = DatabaseArchive(name="a", archive_command="cp %p /mnt/wal/%f", last_archived=seg(4), system_id="42")
    assert not calls_cairn(foreign, here)
    assert not calls_cairn(DatabaseArchive(name="a", archive_command="true"), here)  # nothing archived to tell
    library = DatabaseArchive(name="a", archive_command="cairn wal-push %p", archive_library="basic_archive")
    assert not calls_cairn(library, here)

    def stalled(namespace: str, name: str) -> bool:
        raise OSError("the store did not answer")

    assert calls_cairn(foreign, stalled)  # unable to look is no verdict against the command


def test_a_wal_push_to_another_daemon_is_told_from_one_to_this_daemon(tmp_path) -> None:
    here = Listening(str(tmp_path / "run" / "cairnd.sock"))
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    ours, other = here.socket, "/srv/other/cairnd.sock"
    for command in (f"/usr/bin/cairn --socket {ours} wal-push %p",
                    f"cairn --socket={tmp_path}/link/cairnd.sock wal-push %p",  # the same socket, by a link
                    f"CAIRN_SOCKET={other} cairn --socket {ours} wal-push %p",  # the option wins
                    "cairn wal-push %p",  # the server's environment decides: no verdict
                    "cairn --socket $SOCK wal-push %p", "cairn --socket ~/c.sock wal-push %p",
                    "cairn --socket c.sock wal-push %p", "cairn --socket '' wal-push %p",
                    f"cairn --socket '{other} wal-push %p",  # unbalanced: the shell refuses it too
                    f"sh -c 'cairn --socket {other} wal-push %p'"):
        assert elsewhere(command, here) == "", command
    for command in (f"cairn --socket {other} wal-push %p", f"cairn --socket={other} wal-push %p",
                    f"CAIRN_SOCKET={other} cairn wal-push %p", f"env CAIRN_SOCKET={other} cairn wal-push %p",
                    f"export CAIRN_SOCKET={other}; cairn wal-push %p",
                    f"test ! -f /mnt/wal/%f && /opt/cairn/bin/cairn --socket {other} wal-push %p",
                    f"cairn --socket {ours} status >/dev/null; cairn --socket {other} wal-push %p"):
        assert elsewhere(command, here) == f"unix socket '{other}'", command
    assert elsewhere(f"CAIRN_SOCKET={other}; cairn wal-push %p", here) == ""  # not exported: not the client's
    assert elsewhere("cairn --socket '/srv/a b.sock' wal-push %p", here) == "unix socket '/srv/a b.sock'"

    remote = "cairn --address backup.example.net:7443 --token-file /etc/cairn/token wal-push %p"
    assert elsewhere(remote, here) == "address 'backup.example.net:7443'"  # this daemon listens on no port
    assert elsewhere(remote, Listening(ours, "0.0.0.0:7443")) == ""  # its port: any name of this host
    assert elsewhere(remote, Listening(ours, "[::]:7444")) == "address 'backup.example.net:7443'"


def test_judge_takes_a_push_to_another_daemon_as_foreign() -> None:
    here = Listening("/run/cairn/cairnd.sock")

    def nowhere(namespace: str, name: str) -> bool:
        raise AssertionError("a command naming wal-push is never looked up")

    other = DatabaseArchive(name="a", archive_command="cairn --socket /run/other.sock wal-push %p",
                            last_archived=seg(3), system_id="42")
    assert not calls_cairn(other, nowhere, here) and calls_cairn(other, nowhere)
    judged = judge(other, nowhere, here)
    assert judged.archive_foreign and judged.archive_elsewhere == "unix socket '/run/other.sock'"
    ours = judge(replace(other, archive_command="cairn --socket /run/cairn/cairnd.sock wal-push %p"), nowhere, here)
    assert not ours.archive_foreign and ours.archive_elsewhere == ""
    library = judge(replace(other, archive_library="basic_archive"), nowhere, here)
    assert library.archive_foreign and library.archive_elsewhere == ""
    assert problems(judged, 0.0) == ["archive_command 'cairn --socket /run/other.sock wal-push %p' pushes to another "
                                     "daemon, at unix socket '/run/other.sock': its WAL does not reach this repository"]


def test_the_repository_is_looked_at_once_per_last_archived_file() -> None:
    clocks, looks = PendingClocks(), []

    def look(answer: bool) -> bool:
        looks.append(answer)
        return answer

    assert clocks.found("42", seg(3), lambda: look(True)) and clocks.found("42", seg(3), lambda: look(False))
    assert not clocks.found("42", seg(4), lambda: look(False)) and looks == [True, False]


def test_the_sampler_logs_a_server_it_cannot_ask_once(caplog) -> None:
    answers = [DatabaseArchive(name="db", error="unable to connect to database 'db': refused")] * 3 + [
        DatabaseArchive(name="db", current_segment=seg(9), last_archived=seg(8), archive_mode="on",
                        archive_command="cairn wal-push %p")]
    sampler = ArchiverSampler(lambda: [DatabaseConfig(name="db")], lambda db: answers.pop(0), lambda: 60.0)
    with caplog.at_level(logging.INFO, logger="cairn.daemon.databases.postgres.archwatch"):
        for _ in range(3):
            sampler.sample_all()
        assert sampler.figures() == {"db": {"up": 0.0}}
        sampler.sample_all()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "refused" in messages[0] and "can be read again" in messages[1], messages
    assert sampler.figures() == {"db": {"up": 1.0, "pending": 0.0, "pending_since": 0.0, "failed_count": 0.0,
                                        "archive_mode_on": 1.0, "command_cairn": 1.0}}


def test_the_sampler_says_once_that_a_backlog_is_timed_from_its_first_look(caplog) -> None:
    why = "role 'cairn' may not run pg_ls_archive_statusdir() (GRANT pg_monitor TO cairn)"
    unlisted = DatabaseArchive(name="db", current_segment=seg(9), last_archived=seg(8), ready_unlisted=why)
    answers = [unlisted] * 3 + [DatabaseArchive(name="db", current_segment=seg(9), last_archived=seg(8))] + \
        [unlisted] * 2
    sampler = ArchiverSampler(lambda: [DatabaseConfig(name="db")], lambda db: answers.pop(0), lambda: 60.0)
    with caplog.at_level(logging.INFO, logger="cairn.daemon.databases.postgres.archwatch"):
        for _ in range(6):
            sampler.sample_all()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"a WAL backlog of database 'db' is timed from this daemon's first look at it: {why}"] * 2


def test_the_sampler_survives_a_sample_that_raises() -> None:
    def boom(db: DatabaseConfig) -> DatabaseArchive:
        raise RuntimeError("no")

    sampler = ArchiverSampler(lambda: [DatabaseConfig(name="db")], boom, lambda: 60.0)
    sampler.sample_all()
    assert sampler.figures() == {"db": {"up": 0.0}} and sampler.samples == 1
