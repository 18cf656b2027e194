"""`systemctl stop` (SIGTERM) while a scheduled set is being taken, against the real daemon:
the set is cancelled and logged as interrupted by the stop (not as failed), `cairn status`
shows it after the restart as the source's last failure, "aborted", and the next start
catches the scheduled set up instead of waiting for its next scheduled time."""

from __future__ import annotations

import json
import os
import sys
import time

from cairnd_harness import init_repo, next_local, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def test_a_scheduled_set_cut_by_the_stop_is_reported_and_caught_up(start_daemon, rundir, tmp_path, monkeypatch):
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(10_000))
    clock = tmp_path / "clock-offset"
    clock.write_text("0")
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    reached, go = tmp_path / "freezing", tmp_path / "go"
    # the freeze hook holds the set until `go` exists: the stop finds it running
    freeze = json.dumps(["sh", "-c", f'touch "{reached}"; while [ ! -e "{go}" ]; do sleep 0.05; done'])
    init_repo(repo)
    sock = os.path.join(rundir, "b.sock")
    cfg = os.path.join(rundir, "b.toml")
    with open(cfg, "w", encoding="utf-8") as f:
        f.write(f'[repository]\npath = "{repo}"\n\n[daemon]\nsocket = "{sock}"\n'
                f'state_dir = "{os.path.join(rundir, "state")}"\n\n[[source]]\nname = "app"\npaths = ["{src}"]\n'
                f'watch = false\nschedule = {{ full = "0 4 * * *" }}\n'
                f'quiesce = {{ mode = "cold", freeze = {freeze}, thaw = ["true"], timeout = "60s" }}\n')
    launcher = (sys.executable, os.path.join(HERE, "clocked_cairnd.py"))
    d = start_daemon("--config", cfg, socket_path=sock, prefix=launcher)
    clock.write_text(str(next_local(4, time.time()) - 2 - time.time()))
    d.proc.send_signal(1)  # SIGHUP: the scheduler recomputes its next runs from the moved clock
    wait_until(reached.exists, 40, "the scheduled full to freeze")
    code, _ = d.terminate(30)
    log = d.log()
    assert code == 0, log
    assert "full backup of source 'app' (schedule) interrupted by the daemon's stop: nothing of it was " \
           "committed" in log, log
    assert "scheduled full set of source 'app' was interrupted by the daemon's stop: the next start catches it " \
           "up" in log, log
    assert "level=error" not in log, log

    go.touch()
    d2 = start_daemon("--config", cfg, socket_path=sock, prefix=launcher)
    status = json.loads(d2.ok("--json", "status"))
    failure = status["sources"][0]["last_failure"]
    assert failure and failure["status"] == "aborted" and "the daemon is stopping" in failure["message"], failure
    sets = wait_until(lambda: json.loads(d2.ok("--json", "sets")), 40, "the scheduled full to be caught up")
    assert [s["level"] for s in sets] == ["full"], sets
    assert "missed while the daemon was down; it is caught up now" in d2.log(), d2.log()
    assert d2.terminate(30)[0] == 0, d2.log()
