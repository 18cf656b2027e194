"""`cairn status` shows the quiesce window open now, through the real cairnd and cairn (hooks and
a dump command, no database server): which source's application is frozen, since when, the
deadline at which the daemon thaws it whatever happens, and the set it is held for; once the
set is taken the window is gone from status. A daemon killed (SIGKILL) inside a window thaws the
application at its next start, logs it, and status says so under the source."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

from cairnd_harness import CAIRN, env_for, write_config

MAX_WINDOW = 600


def wait_for(cond, what: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _held_config(tmp_path, rundir: str) -> tuple[str, str, dict]:
    """Source 'app', cold window: the freeze and thaw hooks succeed at once (and log themselves);
    the dump command, which runs inside the window after the freeze, holds the set there until
    the file 'go' exists."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    files = {n: tmp_path / n for n in ("hooks.log", "dumping", "go")}
    log = files["hooks.log"]
    dump = ["sh", "-c", f'touch "{files["dumping"]}"; while [ ! -e "{files["go"]}" ]; do sleep 0.05; done; echo dump']
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {})
    with open(config, "a", encoding="utf-8") as f:
        f.write(f'\n[[database]]\nname = "appdb"\nkind = "command"\ndump = {json.dumps(dump)}\n'
                'restore = ["true"]\ntimeout = "120s"\n'
                f'\n[[source]]\nname = "app"\npaths = ["{src}"]\nwatch = false\ndatabase = "appdb"\n'
                f'quiesce = {{ mode = "cold", freeze = ["sh", "-c", "echo freeze >> {log}"], '
                f'thaw = ["sh", "-c", "echo thaw >> {log}"], timeout = "30s", max_window = "{MAX_WINDOW}s" }}\n')
    return config, sock, files


def _app(d) -> dict:
    return next(x for x in json.loads(d.ok("--json", "status"))["sources"] if x["name"] == "app")


def _hooks(files: dict) -> list[str]:
    return files["hooks.log"].read_text().split() if files["hooks.log"].exists() else []


def test_status_shows_the_open_window_until_its_set_is_taken(start_daemon, rundir, tmp_path) -> None:
    config, sock, files = _held_config(tmp_path, rundir)
    d = start_daemon("--config", config, socket_path=sock)
    assert _app(d)["window"] is None and "window:" not in d.ok("status")
    before = time.time()
    backup = subprocess.Popen([CAIRN, "--socket", sock, "backup", "--level", "full"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env_for())
    try:
        wait_for(files["dumping"].exists, "the dump inside the window")
        app = wait_for(lambda: (lambda a: a if a["window"] and a["window"]["state"] == "frozen" else None)(_app(d)),
                       "status to show the frozen window")
        w, job = app["window"], app["running"]
        assert _hooks(files) == ["freeze"]
        assert w["mode"] == "cold" and w["max_window"] == MAX_WINDOW, w
        assert before - 1 <= w["opened"] <= w["frozen"] <= time.time(), w
        assert w["deadline"] == w["opened"] + MAX_WINDOW, w
        assert job is not None and w["job"] == job["id"] and w["level"] == "full", (w, job)
        assert w["levels"] == 1 and w["levels_started"] == 1, w
        lines = [ln for ln in d.ok("status").splitlines() if ln.startswith("  window:")]
        assert len(lines) == 1, lines
        assert lines[0].startswith("  window: cold, FROZEN since "), lines
        assert "at the latest (in 9m, max_window 10m)" in lines[0] or "at the latest (in 10m, max_window 10m)" \
            in lines[0], lines
        assert lines[0].endswith(f"; for the full set of job {job['id']}"), lines
        # systemd's STATUS line (`systemctl status cairnd`) says it too
        wait_for(lambda: any(re.search(r"; full backup of 'app' running \d+s( \([^)]*\))?, its cold window frozen "
                                       r"for \d+s", m) for m in d.notify.messages), "the STATUS line")
    finally:
        files["go"].touch()
        out, err = backup.communicate(timeout=60)
    assert backup.returncode == 0, (out, err)
    assert _hooks(files) == ["freeze", "thaw"]
    app = _app(d)
    assert app["window"] is None and app["running"] is None, app
    assert "window:" not in d.ok("status")


def test_a_window_left_open_by_a_killed_daemon_is_thawed_at_start_and_shown(start_daemon, rundir,
                                                                            tmp_path) -> None:
    config, sock, files = _held_config(tmp_path, rundir)
    d1 = start_daemon("--config", config, socket_path=sock)
    backup = subprocess.Popen([CAIRN, "--socket", sock, "backup", "--level", "full"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env_for())
    try:
        wait_for(files["dumping"].exists, "the dump inside the window")
        opened = wait_for(lambda: (_app(d1)["window"] or {}).get("opened"), "status to show the window")
        d1.proc.kill()
        d1.proc.wait(10)
        backup.wait(30)
        assert _hooks(files) == ["freeze"]  # the application is frozen: nobody thawed it
    finally:
        files["go"].touch()  # a dump command the daemon's death did not end (it should) ends now

    d2 = start_daemon("--config", config, socket_path=sock)
    assert _hooks(files) == ["freeze", "thaw"]  # thawed before the daemon served
    assert "source 'app': thawed the cold window left open since" in d2.log(), d2.log()[-3000:]
    app = _app(d2)
    assert app["window"] is None, app
    r = app["recovered_window"]
    assert r is not None and r["mode"] == "cold" and r["thaw_hooks"] == 1, r
    assert abs(r["opened"] - opened) < 0.01 and opened < r["thawed"] <= time.time(), (r, opened)
    assert "thawed the cold window left open since" in r["message"], r
    lines = [ln for ln in d2.ok("status").splitlines() if ln.startswith("  window:")]
    assert len(lines) == 1 and lines[0].startswith("  window: thawed at start "), lines
    assert "the previous daemon left its cold window open (open since " in lines[0], lines
    assert lines[0].endswith("; 1 thaw hook ran"), lines
    assert app["last_failure"]["status"] == "aborted", app  # the set it held was not committed
