"""An idle PostgreSQL server told from one whose archiving is stuck, end to end: a real
PostgreSQL 15 archiving through `cairn wal-push` into a real cairnd that samples the server's
archiver every second (`[daemon] archiver_interval`) and serves its metrics.

An idle server archives nothing for hours; that is no alarm. What is: finished segments waiting
for the archive (the archive_command fails, or is not called: archive_mode off), or a server
whose archive_command does not reach Cairn. The metrics say which, monitoring/cairn.rules.yml's
CairnWalArchiveStale is evaluated on them (its expression's terms, here), and `cairn status` and
`cairn check-db` say it in one line. A backlog keeps its start across a restart of cairnd (the
server's .ready files say when it began; a role without pg_monitor is told it may not), and an
archive_command whose wal-push goes to another daemon's socket is not Cairn's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cairnd_harness import CAIRN, daemon_starter, env_for
from pgstack import Stack, make_pg_dir

RULES = Path(__file__).resolve().parents[3] / "monitoring" / "cairn.rules.yml"
DB = "appdb"
Samples = dict[str, float]  # metric name -> value of database appdb


@pytest.fixture
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-arw-")
    (root / "files").mkdir()
    st = Stack(root, {"app": {"paths": [str(root / "files")], "database": DB}})
    st.daemon_keys = {"metrics": "127.0.0.1:0", "archiver_interval": "1s"}
    st.write_config()
    try:
        yield st.start()
    finally:
        st.close()


def metrics_url(stack: Stack) -> str:
    found = re.search(r"metrics on (http://\S+/metrics)", stack.daemon.log())
    assert found, stack.daemon.log()
    return found.group(1)


def scrape(url: str) -> Samples:
    """The samples of database appdb (and the daemon-wide ones), by metric name."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    out = {}
    for name, labels, value in re.findall(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", text, re.MULTILINE):
        if not labels or labels == f'database="{DB}"':
            out[name] = float(value)
    return out


def wait_samples(url: str, ok: Callable[[Samples], bool], what: str, timeout: float = 20.0) -> Samples:
    end = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if ok(samples):
            return samples
        assert time.monotonic() < end, f"the metrics never showed {what}: {samples}"
        time.sleep(0.2)


def stale_rule_fires(samples: Samples, now: float) -> bool:
    """CairnWalArchiveStale's expression on `samples` at time `now`: an `or` of `and`s of
    `time() - METRIC > N`, `METRIC == N` or `METRIC > N` (another shape fails: update this test);
    a series that is absent has no sample, so its term does not hold."""
    (rule,) = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
               if r["alert"] == "CairnWalArchiveStale"]

    def holds(atom: str) -> bool:
        shape = re.fullmatch(r"(time\(\) - )?(\w+) (>|==) (\d+)", atom)
        assert shape, f"unexpected term in CairnWalArchiveStale: {atom!r}"
        age, name, op, bound = shape.groups()
        if name not in samples:
            return False
        value = now - samples[name] if age else samples[name]
        return value > float(bound) if op == ">" else value == float(bound)

    terms = " ".join(rule["expr"].split()).split(" or ")
    return any(all(holds(atom) for atom in term.split(" and ")) for term in terms)


def status_lines(sock: str) -> list[str]:
    out = subprocess.run([CAIRN, "--socket", sock, "status"], capture_output=True, text=True, check=True,
                         env=env_for(), timeout=60).stdout
    return [line for line in out.splitlines() if line.startswith(f"  database {DB}:")]


def check_db(sock: str) -> tuple[int, list[str]]:
    r = subprocess.run([CAIRN, "--socket", sock, "check-db", DB, "--timeout", "5"], capture_output=True, text=True,
                       env=env_for(), timeout=60)
    return r.returncode, r.stdout.splitlines()


def switch(stack: Stack) -> str:
    """Write something and finish the segment that holds it; return that segment. The switch is
    a statement of its own, after the commit: the server then writes nothing more, as an idle one."""
    stack.psql("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)")
    return stack.psql("SELECT pg_walfile_name(pg_switch_wal())")


def test_an_idle_server_has_nothing_pending_and_does_not_alert(stack: Stack) -> None:
    url = metrics_url(stack)
    stack.wait_archived()
    samples = wait_samples(url, lambda s: s.get("cairn_wal_archiver_up") == 1
                           and s.get("cairn_wal_archive_mode_on") == 1, "a sampled archiver")
    assert samples["cairn_wal_segments_pending"] == 0 and samples["cairn_wal_archive_command_cairn"] == 1, samples
    assert "cairn_wal_pending_since_timestamp_seconds" not in samples and \
        samples["cairn_wal_archiver_failed_total"] == 0, samples
    # Idle for hours: the last archived segment grows old, and that alone is no alert.
    assert samples["cairn_wal_last_archived_timestamp_seconds"] > 0
    assert not stale_rule_fires(samples, time.time() + 6 * 3600), samples
    (line,) = status_lines(stack.sock)  # no warning line under the server's
    assert "lag 0 segments" in line, line


