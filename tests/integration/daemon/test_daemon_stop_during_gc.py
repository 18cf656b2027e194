"""`systemctl stop` (SIGTERM) while a scheduled retention and garbage collection run (or a long
verify) is in progress, against the real daemon: the run stops before its next step, the log says it was
interrupted by the stop and that the repository is consistent (not that retention failed), the
stop is clean (exit 0, the gc lock released), and the next start says the same once, in its log
and in `cairn status`, reports it as no source's failure, and the next run finishes the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from cairnd_harness import CAIRN, env_for, init_repo, next_local, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def _config(path: str, repo: str, sock: str, src: str) -> str:
    init_repo(repo)
    lines = ["[repository]", f'path = "{repo}"', 'gc = "0 4 * * *"', "", "[daemon]", f'socket = "{sock}"',
             f'state_dir = "{os.path.join(os.path.dirname(sock), "state")}"', 'host = "alpha"', "",
             "[[source]]", 'name = "app"', f'paths = ["{src}"]', "watch = false", "keep = { last = 1 }"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_a_stop_during_scheduled_gc_is_reported_as_an_interruption(start_daemon, rundir, tmp_path, monkeypatch):
    repo, src, gate = str(tmp_path / "repo"), tmp_path / "src", tmp_path / "gate"
    src.mkdir()
    gate.mkdir()
    clock = tmp_path / "clock-offset"
    clock.write_text("0")
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    monkeypatch.setenv("CAIRN_TEST_GC_GATE", str(gate))
    sock = os.path.join(rundir, "gc.sock")
    cfg = _config(os.path.join(rundir, "gc.toml"), repo, sock, str(src))
    d = start_daemon("--config", cfg, socket_path=sock,
                     prefix=(sys.executable, os.path.join(HERE, "gc_gate_cairnd.py")))
    sets = []
    for i in range(3):
        for old in src.iterdir():
            old.unlink()
        (src / f"f{i}").write_bytes(os.urandom(200_000))
        sets.append(d.ok("backup", "--level", "full").strip().splitlines()[-1])

    # the daemon's clock two seconds before 04:00: the scheduled run starts and holds in its marking phase
    clock.write_text(str(next_local(4, time.time()) - 2 - time.time()))
    d.proc.send_signal(1)  # SIGHUP: the retention thread recomputes its next run from the moved clock
    wait_until(lambda: (gate / "reached").exists(), 40, "the scheduled gc run to reach its marking phase")
    code, took = d.terminate(30)
    log = d.log()
    assert code == 0, log
    assert took < 10, (took, log)
    assert "scheduled retention and garbage collection interrupted by the daemon's stop after " in log, log
    assert "the repository is consistent (garbage collection is crash-safe" in log, log
    assert "scheduled retention failed" not in log and "level=error" not in log, log
    assert not os.listdir(os.path.join(repo, "locks")), os.listdir(os.path.join(repo, "locks"))

    # the next start (its clock real again): one warning, the same in status, no source's failure
    clock.write_text("0")
    d2 = start_daemon("--config", cfg, socket_path=sock,
                      prefix=(sys.executable, os.path.join(HERE, "clocked_cairnd.py")))
    log2 = d2.log()
    assert log2.count("the last retention and garbage collection run, started ") == 1, log2
    assert "did not finish: interrupted by the daemon's stop after " in log2, log2
    assert "level=error" not in log2, log2
    status = json.loads(d2.ok("--json", "status"))
    gc = status["retention"]
    assert gc["last_result"].startswith("interrupted by the daemon's stop after "), gc
    assert "the next run does the rest" in gc["last_result"], gc
    assert gc["last_run"], gc
    assert all(s["last_failure"] is None for s in status["sources"]), status["sources"]
    assert "interrupted by the daemon's stop" in d2.ok("status")
    # the sets it forgot before the stop stay forgotten; the repository checks clean; a run now finishes
    left = [s["id"] for s in json.loads(d2.ok("--json", "sets"))]
    assert left == [sets[2]], (left, sets)
    assert "repository ok: 1 set, 3 packs" in d2.ok("verify", "--read-data")  # the forgotten sets' packs wait
    d2.ok("prune")
    assert "repository ok: 1 set, 1 pack" in d2.ok("verify", "--read-data")
    assert d2.terminate(30)[0] == 0, d2.log()


def test_a_stop_during_a_long_verify_says_the_stop_ended_it(start_daemon, rundir, tmp_path, monkeypatch):
    """`cairn verify` (a timer's, there is no scheduled verify in the daemon) still running past
    the stop's grace for calls is cut: the log says the daemon's stop ended it and that it
    changed nothing, not that its client went away; the client fails with one line."""
    repo, src, gate = str(tmp_path / "repo"), tmp_path / "src", tmp_path / "gate"
    src.mkdir()
    gate.mkdir()
    (src / "f").write_bytes(os.urandom(100_000))
    monkeypatch.setenv("CAIRN_TEST_VERIFY_GATE", str(gate))
    sock = os.path.join(rundir, "v.sock")
    cfg = _config(os.path.join(rundir, "v.toml"), repo, sock, str(src))
    d = start_daemon("--config", cfg, socket_path=sock,
                     prefix=(sys.executable, os.path.join(HERE, "verify_gate_cairnd.py")))
    d.ok("backup")
    client = subprocess.Popen([CAIRN, "--socket", sock, "verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env_for())
    wait_until(lambda: (gate / "reached").exists(), 30, "the verify to begin")
    code, _ = d.terminate(30)
    out, err = client.communicate(timeout=30)
    log = d.log()
    assert code == 0, log
    assert "the daemon's stop ends a running verify" in log, log
    stopped = [line for line in log.splitlines() if "verify stopped:" in line]  # (unless the exit came first)
    assert all("verify stopped: verify interrupted by the daemon's stop; it changes nothing" in x for x in stopped), log
    assert "went away" not in log and "level=error" not in log, log
    assert client.returncode != 0 and len([x for x in err.splitlines() if x.startswith("cairn: error:")]) == 1, err
