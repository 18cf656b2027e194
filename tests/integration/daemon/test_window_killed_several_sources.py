"""SIGKILL of cairnd while backups of two sources are each inside their quiesce window (cold
windows, a dump command holding each set there): at the next start both applications are thawed
before the daemon serves, one log line each, and the next backup of each source succeeds,
restores identical, and verify --read-data is clean."""

from __future__ import annotations

import json
import os
import subprocess
import time

from cairnd_harness import CAIRN, env_for, snapshot, write_config

SOURCES = ("app1", "app2")


def wait_for(cond, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_kill_inside_two_windows_thaws_both_and_the_next_sets_succeed(start_daemon, rundir, tmp_path) -> None:
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {})
    go = tmp_path / "go"
    files: dict[str, dict] = {}
    with open(config, "a", encoding="utf-8") as f:
        for name in SOURCES:
            src = tmp_path / name
            src.mkdir()
            (src / "a.bin").write_bytes(os.urandom(200_000))
            log, dumping = tmp_path / f"{name}.hooks", tmp_path / f"{name}.dumping"
            files[name] = {"src": src, "log": log, "dumping": dumping}
            dump = ["sh", "-c", f'touch "{dumping}"; while [ ! -e "{go}" ]; do sleep 0.05; done; echo dump']
            f.write(f'\n[[database]]\nname = "{name}db"\nkind = "command"\ndump = {json.dumps(dump)}\n'
                    'restore = ["true"]\ntimeout = "120s"\n'
                    f'\n[[source]]\nname = "{name}"\npaths = ["{src}"]\nwatch = false\ndatabase = "{name}db"\n'
                    f'quiesce = {{ mode = "cold", freeze = ["sh", "-c", "echo freeze >> {log}"], '
                    f'thaw = ["sh", "-c", "echo thaw >> {log}"], timeout = "30s", max_window = "600s" }}\n')

    def hooks(name: str) -> list[str]:
        log = files[name]["log"]
        return log.read_text().split() if log.exists() else []

    d1 = start_daemon("--config", config, socket_path=sock)
    clients = [subprocess.Popen([CAIRN, "--socket", sock, "backup", "--source", name, "--level", "full"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for())
               for name in SOURCES]
    try:
        for name in SOURCES:
            wait_for(files[name]["dumping"].exists, f"the dump of {name} inside its window")
        d1.proc.kill()
        d1.proc.wait(10)
        for c in clients:
            c.wait(30)
        assert [hooks(n) for n in SOURCES] == [["freeze"], ["freeze"]]  # both frozen, nobody thawed
    finally:
        go.touch()  # dump commands the daemon's death did not end (it should) end now

    d2 = start_daemon("--config", config, socket_path=sock)
    assert [hooks(n) for n in SOURCES] == [["freeze", "thaw"], ["freeze", "thaw"]]  # before it served
    log = d2.log()
    for name in SOURCES:  # one line of explanation each; the rest is detail
        said = [ln for ln in log.splitlines() if f"source '{name}'" in ln and "level=info" not in ln]
        assert len(said) == 1 and "thawed the cold window left open since" in said[0], log[-3000:]
    assert "Traceback" not in log, log
    for name in SOURCES:
        sid = json.loads(d2.ok("--json", "backup", "--source", name, "--level", "full", timeout=120))["id"]
        assert hooks(name) == ["freeze", "thaw", "freeze", "thaw"]
        target = tmp_path / f"restored-{name}"
        d2.ok("restore", sid, "--target", str(target), timeout=120)
        want = {p: v for p, v in snapshot(str(files[name]["src"])).items() if v[0] == "file"}
        got = {p: v for p, v in snapshot(str(target)).items() if p in want}
        assert {p: v[5:] for p, v in got.items()} == {p: v[5:] for p, v in want.items()}
    report = json.loads(d2.cli("--json", "verify", "--read-data", timeout=120).stdout)
    assert report["ok"] and not report["errors"] and not report["warnings"], report