def test_a_failing_archive_command_leaves_segments_pending(stack: Stack) -> None:
    url = metrics_url(stack)
    stack.wait_archived()
    moved = stack.sock + ".moved"
    os.rename(stack.sock, moved)  # archive_command's socket is gone: every push fails
    try:
        segment = switch(stack)
        end = time.monotonic() + 20
        while int(stack.psql("SELECT failed_count FROM pg_stat_archiver")) < 1:
            assert time.monotonic() < end, stack.pg.log_tail()
            time.sleep(0.1)
        # The segment the switch finished waits, also while the server writes nothing more (the
        # position right after a switch lies on the boundary of the next segment).
        out = json.loads(subprocess.run([CAIRN, "--socket", moved, "--json", "status"], capture_output=True,
                                        text=True, check=True, env=env_for(), timeout=60).stdout)
        (db,) = [d for d in out["archive"]["databases"] if d["name"] == DB]
        assert db["last_failed"] == segment and db["lag_segments"] >= 1 and db["pending_since"], db
        samples = wait_samples(url, lambda s: s.get("cairn_wal_segments_pending", 0) >= 1
                               and s.get("cairn_wal_archiver_failed_total", 0) >= 1
                               and "cairn_wal_pending_since_timestamp_seconds" in s, "a pending segment")
        since = samples["cairn_wal_pending_since_timestamp_seconds"]
        assert time.time() - 60 < since <= time.time(), samples
        assert samples["cairn_wal_archive_command_cairn"] == 1 and samples["cairn_wal_archive_mode_on"] == 1
        assert not stale_rule_fires(samples, time.time())  # waiting a few seconds is no stuck archiver yet
        assert stale_rule_fires(samples, since + 16 * 60)  # a quarter of an hour is
        lines = status_lines(moved)
        assert len(lines) == 2 and re.fullmatch(
            rf"  database {DB}: 1 finished segment waiting for the archive, the oldest since \S+ \S+ \(\d+s\)",
            lines[1]), lines
        status, report = check_db(moved)
        (archiver,) = [line for line in report if line.startswith("FAIL archiver:")]
        assert status == 1 and "finished segment" in archiver and "waiting for the archive" in archiver, report
    finally:
        os.rename(moved, stack.sock)
    stack.wait_archived()
    samples = wait_samples(url, lambda s: s.get("cairn_wal_segments_pending") == 0, "the backlog archived")
    assert "cairn_wal_pending_since_timestamp_seconds" not in samples, samples


def test_archiving_off_or_foreign_is_said(stack: Stack) -> None:
    url = metrics_url(stack)
    stack.wait_archived()
    # archive_mode off after a restart: the server never calls archive_command, fails nothing
    stack.pg.settings["archive_mode"] = "off"
    stack.pg.restart()
    switch(stack)
    samples = wait_samples(url, lambda s: s.get("cairn_wal_archive_mode_on") == 0
                           and s.get("cairn_wal_segments_pending", 0) >= 1, "archive_mode off")
    assert samples["cairn_wal_archiver_failed_total"] == 0 and stale_rule_fires(samples, time.time()), samples
    lines = status_lines(stack.sock)
    assert f"  database {DB}: archive_mode is off: the server archives no WAL (set archive_mode = on and restart " \
        "it)" in lines, lines
    status, report = check_db(stack.sock)
    assert status == 1 and report[0] == (f"FAIL connection: database '{DB}': archive_mode is 'off'; WAL must be "
                                         "archived (archive_mode = on, archive_command = 'cairn wal-push %p')"), report

    # an archive_command that succeeds without reaching Cairn
    stack.pg.settings.update(archive_mode="on", archive_command="/bin/true")
    stack.pg.restart()
    segment = switch(stack)
    end = time.monotonic() + 20
    while stack.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
        assert time.monotonic() < end, stack.pg.log_tail()
        time.sleep(0.1)
    samples = wait_samples(url, lambda s: s.get("cairn_wal_archive_command_cairn") == 0
                           and s.get("cairn_wal_archive_mode_on") == 1, "a foreign archive_command")
    assert samples["cairn_wal_segments_pending"] == 0 and stale_rule_fires(samples, time.time()), samples
    assert f"  database {DB}: archive_command '/bin/true' does not call 'cairn wal-push': its WAL does not reach " \
        "this repository" in status_lines(stack.sock)
    status, report = check_db(stack.sock)
    (archiver,) = [line for line in report if line.startswith("FAIL archiver:")]
    assert status == 1 and "archive_command '/bin/true' does not call 'cairn wal-push'" in archiver, report
    out = json.loads(stack.ok("--json", "status"))
    (db,) = [d for d in out["archive"]["databases"] if d["name"] == DB]
    assert db["archive_foreign"] is True and db["archive_mode"] == "on" and db["archive_command"] == "/bin/true", db


