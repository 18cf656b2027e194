"""Skip-if-unchanged through the real daemon and its real scheduler and change journal: at the
same cron minute an unchanged watched source records nothing new (and says so in the log),
while a changed one gets its set; with daemon.skip_unchanged = false the unchanged one gets a
set too. Both daemons run side by side, so the test waits for one minute boundary; still slow."""

from __future__ import annotations

import json
import os
import time

import pytest
from cairnd_harness import init_repo

pytestmark = pytest.mark.slow
MINUTE_WAIT = 150.0  # one cron minute plus scheduling on a loaded machine


def config_text(base, rundir: str, skip: bool) -> tuple[str, str]:
    sock = os.path.join(rundir, f"sk-{int(skip)}.sock")
    repo = init_repo(str(base / "repo"))
    lines = ["[repository]", f'path = "{repo}"', "[daemon]", f'socket = "{sock}"',
             f'state_dir = "{base / "state"}"', f"skip_unchanged = {'true' if skip else 'false'}"]
    for name in ("quiet", "busy"):
        lines += ["[[source]]", f'name = "{name}"', f'paths = ["{base / name}"]',
                  'schedule = { incremental = "* * * * *" }']
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


def test_scheduled_set_of_an_unchanged_source_is_skipped(start_daemon, tmp_path, rundir):
    daemons = {}
    for skip in (True, False):  # the same sources and schedule; only skip_unchanged differs
        base = tmp_path / f"skip-{skip}"
        for name in ("quiet", "busy"):
            (base / name).mkdir(parents=True)
            (base / name / "f.txt").write_text(name)
        config, sock = config_text(base, rundir, skip)
        d = daemons[skip] = start_daemon("--config", config, socket_path=sock)
        for name in ("quiet", "busy"):
            d.ok("backup", "--source", name, "--level", "full")
    for skip, d in daemons.items():
        wait_for(lambda d=d: journal_clean(d, "quiet"), 20, "the journal of 'quiet' to be complete")
        (tmp_path / f"skip-{skip}" / "busy" / "f.txt").write_text("changed")
    for d in daemons.values():
        wait_for(lambda d=d: len(sets_of(d, "busy")) >= 2, MINUTE_WAIT, "the scheduled set of the changed source")
    skipping, taking = daemons[True], daemons[False]
    wait_for(lambda: "skipped scheduled incremental set of source 'quiet': nothing changed" in skipping.log(),
             30, "the skip to be logged")
    assert len(sets_of(skipping, "quiet")) == 1
    wait_for(lambda: len(sets_of(taking, "quiet")) >= 2, 30, "the scheduled set of the unchanged source")
    assert "skipped scheduled" not in taking.log()
