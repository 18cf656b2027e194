"""A daemon killed (SIGKILL) inside a quiesce window whose thaw then fails at the next start,
through the real cairnd and cairn (hooks only): `cairn status` shows "thaw failed", the next
backup of the source is refused with one error line after retrying the thaw and without freezing
anything, and once the thaw succeeds the next backup thaws, is taken, and status clears."""

from __future__ import annotations

import json
import os
import subprocess
import time

from cairnd_harness import CAIRN, env_for, write_config


def wait_for(cond, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_thaw_that_fails_at_start_is_reported_refuses_backups_and_is_retried(start_daemon, rundir,
                                                                                tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    log, frozen, go, ok = (tmp_path / n for n in ("hooks.log", "frozen", "go", "app-can-start"))
    freeze = ["sh", "-c", f'echo freeze >> "{log}"; touch "{frozen}"; [ -e "{go}" ] || exec sleep 60']
    thaw = ["sh", "-c", f'[ -e "{ok}" ] || {{ echo app will not start >&2; exit 3; }}; echo thaw >> "{log}"']
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)})
    with open(config, "a", encoding="utf-8") as f:
        f.write(f'quiesce = {{ mode = "cold", freeze = {json.dumps(freeze)}, thaw = {json.dumps(thaw)}, '
                'timeout = "20s" }\n')

    def hooks() -> list[str]:
        return log.read_text().split() if log.exists() else []

    def last_failure(d) -> dict | None:
        s = json.loads(d.ok("--json", "status"))
        return next(x for x in s["sources"] if x["name"] == "app")["last_failure"]

    # killed inside the window: the freeze ran, the thaw never did
    d1 = start_daemon("--config", config, socket_path=sock)
    backup = subprocess.Popen([CAIRN, "--socket", sock, "backup", "--level", "full"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env_for())
    wait_for(frozen.exists, "the freeze hook")
    d1.proc.kill()
    d1.proc.wait(10)
    backup.wait(30)
    assert hooks() == ["freeze"]

    # the next start's thaw fails: status says so (not "aborted"), and the record is kept
    d2 = start_daemon("--config", config, socket_path=sock)
    assert "app will not start" in d2.log() and "its record is kept" in d2.log()
    f = last_failure(d2)
    assert f is not None and f["status"] == "thaw failed" and f["level"] == "full", f
    assert "app will not start" in f["message"] and "the application may still be stopped" in f["message"], f
    status = d2.ok("status")
    assert "full thaw failed: the quiesce window of source 'app' left open by the previous daemon did not thaw" \
        in status, status

    # a backup retries the thaw, which still fails: refused in one line, nothing frozen again
    go.touch()  # a freeze that ran would not block now
    r = d2.cli("backup", "--level", "incremental")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("cairn: ") and "the quiesce window of source 'app' left open by a previous daemon still " \
        "does not thaw (thaw hook (sh -c " in err and "') failed with exit code 3: app will not start)" in err, err
    assert hooks() == ["freeze"]  # the thaw was retried (and failed); no freeze hook ran
    f = last_failure(d2)
    assert f["status"] == "thaw failed" and "still does not thaw" in f["message"], f

    # the application can start again: the next backup thaws first, then is taken; status clears
    ok.touch()
    d2.ok("backup", "--level", "full")
    assert hooks() == ["freeze", "thaw", "freeze", "thaw"]
    assert last_failure(d2) is None
    assert len(json.loads(d2.ok("--json", "sets"))) == 1
    windows = os.path.join(rundir, "state", "windows")
    assert [n for n in os.listdir(windows) if n.endswith(".json")] == []  # nothing left for the next start