def test_a_wal_push_to_another_daemon_is_not_cairns(stack: Stack) -> None:
    # Another cairnd with a repository of its own, on a socket the server's OS user reaches: the
    # server archives there without a failure, and none of its WAL reaches this repository.
    url = metrics_url(stack)
    stack.wait_archived()
    others = stack.root / "others"
    others.mkdir(mode=0o755)
    with daemon_starter(str(others)) as start:
        other = start("--repo", str(others / "repo"), "--socket-group", "postgres")
        command = f"{CAIRN} --socket {other.socket} wal-push %p"
        stack.pg.settings["archive_command"] = command
        stack.pg.restart()
        segment = switch(stack)
        end = time.monotonic() + 20
        while stack.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
            assert time.monotonic() < end, stack.pg.log_tail()
            time.sleep(0.1)
        samples = wait_samples(url, lambda s: s.get("cairn_wal_archive_command_cairn") == 0,
                               "an archive_command for another daemon")
        assert samples["cairn_wal_archiver_failed_total"] == 0 and stale_rule_fires(samples, time.time()), samples
        line = (f"  database {DB}: archive_command '{command}' pushes to another daemon, at unix socket "
                f"'{other.socket}': its WAL does not reach this repository")
        assert line in status_lines(stack.sock), status_lines(stack.sock)
        status, report = check_db(stack.sock)
        (archiver,) = [x for x in report if x.startswith("FAIL archiver:")]
        assert status == 1 and line.split(": ", 1)[1] in archiver, report
        db = db_status(stack)
        assert db["archive_foreign"] is True and db["archive_elsewhere"] == f"unix socket '{other.socket}'", db


def db_status(stack: Stack) -> dict:
    out = json.loads(stack.ok("--json", "status"))
    (db,) = [d for d in out["archive"]["databases"] if d["name"] == DB]
    return db


