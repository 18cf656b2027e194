"""What the operator sees of a quiesce window that went wrong, through the real daemon and client
(hooks only, no database): a thaw hook that fails is a warning of `cairn backup` and the
source's last failure in `cairn status` (the set itself is whole), and a set cut short by a
kill -9 of the daemon is reported by the next daemon as that source's last failure."""

from __future__ import annotations

import json
import os
import subprocess
import time

from cairnd_harness import CAIRN, write_config


def _config(tmp_path, rundir: str, src: str, thaw: list[str], freeze: list[str]) -> tuple[str, str]:
    sock = os.path.join(rundir, "cairnd.sock")
    path = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": src})
    with open(path, "a", encoding="utf-8") as f:
        f.write(f'quiesce = {{ mode = "cold", freeze = {json.dumps(freeze)}, thaw = {json.dumps(thaw)}, '
                'timeout = "60s" }\n')
    return path, sock


def test_a_failing_thaw_hook_is_a_warning_and_the_sources_last_failure(start_daemon, rundir, tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    config, sock = _config(tmp_path, rundir, str(src), thaw=["sh", "-c", "echo cannot start the app >&2; exit 4"],
                           freeze=["true"])
    d = start_daemon("--config", config, socket_path=sock)
    r = d.cli("backup", "--level", "full")
    assert r.returncode == 0, r.stderr  # the set is whole: captured while the application was stopped
    assert "cairn: warning: thaw hook (sh -c 'echo cannot start the app >&2; exit 4') failed with exit code 4: " \
        "cannot start the app" in r.stderr and "(the application may still be stopped)" in r.stderr, r.stderr
    status = d.ok("status")
    assert "last failure:" in status and "full thaw failed: set " in status and "cannot start the app" in status, \
        status
    s = json.loads(d.ok("--json", "status"))
    src_status = next(x for x in s["sources"] if x["name"] == "app")
    assert src_status["last_failure"]["status"] == "thaw failed"


def test_a_set_cut_short_by_kill_9_is_the_sources_last_failure_after_the_restart(start_daemon, rundir,
                                                                                tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    frozen = tmp_path / "frozen"
    config, sock = _config(tmp_path, rundir, str(src), thaw=["true"],
                           freeze=["sh", "-c", f"touch {frozen}; [ -e {tmp_path / 'go'} ] || exec sleep 60"])
    d = start_daemon("--config", config, socket_path=sock)
    backup = subprocess.Popen([CAIRN, "--socket", sock, "backup", "--level", "full"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    end = time.monotonic() + 30
    while not frozen.exists():
        assert time.monotonic() < end, "the freeze hook did not run"
        time.sleep(0.02)
    d.proc.kill()
    d.proc.wait(10)
    backup.wait(30)
    d2 = start_daemon("--config", config, socket_path=sock)
    assert "the previous daemon stopped while it took a set" in d2.log()
    s = json.loads(d2.ok("--json", "status"))
    failure = next(x for x in s["sources"] if x["name"] == "app")["last_failure"]
    assert failure["status"] == "aborted" and "nothing of it was committed" in failure["message"], failure
    assert failure["level"] == "full"
    assert json.loads(d2.ok("--json", "sets")) == []
    # a set that commits is not reported by the next start, and a restart does not report the old one again
    (tmp_path / "go").touch()
    d2.ok("backup", "--level", "full")
    d2.proc.kill()
    d2.proc.wait(10)
    d3 = start_daemon("--config", config, socket_path=sock)
    assert "the previous daemon stopped while it took a set" not in d3.log()


def test_a_write_into_the_source_inside_a_cold_window_is_reported(start_daemon, rundir, tmp_path) -> None:
    # Two cold sources whose freeze hooks both return 0. In 'leaky' a writer the freeze hook did
    # not stop writes into the source while it is frozen (played, at a fixed point of the window,
    # by the source's dump command, which runs after every freeze hook); 'quiet' stands still.
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {})
    dirs = {}
    with open(config, "a", encoding="utf-8") as f:
        for name in ("leaky", "quiet"):
            d = dirs[name] = tmp_path / name
            d.mkdir()
            (d / "a.txt").write_text("a\n")
            write = f"echo late > {d / 'written-while-frozen.txt'}; " if name == "leaky" else ""
            f.write(f'\n[[database]]\nname = "{name}db"\nkind = "command"\n'
                    f'dump = {json.dumps(["sh", "-c", write + "echo dump"])}\nrestore = ["true"]\n'
                    f'\n[[source]]\nname = "{name}"\npaths = ["{d}"]\nwatch = true\ndatabase = "{name}db"\n'
                    'quiesce = { mode = "cold", freeze = ["true"], thaw = ["true"] }\n')
    d = start_daemon("--config", config, socket_path=sock)
    for level in ("full", "incremental"):
        r = d.cli("--json", "backup", "--source", "quiet", "--level", level)
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
        s = json.loads(r.stdout)
        assert "changed_files" not in s["extra"]["window"] and s["status"] == "ok"
        r = d.cli("backup", "--source", "leaky", "--level", level)
        assert r.returncode == 0, r.stderr  # committed, but not as the quiet set it claims to be
        written = str(dirs["leaky"] / "written-while-frozen.txt")
        assert "paths were written after the freeze hooks returned" in r.stderr and written in r.stderr, r.stderr
        assert "the application was not quiet" in r.stderr
        s = json.loads(d.ok("--json", "sets", "--source", "leaky"))[-1]
        assert s["status"] == "fuzzy" and s["extra"]["window"]["changed_files"] == [written], s
        assert "fuzzy" in d.ok("sets", "--source", "leaky").splitlines()[-1]
        os.unlink(written)


def test_a_slow_on_failure_hook_does_not_turn_a_clean_stop_into_an_abandoned_set(start_daemon, rundir,
                                                                                 tmp_path) -> None:
    # SIGTERM inside a window: the set is cancelled and thawed at once; its on_failure hooks still
    # hear of it, but a slow one (a notification stuck on the network) no longer holds the stop
    # past shutdown_timeout, where the set counted as abandoned and the daemon exited 1.
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    frozen, thawed, reported = tmp_path / "frozen", tmp_path / "thawed", tmp_path / "reported"
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)},
                          shutdown_timeout="12s")
    on_failure = [["sh", "-c", f'echo "$CAIRN_ERROR" > {reported}'], ["sleep", "60"]]
    with open(config, "a", encoding="utf-8") as f:
        f.write(f'quiesce = {{ mode = "cold", freeze = ["sh", "-c", "touch {frozen}; exec sleep 60"], '
                f'thaw = ["touch", "{thawed}"], timeout = "60s", on_failure = {json.dumps(on_failure)} }}\n')
    d = start_daemon("--config", config, socket_path=sock)
    backup = subprocess.Popen([CAIRN, "--socket", sock, "backup", "--level", "full"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 30
    while not frozen.exists():
        assert time.monotonic() < end, "the freeze hook did not run"
        time.sleep(0.02)
    started = time.monotonic()
    d.proc.terminate()
    code = d.proc.wait(40)
    took = time.monotonic() - started
    _out, err = backup.communicate(timeout=30)
    assert code == 0 and took < 12, (code, took, d.log()[-2000:])
    assert "abandoned" not in d.log()
    assert thawed.exists() and "was cancelled during freeze; thaw ran" in reported.read_text()
    assert backup.returncode == 1, err  # nothing committed
