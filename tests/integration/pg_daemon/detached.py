"""Starting and stopping the test applications (app.py, writer.py, multiapp.py) from hooks.

Each application runs detached from the hook that starts it (its own session, so the hook
returns) and announces itself by writing its pid file; it removes that file after its last
write when it gets SIGTERM. What always holds: `launch` returns 0 only once the pid file
exists, `stop` only once it is gone again (or it never existed); either gives up after
`timeout` seconds with a line on stderr and exit status 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def launch(argv: list[str], pidfile: str, what: str, timeout: float = 30.0, stderr: str | None = None) -> int:
    """Start `argv` detached and wait for it to write `pidfile`; `stderr`: a file its errors go to."""
    with open(stderr or os.devnull, "ab") as err:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                         start_new_session=True)
    end = time.monotonic() + timeout
    while not os.path.exists(pidfile):
        if time.monotonic() > end:
            print(f"{what} did not start", file=sys.stderr)
            return 1
        time.sleep(0.02)
    return 0


def stop(pidfile: str, what: str, timeout: float = 30.0) -> int:
    """SIGTERM the process named in `pidfile` and wait until it has removed that file."""
    try:
        with open(pidfile) as f:
            pid = int(f.read())
    except FileNotFoundError:
        return 0
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while os.path.exists(pidfile):
        if time.monotonic() > end:
            print(f"{what} {pid} did not stop", file=sys.stderr)
            return 1
        time.sleep(0.01)
    return 0