def wait_status(stack: Stack, ok: Callable[[dict], bool], what: str, timeout: float = 20.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        db = db_status(stack)
        if ok(db):
            return db
        assert time.monotonic() < end, f"status never showed {what}: {db}"
        time.sleep(0.2)


def restart_unreachable(stack: Stack) -> None:
    """Restart cairnd with a socket the server's OS user may not open: every wal-push fails."""
    assert stack.daemon is not None
    code, _ = stack.daemon.terminate(30)
    assert code == 0, stack.daemon.log()
    stack.daemon_keys["socket_mode"] = "0600"
    stack.write_config()
    stack.start_daemon()


def make_backlog(stack: Stack) -> str:
    """Finish a segment that the failing archive_command cannot archive; return it."""
    segment = switch(stack)
    end = time.monotonic() + 20
    while stack.psql("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver") != segment:
        assert time.monotonic() < end, stack.pg.log_tail()
        time.sleep(0.1)
    return segment


def test_a_backlog_keeps_its_start_across_a_daemon_restart(stack: Stack) -> None:
    stack.wait_archived()
    restart_unreachable(stack)
    make_backlog(stack)
    before = wait_status(stack, lambda d: d["pending_since"], "a backlog")
    assert before["ready_unlisted"] is None and before["pending_since"] == before["ready_since"], before
    since = before["pending_since"]

    restarted = time.time()
    stack.daemon.terminate(30)
    stack.start_daemon()
    # The server's archive_status says when the segment began to wait: the restarted daemon's
    # first look does not move the backlog's start (nor its metric) to the restart.
    after = wait_status(stack, lambda d: d["pending_since"], "the backlog after the restart")
    assert abs(after["pending_since"] - since) < 1.0 and after["pending_since"] < restarted, (since, restarted, after)
    samples = wait_samples(metrics_url(stack), lambda s: "cairn_wal_pending_since_timestamp_seconds" in s,
                           "a pending segment")
    assert abs(samples["cairn_wal_pending_since_timestamp_seconds"] - since) < 1.0, (since, samples)

    # A backlog that began 20 minutes before the restart is STUCK at once, and the alert fires,
    # not a quarter of an hour after the restart.
    long_ago = time.time() - 20 * 60
    for ready in (stack.pg.pgdata / "pg_wal" / "archive_status").glob("*.ready"):
        os.utime(ready, (long_ago, long_ago))
    lines = status_lines(stack.sock)
    assert len(lines) == 2 and lines[1].endswith("(20m); archiving is STUCK"), lines
    samples = wait_samples(metrics_url(stack), lambda s: s.get("cairn_wal_pending_since_timestamp_seconds", 1e12)
                           < restarted - 60, "the backlog's start from the server")
    assert stale_rule_fires(samples, time.time()), samples


def test_without_pg_monitor_the_backlog_is_timed_from_the_first_look(stack: Stack) -> None:
    # A role with the documented rights for sets, but not pg_monitor: pg_ls_archive_statusdir()
    # is not permitted, so the backlog counts from the daemon's first look, and status says so.
    stack.wait_archived()
    stack.psql("CREATE ROLE watcher LOGIN; GRANT pg_read_all_settings TO watcher; "
               "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean), "
               "pg_switch_wal(), pg_create_restore_point(text) TO watcher")
    stack.databases[DB]["dsn"] = stack.pg.dsn_for(user="watcher")
    restart_unreachable(stack)
    make_backlog(stack)
    unlisted = "role 'watcher' may not run pg_ls_archive_statusdir() (GRANT pg_monitor TO watcher)"
    db = wait_status(stack, lambda d: d["pending_since"], "a backlog")
    assert db["ready_unlisted"] == unlisted and db["ready_since"] is None, db
    lines = status_lines(stack.sock)
    assert lines[1:] == [lines[1], f"  database {DB}: the wait is counted from this daemon's first look at the "
                                   f"backlog, which may have begun earlier: {unlisted}"], lines
    status, report = check_db(stack.sock)
    (archiver,) = [line for line in report if line.startswith("FAIL archiver:")]
    assert status == 1 and archiver.endswith(f"which may have begun earlier: {unlisted}"), report
    # logged once, not at every sample (one a second, since the restart)
    assert stack.daemon.log().count(f"is timed from this daemon's first look at it: {unlisted}") == 1, \
        stack.daemon.log()

    stack.psql("GRANT pg_monitor TO watcher")
    db = wait_status(stack, lambda d: d["ready_since"], "the server's own start of the backlog")
    assert db["ready_unlisted"] is None and db["pending_since"] == db["ready_since"], db
    assert len(status_lines(stack.sock)) == 2


def test_a_standby_has_nothing_pending() -> None:
    # A streaming standby of the archiving server, configured as a database of its own: it writes
    # no WAL of its own (pg_current_wal_lsn() is refused in recovery), so nothing of it waits.
    from pgstack import ArchivingServer

    root = make_pg_dir("cairn-arw-")
    (root / "files").mkdir()
    st = Stack(root, {"app": {"paths": [str(root / "files")], "database": DB}})
    standby = ArchivingServer(init=False, settings=dict(st.pg.settings))
    st.servers.append(standby)
    st.databases["standby"] = {"dsn": standby.dsn, "pgdata": str(standby.pgdata)}
    st.daemon_keys = {"metrics": "127.0.0.1:0", "archiver_interval": "1s"}
    st.write_config()
    try:
        st.start()
        standby._run_as_postgres([standby.bin("pg_basebackup"), "-D", str(standby.pgdata), "-R", "-X", "stream",
                                  "-d", st.pg.dsn])
        standby.start()
        switch(st)
        url = metrics_url(st)
        end = time.monotonic() + 20
        while not re.search(r'^cairn_wal_segments_pending\{database="standby"\} 0\.0$',
                            text := urllib.request.urlopen(url, timeout=10).read().decode(), re.MULTILINE):
            assert time.monotonic() < end, text
            time.sleep(0.2)
        assert 'cairn_wal_archiver_up{database="standby"} 1.0' in text, text
        assert 'cairn_wal_pending_since_timestamp_seconds{database="standby"}' not in text, text
        out = json.loads(st.ok("--json", "status"))
        (db,) = [d for d in out["archive"]["databases"] if d["name"] == "standby"]
        assert db["in_recovery"] is True and db["lag_segments"] == 0 and db["error"] is None, db
        lines = [x for x in st.ok("status").splitlines() if x.startswith("  database standby:")]
        assert len(lines) == 1 and lines[0].startswith("  database standby: in recovery (no WAL of its own), "), lines
    finally:
        st.close()
