"""A wall clock set back while the real daemon runs (an NTP correction after a boot with the
clock a day ahead, a clock set by hand) keeps its schedules: the next scheduled set and the next
`[repository] gc` run move back with the clock instead of waiting out the jump, without a reload,
and a source's `rpo` still protects changes the journal stamped before the jump. A daemon
suspended (SIGSTOP) while three hourly runs pass takes one late set when continued, no burst,
then keeps its schedule. The daemon runs on a clock the test moves (clocked_cairnd.py),
looking at it every second."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from cairnd_harness import write_config
from test_daemon_skip_unchanged import offset_to

LAUNCHER = (sys.executable, os.path.join(os.path.dirname(__file__), "clocked_cairnd.py"))
DAY = 86400.0


def wait_for(predicate, timeout: float, what: str, d) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}\n{d.log()}"
        time.sleep(0.1)


def test_a_clock_set_back_a_day_keeps_the_schedule_and_the_gc_cron(start_daemon, tmp_path, rundir, monkeypatch):
    clock = tmp_path / "clock-offset"
    clock.write_text(str(DAY + offset_to(1800)))  # a day ahead, half an hour before the scheduled minute
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    monkeypatch.setenv("CAIRN_TEST_MAX_SLEEP", "1")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("data\n")
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"src": str(src)},
                          schedules={"src": {"incremental": "0 * * * *"}})
    text = open(config, encoding="utf-8").read().replace("[repository]\n", '[repository]\ngc = "0 * * * *"\n', 1)
    with open(config, "w", encoding="utf-8") as f:
        f.write(text)
    d = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)
    ahead = json.loads(d.ok("--json", "status"))["sources"][0]["next_runs"]["incremental"]
    assert ahead > time.time() + DAY, ahead

    clock.write_text(str(offset_to(3)))  # set back by a day: three seconds before the hour, no reload
    wait_for(lambda: json.loads(d.ok("--json", "sets")), 20, "the scheduled set after the clock went back", d)
    taken = json.loads(d.ok("--json", "sets"))
    assert [(s["source"], s["extra"]["reason"]) for s in taken] == [("src", "schedule")], taken
    wait_for(lambda: "retention and garbage collection done" in d.log(), 20, "the gc run", d)
    log = d.log()
    assert "the clock went back: next scheduled runs moved to incremental of 'src' at " in log, log
    assert "the clock went back: next retention run moved to " in log, log
    following = json.loads(d.ok("--json", "status"))["sources"][0]["next_runs"]["incremental"]
    assert following <= time.time() + float(clock.read_text()) + 3600, following  # the next hour on the clock now
    assert d.terminate(30)[0] == 0

    # Stopped across the next hour: that run is caught up at the start (the record of handled
    # runs no longer holds the times from before the jump).
    clock.write_text(str(offset_to(-120) + 3600))  # two minutes past the hour after the next
    d = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)
    wait_for(lambda: len(json.loads(d.ok("--json", "sets"))) == 2, 20, "the run missed while stopped", d)
    assert "was missed while the daemon was down; it is caught up now" in d.log()
    assert d.terminate(30)[0] == 0


def test_changes_stamped_before_the_clock_was_set_back_are_still_protected_by_the_rpo(start_daemon, tmp_path,
                                                                                       rundir, monkeypatch):
    clock = tmp_path / "clock-offset"
    clock.write_text(str(-DAY))  # the journal stamps real time: its changes lie a day after this clock
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("data\n")
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"src": str(src)})
    text = open(config, encoding="utf-8").read().replace("watch = false", 'watch = true\nrpo = "5s"')
    with open(config, "w", encoding="utf-8") as f:
        f.write(text)
    d = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)

    def rpo_sets() -> list[dict]:
        return [s for s in json.loads(d.ok("--json", "sets")) if s["extra"].get("reason") == "rpo"]

    wait_for(lambda: len(rpo_sets()) == 1, 20, "the rpo set of the source's first rescan", d)
    (src / "new.txt").write_text("written after the jump\n")
    wait_for(lambda: len(rpo_sets()) == 2, 20, "the rpo set of the new file", d)
    assert "new.txt" in d.ok("ls", rpo_sets()[-1]["id"])
    assert d.terminate(30)[0] == 0


def test_a_daemon_suspended_for_hours_takes_one_late_set_then_keeps_its_schedule(start_daemon, tmp_path, rundir,
                                                                                 monkeypatch):
    """SIGSTOP, three hourly runs pass (the clock moves on meanwhile), SIGCONT: one set, no burst."""
    clock = tmp_path / "clock-offset"
    clock.write_text(str(offset_to(1800)))
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    monkeypatch.setenv("CAIRN_TEST_MAX_SLEEP", "1")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("data\n")
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"src": str(src)},
                          schedules={"src": {"incremental": "0 * * * *"}})
    d = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)

    def scheduled() -> list[dict]:
        return [s for s in json.loads(d.ok("--json", "sets")) if s["extra"].get("reason") == "schedule"]

    d.proc.send_signal(signal.SIGSTOP)
    try:
        clock.write_text(str(offset_to(1800) + 3 * 3600))  # three runs passed while it was suspended
    finally:
        d.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: len(scheduled()) >= 1, 20, "the late set", d)
    now = time.time() + float(clock.read_text())
    following = json.loads(d.ok("--json", "status"))["sources"][0]["next_runs"]["incremental"]
    assert now < following <= now + 1800 + 5, (now, following)  # the next hour, not one of the missed ones
    clock.write_text(str(offset_to(1) + 3 * 3600))  # a second before it
    wait_for(lambda: len(scheduled()) >= 2, 20, "the next scheduled set", d)
    assert len(scheduled()) == 2, scheduled()  # a burst of the missed runs would have come before it
    assert d.log().count("scheduled incremental set due for source 'src'") == 2, d.log()
    assert d.terminate(30)[0] == 0
