"""Database tools the daemon runs (dumps, restores) never outlive it.

- `guarded_argv(argv)`: the argv that runs a tool under a small guard, this very file run as a
  program (standard library only). The daemon starts the guard in a new session; the guard
  asks the kernel for SIGTERM when the daemon dies (PR_SET_PDEATHSIG), exits at once if the
  daemon already died between the fork and that request (its parent is no longer the daemon),
  then starts the tool in a process group of its own and waits for it. On SIGTERM — the
  daemon died, or the daemon ends the run (`stop_run`) — the guard kills the tool's whole
  process group (the tool and whatever it started: a dump's parallel workers), reaps the tool
  and dies of SIGKILL. Otherwise it exits with the tool's status (a tool killed by a signal
  makes it die of the same signal). Every process of the run carries `MARKER=<token>` in its
  environment.
- Work directories: `new_work_dir(state_dir, name)` makes a fresh, uniquely named directory
  under `<state_dir>/dumps/` for one run; `write_run_record(work, pgid, token)` durably records
  the run's process group and token in it (`run.json`). A directory belongs to one run only and
  is removed after it, so a tool that somehow outlived its daemon can never write into a later
  run's dump.
- `reap_leftovers(state_dir)`, called first at start (before any thaw): for every leftover work
  directory, kill every process of its recorded group that still carries its token (a daemon
  killed between the fork and the guard's request), then remove the directory.
- `kill_running()`: kill the process group of every tool this daemon runs now (shutdown).
- `kill_marked(pgid, token)`: kill every process carrying a run's token (at start for leftovers;
  and when a run is ended whose guard is already gone, killed on its own).

What always holds: a tool runs in its own process group under a guard that kills the group when
the daemon dies; a process is killed at start only if it carries the token of a recorded run.
Note that the kernel's "parent death" is the death of the *thread* that started the guard: a
tool must be started from a thread that outlives it (the set's job thread, or the RPC's), never
from a short-lived helper thread.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from typing import Protocol

MARKER = "CAIRN_TOOL_RUN"
RUN_RECORD = "run.json"
DUMPS_DIR = "dumps"
PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 125  # the guard found its daemon gone before the tool started
EXIT_NOT_RUN = 127  # the tool could not be started


class Killable(Protocol):
    def kill(self) -> None: ...


_running: set[Killable] = set()
_running_lock = threading.Lock()


def guarded_argv(argv: list[str]) -> list[str]:
    """The argv that runs `argv` under the guard (see the module docstring)."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), "--", *argv]


def stop_run(guard: int) -> None:
    """Ask the guard `guard` to kill its tool's process group and die (no error when it is gone)."""
    try:
        os.kill(guard, signal.SIGTERM)
    except ProcessLookupError:
        pass


def kill_guard_group(guard: int) -> None:
    """The backstop when a guard does not end: kill its own process group."""
    try:
        os.killpg(guard, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def register(run: Killable) -> None:
    """Count `run` among the running tools (`kill_running` kills it)."""
    with _running_lock:
        _running.add(run)


def unregister(run: Killable) -> None:
    with _running_lock:
        _running.discard(run)


def kill_running() -> int:
    """Kill every running tool's process group; return how many runs were killed."""
    with _running_lock:
        runs = list(_running)
    for run in runs:
        run.kill()
    return len(runs)


def dumps_dir(state_dir: str) -> str:
    """The directory holding the dumps' work directories."""
    return os.path.join(state_dir, DUMPS_DIR)


def new_work_dir(state_dir: str, name: str) -> str:
    """A fresh work directory for one run of `name` ('<source>.<database>'), unique to it."""
    root = dumps_dir(state_dir)
    os.makedirs(root, mode=0o700, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{name}.", dir=root)


def write_run_record(work: str, pgid: int, token: str) -> None:
    """Durably record the process group and token of the tool running for `work`."""
    from cairn.fsio.durable import write_atomic

    write_atomic(os.path.join(work, RUN_RECORD), json.dumps({"pgid": pgid, "token": token}).encode())


def reap_leftovers(state_dir: str) -> list[int]:
    """Kill the tools of leftover work directories (by recorded group and token), remove the
    directories; return the pids killed. Call at start, before anything else runs a tool."""
    root = dumps_dir(state_dir)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    killed: list[int] = []
    for name in names:
        path = os.path.join(root, name)
        try:
            with open(os.path.join(path, RUN_RECORD), encoding="utf-8") as f:
                rec = json.load(f)
            killed += kill_marked(int(rec["pgid"]), str(rec["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no record (the tool never started) or an unreadable one: nothing can be ours
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    return killed


def kill_marked(pgid: int, token: str) -> list[int]:
    """Kill every process whose environment holds the run's token, with the process groups they
    lead (the guard's, recorded as `pgid`, and the tool's)."""
    want = f"{MARKER}={token}".encode()
    ours = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if want in f.read().split(b"\0"):
                    ours.append(int(entry))
        except OSError:
            continue
    for pid in ours:
        try:
            if os.getpgid(pid) in (pid, pgid):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    return ours


# -- the guard (run as a program: standard library only) --------------------------------------


def _guard(args: list[str]) -> int:
    import ctypes

    daemon, argv = int(args[0]), args[2:]
    state = {"tool": 0, "stop": False}

    def stop(_signum: int, _frame: object) -> None:  # the daemon died, or asks the run to end
        state["stop"] = True
        if state["tool"]:
            _kill_group(state["tool"])

    signal.signal(signal.SIGTERM, stop)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        print(f"unable to watch the daemon: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return EXIT_ORPHANED
    if os.getppid() != daemon:  # the daemon died before the request: nothing may start
        return EXIT_ORPHANED
    try:
        tool = os.posix_spawnp(argv[0], argv, os.environ, setpgroup=0,
                               setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM))
    except OSError as exc:
        print(f"unable to run {os.path.basename(argv[0])}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    state["tool"] = tool
    if state["stop"]:
        _kill_group(tool)
    _pid, status = os.waitpid(tool, 0)  # reaped here, whatever ended it
    if state["stop"]:
        _kill_group(tool)  # what the tool started and left in its group
        os.kill(os.getpid(), signal.SIGKILL)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.waitstatus_to_exitcode(status)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
