"""SIGKILL of the real daemon while a scheduled set is inside its cold window: the next start
thaws the window, and catches the scheduled set up (it was never committed) instead of waiting
for the schedule's next time, as it does for a set a stop (SIGTERM) cut. A scheduled set that
ended before the kill is not taken again."""

from __future__ import annotations

import json
import os
import sys
import time

from cairnd_harness import init_repo, next_local, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def test_a_scheduled_set_cut_by_a_kill_is_caught_up(start_daemon, rundir, tmp_path, monkeypatch) -> None:
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(10_000))
    clock = tmp_path / "clock-offset"
    clock.write_text("0")
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    hooks, hold = tmp_path / "hooks.log", tmp_path / "hold"
    hold.touch()
    # the freeze hook holds the set while `hold` exists: the kill finds it inside the window
    freeze = json.dumps(["sh", "-c", f'echo freeze >> "{hooks}"; while [ -e "{hold}" ]; do sleep 0.05; done'])
    thaw = json.dumps(["sh", "-c", f'echo thaw >> "{hooks}"'])
    init_repo(repo)
    sock = os.path.join(rundir, "k.sock")
    cfg = os.path.join(rundir, "k.toml")
    with open(cfg, "w", encoding="utf-8") as f:
        f.write(f'[repository]\npath = "{repo}"\n\n[daemon]\nsocket = "{sock}"\n'
                f'state_dir = "{os.path.join(rundir, "state")}"\n\n[[source]]\nname = "app"\npaths = ["{src}"]\n'
                f'watch = false\nschedule = {{ full = "0 4 * * *", incremental = "0 5 * * *" }}\n'
                f'quiesce = {{ mode = "cold", freeze = {freeze}, thaw = {thaw}, timeout = "60s" }}\n')

    def said() -> list[str]:
        return hooks.read_text().split() if hooks.exists() else []

    launcher = (sys.executable, os.path.join(HERE, "clocked_cairnd.py"))
    d = start_daemon("--config", cfg, socket_path=sock, prefix=launcher)
    clock.write_text(str(next_local(4, time.time()) - 2 - time.time()))
    d.proc.send_signal(1)  # SIGHUP: the scheduler recomputes its next runs from the moved clock
    wait_until(lambda: said() == ["freeze"], 40, "the scheduled full to freeze")
    d.proc.kill()
    d.proc.wait(10)
    hold.unlink()

    d2 = start_daemon("--config", cfg, socket_path=sock, prefix=launcher)
    assert said()[:2] == ["freeze", "thaw"]  # thawed before it served
    sets = wait_until(lambda: json.loads(d2.ok("--json", "sets")), 40, "the scheduled full to be caught up")
    assert [s["level"] for s in sets] == ["full"], (sets, d2.log())
    assert "missed while the daemon was down; it is caught up now" in d2.log(), d2.log()
    assert said() == ["freeze", "thaw", "freeze", "thaw"]

    # a scheduled set that ended is not taken again after a kill
    record = os.path.join(rundir, "state", "schedule.json")
    wait_until(lambda: not json.loads(open(record, encoding="utf-8").read()).get("taken"), 10,
          "the schedule record to forget the ended set")  # the scheduler looks every second while one runs
    d2.proc.kill()
    d2.proc.wait(10)
    d3 = start_daemon("--config", cfg, socket_path=sock, prefix=launcher)
    assert "caught up now" not in d3.log(), d3.log()
    assert len(json.loads(d3.ok("--json", "sets"))) == 1
    assert d3.terminate(30)[0] == 0, d3.log()
