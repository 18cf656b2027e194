"""A delta restore killed with SIGKILL while it makes files anew (under temporary names) leaves
those temporaries behind, as any process killed with -9 would; the next delta into the target
removes them, with or without --delete, and the target then equals the set: nothing half-written
stays visible. The writer killed is the daemon (a delta it runs for a client on its host) or the
client itself (--stream: it writes the target). The writer is held (held_delta.py) with a
complete temporary file not yet moved into place, and killed there."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from cairn.fsio.delta import TEMP_PREFIX
from cairnd_harness import CAIRN, Daemon, env_for, snapshot

HELD = (sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "held_delta.py"))
BIG = 1 << 20  # several chunks: a fresh file takes several writes before it is renamed into place


def _temps(root: str) -> list[str]:
    return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in files + dirs
            if n.startswith(os.fsdecode(TEMP_PREFIX))]


@pytest.mark.parametrize("who", ["daemon", "client"])
def test_temporaries_of_a_killed_delta_are_removed_by_the_next(start_daemon: Callable[..., Daemon],
                                                                  rundir: str, who: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = os.path.join(rundir, "src")
    rng = random.Random(5)
    for d in ("a", "b"):
        os.makedirs(os.path.join(src, d))
        for i in range(6):
            with open(os.path.join(src, d, f"big{i}"), "wb") as f:
                f.write(rng.randbytes(BIG))
        with open(os.path.join(src, d, "small"), "wb") as f:
            f.write(b"small\n")
    repo, home = os.path.join(rundir, "repo"), os.path.join(rundir, "home")
    hold = os.path.join(rundir, "hold")
    os.makedirs(hold)
    monkeypatch.setenv("CAIRN_TEST_HOLD", hold)
    d = start_daemon("--repo", repo, "--source", src, home=home, prefix=HELD if who == "daemon" else ())
    set_id = json.loads(d.ok("--json", "backup", "--level", "full", timeout=120))["id"]
    target = os.path.join(rundir, "restored")
    d.ok("restore", set_id, "--target", target, timeout=120)
    want = snapshot(target)
    for dd in ("a", "b"):  # every large file is made anew by the delta, under a temporary name first
        for i in range(6):
            os.unlink(os.path.join(target, dd, f"big{i}"))

    stream = ("--stream",) if who == "client" else ()
    with open(os.path.join(hold, "armed"), "w"):
        pass
    client_argv = [*HELD, CAIRN] if who == "client" else [CAIRN]
    client = subprocess.Popen([*client_argv, "--socket", d.socket, "restore", set_id, "--target", target, "--delta",
                               *stream], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for())
    victim = d.proc if who == "daemon" else client
    held = os.path.join(hold, "held")
    try:
        end = time.monotonic() + 120
        while not os.path.exists(held):  # the writer holds a complete temporary file it has not renamed
            assert client.poll() is None, "the delta finished without holding before a rename"
            assert time.monotonic() < end, "the delta never came to move a fresh file into place"
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        try:
            client.wait(60)  # the daemon's client ends once its daemon is gone
        except subprocess.TimeoutExpired:  # a failure above left a held writer behind
            client.kill()
            client.wait(10)
    with open(held, "rb") as f:
        assert os.path.lexists(os.path.join(target, os.fsdecode(f.read()))), "the held temporary file is not there"
    assert _temps(target), "the kill left no temporary file to clean up: the test proves nothing"
    if who == "daemon":
        d = start_daemon("--repo", repo, "--source", src, home=home)

    # a dry run names them; the delta (without --delete) removes them and finishes the work
    dry = d.ok("restore", set_id, "--target", target, "--delta", "--dry-run", timeout=120)
    assert os.fsdecode(TEMP_PREFIX) in dry, dry
    r = json.loads(d.ok("--json", "restore", set_id, "--target", target, "--delta", *stream, timeout=120))
    assert not r["errors"], r
    assert not _temps(target)
    assert snapshot(target) == want
    assert r["extras_kept"] == 0, r
