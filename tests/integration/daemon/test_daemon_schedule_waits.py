"""Scheduled sets are not lost through the real daemon, its real scheduler and client, on a clock
the test moves (clocked_cairnd.py): a scheduled full that falls due while a manual backup of the
source runs waits for it (a warning in the log and in `cairn status`) and is taken when it ends;
a scheduled full whose minute passed while the daemon was stopped is caught up at the next
start. A freeze hook that blocks until the test says so keeps the backups running. The STATUS
line systemd shows names the next scheduled run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from cairnd_harness import CAIRN, env_for, write_config
from test_daemon_skip_unchanged import offset_to

LAUNCHER = (sys.executable, os.path.join(os.path.dirname(__file__), "clocked_cairnd.py"))


def wait_for(predicate, timeout: float, what: str, d=None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}" + (f"\n{d.log()}" if d else "")
        time.sleep(0.1)


def setup(tmp_path, rundir: str, monkeypatch) -> tuple[str, str]:
    """A source 'bulk' with an hourly scheduled full whose freeze hook waits for the file 'go'."""
    clock = tmp_path / "clock-offset"
    clock.write_text(str(offset_to(1800)))  # half an hour before the scheduled minute
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    src = tmp_path / "bulk"
    src.mkdir()
    (src / "f.txt").write_text("data\n")
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"bulk": str(src)},
                          schedules={"bulk": {"full": "0 * * * *"}})
    freeze = ["sh", "-c", f"touch {tmp_path / 'frozen'}; n=0; while [ ! -e {tmp_path / 'go'} ] && [ $n -lt 600 ]; "
              "do sleep 0.05; n=$((n+1)); done"]
    with open(config, "a", encoding="utf-8") as f:
        f.write(f'quiesce = {{ mode = "cold", freeze = {json.dumps(freeze)}, thaw = ["true"], timeout = "60s" }}\n')
    return config, sock


def sets(d) -> list[dict]:
    return json.loads(d.ok("--json", "sets", "--source", "bulk"))


def warnings(d) -> list[str]:
    return json.loads(d.ok("--json", "status"))["daemon"]["warnings"]


def test_a_scheduled_full_due_while_the_source_is_busy_runs_when_it_is_free(start_daemon, tmp_path, rundir,
                                                                            monkeypatch):
    config, sock = setup(tmp_path, rundir, monkeypatch)
    d = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)
    # systemd's STATUS line names the next scheduled run (the full at the next clocked full hour)
    assert any(re.fullmatch(r"STATUS=serving 1 source; next: full of 'bulk' at (\d{4}-\d\d-\d\d )?\d\d:00", m)
               for m in d.notify.messages), d.notify.messages
    manual = subprocess.Popen([CAIRN, "--socket", sock, "backup", "--level", "incremental"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for())
    try:
        wait_for((tmp_path / "frozen").exists, 30, "the manual backup to be inside its window")
        (tmp_path / "clock-offset").write_text(str(offset_to(1)))
        d.proc.send_signal(signal.SIGHUP)  # the scheduler recomputes its next run from the moved clock
        wait_for(lambda: "waits for the running incremental backup (client" in d.log(), 30,
                 "the waiting full to be logged", d)
        line = next(x for x in d.log().splitlines() if "waits for the running" in x)
        assert "level=warning" in line and "scheduled full set of source 'bulk'" in line, line
        assert any("scheduled full set due" in w and "waits for the running incremental backup (client)" in w
                   for w in warnings(d)), warnings(d)
        assert "warning: source 'bulk': the scheduled full set due " in d.ok("status")
        assert sets(d) == []
        (tmp_path / "go").touch()
        assert manual.wait(60) == 0
    finally:
        if manual.poll() is None:
            manual.kill()
            manual.wait(10)
    wait_for(lambda: len(sets(d)) == 2, 30, "the waiting scheduled full")  # looked for every second, not hourly
    scheduled = sets(d)[-1]
    assert scheduled["level"] == "full" and scheduled["extra"]["reason"] == "schedule", scheduled
    wait_for(lambda: warnings(d) == [], 30, "status to stop showing the late full")


def test_a_scheduled_full_missed_while_the_daemon_was_stopped_is_caught_up(start_daemon, tmp_path, rundir,
                                                                           monkeypatch):
    config, sock = setup(tmp_path, rundir, monkeypatch)
    d = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)
    assert d.terminate(30)[0] == 0
    (tmp_path / "clock-offset").write_text(str(offset_to(-30)))  # restarted 30 s after the scheduled minute
    d2 = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)
    wait_for((tmp_path / "frozen").exists, 30, "the catch-up to start")
    assert "scheduled full set of source 'bulk'" in d2.log() and "was missed while the daemon was down" in d2.log()
    status = json.loads(d2.ok("--json", "status"))
    running = next(s for s in status["sources"] if s["name"] == "bulk")["running"]
    assert running["level"] == "full" and running["reason"] == "schedule", running
    assert any("is being taken late (missed while the daemon was down)" in w for w in status["daemon"]["warnings"])
    (tmp_path / "go").touch()
    wait_for(lambda: len(sets(d2)) == 1, 60, "the caught-up full")
    assert sets(d2)[0]["extra"]["reason"] == "schedule"
    # caught up once: a restart in the same hour takes nothing more
    assert d2.terminate(30)[0] == 0
    d3 = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)
    assert "was missed" not in d3.log()
    assert len(sets(d3)) == 1 and warnings(d3) == []
