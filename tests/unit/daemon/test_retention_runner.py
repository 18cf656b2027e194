"""Scheduled retention: the config keys (keep, gc, wal_keep, host) and the thread on a fake clock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from cairn.daemon.runtime.config import ConfigError, load_config
from cairn.daemon.runtime.health import GC_CUT, HealthRecord
from cairn.daemon.scheduling import retention as runner_mod
from cairn.daemon.scheduling.retention import RetentionRunner, keep_policy, parse_option_duration
from cairn.store.errors import AbortedError, InvalidArgumentError, LockedError
from cairn.store.model import PrunePolicy, PruneReport

BASE = """
[repository]
path = "/r"
{repo}

[daemon]
socket = "/run/x.sock"
state_dir = "/var/x"
{daemon}

[[source]]
name = "app"
paths = ["/srv/app"]
{source}
"""


def load(tmp_path, repo: str = "", daemon: str = "", source: str = ""):
    p = tmp_path / "c.toml"
    p.write_text(BASE.format(repo=repo, daemon=daemon, source=source))
    return load_config(str(p))


def test_config_keys(tmp_path):
    cfg = load(tmp_path, 'gc = "0 4 * * *"\nwal_keep = "7d"', 'host = "app1"',
               'keep = { last = 7, daily = 7, weekly = 4, monthly = 12, within = "2d", tags = ["release"] }')
    assert cfg.repository.gc == "0 4 * * *" and cfg.repository.wal_keep == 7 * 86400
    assert cfg.daemon.host == "app1"
    assert cfg.sources[0].keep == PrunePolicy(keep_last=7, keep_daily=7, keep_weekly=4, keep_monthly=12,
                                              keep_within=2 * 86400, keep_tags=("release",))
    plain = load(tmp_path)
    assert plain.repository.gc is None and plain.repository.wal_keep is None and plain.daemon.host is None
    assert plain.sources[0].keep is None


@pytest.mark.parametrize("repo, daemon, source, key", [
    ('gc = "0 25 * * *"', "", "", "repository.gc"),
    ('wal_keep = "a week"', "", "", "repository.wal_keep"),
    ("", 'host = "two words"', "", "daemon.host"),
    ("", "", "keep = { lats = 3 }", "source[0].keep"),
    ("", "", "keep = { last = -1 }", "source[0].keep"),
    ("", "", 'keep = { within = "soon" }', "source[0].keep"),
    ("", "", "keep = {}", "source[0].keep"),
    ("", "", 'keep = "7"', "source[0].keep"),
    # a policy with no gc schedule would never be applied: the repository would only grow
    ("", "", "keep = { last = 3 }", "source[0].keep: never applied"),
])
def test_bad_config_names_the_key(tmp_path, repo, daemon, source, key):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, repo, daemon, source)
    assert err.value.key == key or key in str(err.value)


def test_option_durations():
    assert parse_option_duration("--keep-within", "36h") == 36 * 3600
    with pytest.raises(InvalidArgumentError, match="invalid --keep-within 'x'"):
        parse_option_duration("--keep-within", "x")
    assert keep_policy({"full": 2}) == PrunePolicy(keep_full=2)
    with pytest.raises(InvalidArgumentError, match="every rule is 0"):  # it would forget every set
        keep_policy({"last": 0, "daily": 0})
    assert keep_policy({"last": 0, "within": "2d"}) == PrunePolicy(keep_last=0, keep_within=2 * 86400)
    assert keep_policy({"full": 0}) == PrunePolicy(keep_full=0)  # the other levels are kept whole


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_runner_runs_once_when_due_and_plans_the_next(monkeypatch):
    clock = FakeClock(ts(2026, 3, 1, 3, 59, 58))
    calls = []

    def run() -> PruneReport:
        calls.append(clock())
        return PruneReport(forgotten=("a", "b"), kept=("c",), bytes_freed=10)

    r = RetentionRunner("0 4 * * *", run, clock=clock, tz=UTC)
    assert r.next_run() == ts(2026, 3, 1, 4, 0)
    r.start()
    try:
        time.sleep(0.2)
        assert calls == []  # not due yet
        clock.now = ts(2026, 3, 3, 12, 0)  # slept through two 04:00s: one run, not two
        r.reload("0 4 * * *")  # the daemon pokes it the same way after SIGHUP
        assert r.next_run() == ts(2026, 3, 4, 4, 0)
        clock.now = ts(2026, 3, 4, 4, 0, 1)
        r._wake.set()
        assert wait_for(lambda: len(calls) == 1)
        assert r.next_run() == ts(2026, 3, 5, 4, 0)
        assert r.last_result.startswith("forgot 2 sets, kept 1") and r.last_run == ts(2026, 3, 4, 4, 0, 1)
        time.sleep(0.2)
        assert len(calls) == 1
    finally:
        r.stop(5)


def test_runner_waits_for_a_locked_repository_and_survives_failures(monkeypatch):
    monkeypatch.setattr(runner_mod, "LOCK_RETRY", 0.05)
    clock = FakeClock(ts(2026, 3, 1, 4, 0, 30))
    attempts = []
    done = threading.Event()

    def run() -> PruneReport:
        attempts.append(1)
        if len(attempts) < 3:
            raise LockedError("repository is locked (shared, backup) by pid 1")
        if len(attempts) == 3:
            done.set()
            return PruneReport(forgotten=(), kept=())
        raise RuntimeError("boom")

    r = RetentionRunner("0 4 * * *", run, clock=clock, tz=UTC)
    r._next = clock.now  # due now; the next run is a day away, so lock retries have time
    r.start()
    try:
        assert done.wait(10)
        assert wait_for(lambda: r.runs == 1)
        assert r.last_result.startswith("forgot 0 sets")
        assert r.run_now().startswith("failed: boom") and r.healthy
    finally:
        r.stop(5)


def test_a_run_the_stop_ends_is_interrupted_not_failed_and_kept_across_restarts(tmp_path, caplog):
    """The stop ends a run (the store's prune raises once the daemon stops): logged as a warning
    that says the repository is consistent, recorded as the last run in the health record, so
    the next start's status shows it and its log says it once; no 'failed'."""
    clock = FakeClock(ts(2026, 3, 1, 4, 0, 30))
    running = threading.Event()
    r: RetentionRunner | None = None

    def run() -> PruneReport:
        running.set()
        assert r is not None and r.wait(10)  # until the stop
        raise AbortedError("prune stopped before its next step: its process is shutting down")

    health = HealthRecord(str(tmp_path))
    r = RetentionRunner("0 4 * * *", run, clock=clock, tz=UTC, health=health)
    r._next = clock.now
    r.start()
    assert running.wait(10)
    assert r.stop(10)
    assert r.last_result.startswith("interrupted by the daemon's stop after ") and r.last_run == clock.now
    assert "the repository is consistent (garbage collection is crash-safe" in r.last_result
    assert "scheduled retention and garbage collection interrupted by the daemon's stop" in caplog.text
    assert "failed" not in caplog.text and not [x for x in caplog.records if x.levelname == "ERROR"]

    caplog.clear()
    again = RetentionRunner("0 4 * * *", run, clock=clock, tz=UTC, health=HealthRecord(str(tmp_path)))
    again.settle()
    assert again.last_run == clock.now and again.last_result == r.last_result
    assert caplog.text.count("did not finish: interrupted by the daemon's stop after ") == 1, caplog.text


def test_a_run_the_previous_daemon_never_ended_is_the_last_run_interrupted(tmp_path, caplog):
    """kill -9 (or a stop's deadline) in the middle of a run: the record says it began and never
    ended; the next start makes it the last run, interrupted, and says so once."""
    clock = FakeClock(ts(2026, 3, 1, 4, 0, 30))
    HealthRecord(str(tmp_path)).gc_begin(clock.now)  # ... and the process died
    r = RetentionRunner("0 4 * * *", lambda: PruneReport(forgotten=(), kept=()), clock=clock, tz=UTC,
                        health=HealthRecord(str(tmp_path)))
    r.settle()
    assert r.last_run == clock.now and r.last_result == GC_CUT
    assert "the daemon stopped while it ran (killed, or the host went down)" in caplog.text
    # a run that ends is the last run from then on, and nothing is reported at the next start
    r.run_now()
    caplog.clear()
    later = RetentionRunner("0 4 * * *", lambda: PruneReport(forgotten=(), kept=()), clock=clock, tz=UTC,
                            health=HealthRecord(str(tmp_path)))
    later.settle()
    assert later.last_result.startswith("forgot 0 sets") and "did not finish" not in caplog.text
