"""Skip-if-unchanged through the real daemon and its real scheduler and change journal: at the
same cron minute an unchanged watched source records nothing new (and says so in the log),
while a changed one gets its set; with daemon.skip_unchanged = false the unchanged one gets a
set too. Both daemons run side by side on a clock the test moves (clocked_cairnd.py): the
hourly schedule is half an hour away while the sets are prepared, then three seconds away."""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import time

from cairnd_harness import init_repo

SCHEDULED_WAIT = 60.0  # three clocked seconds plus the sets, on a loaded machine
LAUNCHER = (sys.executable, os.path.join(os.path.dirname(__file__), "clocked_cairnd.py"))


def offset_to(seconds_before_the_hour: float) -> float:
    """The clock offset that puts the daemons' local time that long before the next full hour."""
    now = datetime.datetime.now().astimezone()
    into_hour = now.minute * 60 + now.second + now.microsecond / 1e6
    return 3600 - into_hour - seconds_before_the_hour


def config_text(base, rundir: str, skip: bool) -> tuple[str, str]:
    sock = os.path.join(rundir, f"sk-{int(skip)}.sock")
    repo = init_repo(str(base / "repo"))
    lines = ["[repository]", f'path = "{repo}"', "[daemon]", f'socket = "{sock}"',
             f'state_dir = "{base / "state"}"', f"skip_unchanged = {'true' if skip else 'false'}"]
    for name in ("quiet", "busy"):
        lines += ["[[source]]", f'name = "{name}"', f'paths = ["{base / name}"]',
                  'schedule = { incremental = "0 * * * *" }']
    path = base / "c.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path), sock


def sets_of(d, source: str) -> list[dict]:
    return json.loads(d.ok("--json", "sets", "--source", source))


def journal_clean(d, source: str) -> bool:
    s = [x for x in json.loads(d.ok("--json", "status"))["sources"] if x["name"] == source][0]
    return s["journal_state"] == "complete" and s["pending_paths"] == 0


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_scheduled_set_of_an_unchanged_source_is_skipped(start_daemon, tmp_path, rundir, monkeypatch):
    clock = tmp_path / "clock-offset"
    clock.write_text(str(offset_to(1800)))
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    daemons = {}
    for skip in (True, False):  # the same sources and schedule; only skip_unchanged differs
        base = tmp_path / f"skip-{skip}"
        for name in ("quiet", "busy"):
            (base / name).mkdir(parents=True)
            (base / name / "f.txt").write_text(name)
        config, sock = config_text(base, rundir, skip)
        d = daemons[skip] = start_daemon("--config", config, socket_path=sock, prefix=LAUNCHER)
        for name in ("quiet", "busy"):
            d.ok("backup", "--source", name, "--level", "full")
    for skip, d in daemons.items():
        wait_for(lambda d=d: journal_clean(d, "quiet"), 20, "the journal of 'quiet' to be complete")
        (tmp_path / f"skip-{skip}" / "busy" / "f.txt").write_text("changed")
    clock.write_text(str(offset_to(3)))
    for d in daemons.values():
        assert len(sets_of(d, "busy")) == 1  # nothing scheduled ran yet
        d.proc.send_signal(signal.SIGHUP)  # the scheduler recomputes its next run from the moved clock
    for d in daemons.values():
        wait_for(lambda d=d: len(sets_of(d, "busy")) >= 2, SCHEDULED_WAIT, "the scheduled set of the changed source")
    skipping, taking = daemons[True], daemons[False]
    wait_for(lambda: "skipped scheduled incremental set of source 'quiet': nothing changed" in skipping.log(),
             30, "the skip to be logged")
    assert len(sets_of(skipping, "quiet")) == 1
    wait_for(lambda: len(sets_of(taking, "quiet")) >= 2, 30, "the scheduled set of the unchanged source")
    assert "skipped scheduled" not in taking.log()
