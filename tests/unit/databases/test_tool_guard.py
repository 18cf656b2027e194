"""Database tools never outlive their daemon (daemon/databases/tools.py), with real processes:
the guard kills the tool's whole group when the process that started it is killed, refuses to
start a tool once that process is gone, leftover runs are killed by their record (and only
processes carrying the run's token), every run gets its own work directory, and
`kill_running()` ends every tool of the daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cairn.daemon.databases import tools
from cairn.daemon.databases.dump import DumpFailedError, ToolRun
from cairn.daemon.windows.quiesce import recover_windows


def wait_until(what: str, cond: Callable[[], object], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            try:
                if os.getpgid(int(entry)) == pgid:
                    out.append(int(entry))
            except ProcessLookupError:
                continue
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, parent in parents.items() if parent == p]
    return out


def test_the_tool_and_its_children_die_with_the_daemon_that_started_them(tmp_path):
    # a stand-in daemon starts a tool that starts a child of its own, then is killed with SIGKILL
    script = textwrap.dedent(f"""
        import sys, time
        from cairn.daemon.databases.dump import ToolRun
        run = ToolRun(["sh", "-c", "sleep 300 & echo started > {tmp_path}/started; sleep 300"], "db", None)
        proc = run.start()
        print(proc.pid, flush=True)
        time.sleep(300)
    """)
    daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    guard = int(daemon.stdout.readline())  # type: ignore[union-attr]
    wait_until("the tool", lambda: (tmp_path / "started").exists())
    # guard, sh and the background sleep at least (sh may exec its last command: no fourth)
    wait_until("the tool's processes", lambda: len(descendants(guard)) >= 3)
    members = descendants(guard)
    try:
        assert len(members) >= 3
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        wait_until("the tool's group to die", lambda: not any(alive(p) for p in members))
    finally:
        for pid in members:  # whatever a failure left behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_guard_starts_nothing_once_its_daemon_is_gone(tmp_path):
    marker = tmp_path / "ran"
    argv = tools.guarded_argv(["touch", str(marker)])
    argv[argv.index("--") - 1] = "1"  # the daemon that asked is not our parent any more
    r = subprocess.run(argv, capture_output=True, timeout=30)
    assert r.returncode == tools.EXIT_ORPHANED and not marker.exists()
    r = subprocess.run(tools.guarded_argv(["touch", str(marker)]), capture_output=True, timeout=30)
    assert r.returncode == 0 and marker.exists()  # started by the daemon itself, it runs


def test_a_run_left_by_a_killed_daemon_is_killed_by_its_record_at_start(tmp_path):
    state = str(tmp_path / "state")
    work = tools.new_work_dir(state, "app.db")
    (Path(work) / "dump").mkdir()
    # as if the daemon died between the fork and the guard: the tool runs unguarded, recorded
    token = "a" * 32
    env = {**os.environ, tools.MARKER: token}
    left = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True, env=env)
    tools.write_run_record(work, left.pid, token)
    # a process in a group of its own without the token is someone else's: never touched
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    empty = tools.new_work_dir(state, "app.db")  # a run that never started its tool
    try:
        wait_until("the tool's child", lambda: len(group(left.pid)) == 2)
        members = group(left.pid)
        recover_windows(state)  # what the daemon runs first at start
        left.wait(10)
        wait_until("the leftover group to die", lambda: not any(alive(p) for p in members))
        assert alive(other.pid)
        assert not os.path.exists(work) and not os.path.exists(empty)
        assert os.listdir(tools.dumps_dir(state)) == []
    finally:
        other.kill()
        other.wait()
        left.kill()
        left.wait()


def test_every_run_gets_its_own_work_directory_removed_after_it(tmp_path):
    from cairn.daemon.databases import engine_for
    from cairn.daemon.runtime.config import load_config
    from cairn.store.model import BackupRequest
    from cairn.store.repository import Repository

    seen = tmp_path / "dirs"
    cfg_path = tmp_path / "cairn.toml"
    cfg_path.write_text(textwrap.dedent(f"""
        [repository]
        path = "{tmp_path}/repo"

        [daemon]
        socket = "{tmp_path}/cairnd.sock"
        state_dir = "{tmp_path}/state"

        [[database]]
        name = "db"
        kind = "command"
        dump = ["sh", "-c", "echo {{dir}} >> {seen}; ls -A {{dir}} >> {seen}; echo x > {{dir}}/a"]
        restore = ["true"]
    """))
    cfg = load_config(str(cfg_path))
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    src = tmp_path / "src"
    src.mkdir()
    try:
        for level in ("full", "incremental"):
            eng = engine_for(cfg.database("db"), "app", str(tmp_path / "state"))
            eng.prepare()
            eng.start("label")
            try:
                with repo.session(BackupRequest(source="app", paths=(str(src),), level=level)) as sess:
                    eng.capture(sess, lambda: None)
                    sess.commit({"databases": [eng.describe().to_dict()]})
            finally:
                eng.close()
    finally:
        repo.close()
    first, second = seen.read_text().split()  # each directory was empty when its tool began
    assert first != second
    assert not os.path.exists(first) and not os.path.exists(second)
    assert os.listdir(tools.dumps_dir(str(tmp_path / "state"))) == []


def test_kill_running_ends_every_tool_of_the_daemon():
    runs = [ToolRun(["sleep", "300"], f"db{i}", None) for i in range(2)]
    for r in runs:
        r.start()
    errors: list[BaseException] = []

    def finish(r: ToolRun) -> None:
        try:
            r.finish("dump")
        except DumpFailedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(r,), daemon=True) for r in runs]
    for t in threads:
        t.start()
    try:
        assert tools.kill_running() == 2
        for t in threads:
            t.join(10)
        assert len(errors) == 2
        assert all("was killed by signal 9" in e.message for e in errors)  # type: ignore[attr-defined]
        assert tools.kill_running() == 0  # finished runs are no longer counted
    finally:
        for r in runs:
            r.close()


@pytest.mark.parametrize("status", [0, 3])
def test_the_guard_passes_the_tools_exit_status_on(status):
    r = subprocess.run(tools.guarded_argv(["sh", "-c", f"echo out; echo err >&2; exit {status}"]),
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (status, "out\n", "err\n")


def test_a_run_whose_guard_was_killed_on_its_own_is_still_ended_by_kill():
    """The guard killed by something else (the OOM killer, an operator): the tool goes on under
    init, holding its output open. Ending the run (its timeout, the window's deadline, shutdown)
    then kills the tool by the run's token, so the daemon's wait returns."""
    run = ToolRun(["sh", "-c", "sleep 300; echo done"], "db", None)
    run.start()
    try:
        guard = run.proc.pid

        def tool_pids() -> list[int]:
            return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != guard and
                    _environ_has(int(e), f"{tools.MARKER}={run._token}")]

        wait_until("the tool to start", lambda: tool_pids())
        os.kill(guard, signal.SIGKILL)
        wait_until("the guard to die", lambda: run.proc.poll() is not None)
        left = tool_pids()
        assert left and all(alive(p) for p in left), "the tool outlives its killed guard"
        run.kill()
        wait_until("the tool to be killed", lambda: not any(alive(p) for p in left))
    finally:
        run.close()


def _environ_has(pid: int, item: str) -> bool:
    try:
        return item.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
