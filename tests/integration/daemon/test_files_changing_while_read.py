"""Files written while the real daemon backs them up: an application log appended by a process
that runs through the whole backup. The set is honest about it: flagged fuzzy, and what it holds
of the log is a prefix of what the log became, nothing made up (no zeros after what was read),
whichever way it is restored; the next set, once the writer stopped, holds the final content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from cairnd_harness import Daemon

# Appends numbered lines (about 100 kB/s) until the stop file appears; prints how many it wrote.
APPENDER = """
import os, sys, time
path, stop = sys.argv[1], sys.argv[2]
n = 0
with open(path, "ab", buffering=0) as f:
    while not os.path.exists(stop):
        f.write(b"%012d the application logged a line\\n" % n)
        n += 1
        if n % 10 == 0:
            time.sleep(0.004)
print(n)
"""


def _entry(d: Daemon, set_id: str, path: str) -> dict:
    parent, _, name = path.rpartition("/")
    return next(e for e in json.loads(d.ok("--json", "ls", set_id, parent)) if e["name"] == name)


def test_a_log_appended_through_the_backup_is_restored_as_a_prefix_and_then_whole(
        start_daemon: Callable[..., Daemon], rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "logs"))
    log = os.path.join(src, "logs", "app.log")
    with open(log, "wb") as f:  # long enough that every read of it sees lines appended meanwhile
        for i in range(200_000):
            f.write(b"%012d an older line of the log\n" % i)
    stop = os.path.join(rundir, "stop")
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, log, stop], stdout=subprocess.PIPE)
    try:
        fuzzy = []
        deadline = time.monotonic() + 60
        while not fuzzy:  # a writer starved of CPU for a whole read would leave a set that is not fuzzy
            assert time.monotonic() < deadline, "no set found the log changing while it was read"
            s = json.loads(d.ok("--json", "backup", "--level", "full"))
            if "logs/app.log" in s["fuzzy_paths"]:
                assert s["status"] == "fuzzy"
                fuzzy.append(s)
    finally:
        open(stop, "w").close()
        lines = int(writer.communicate(timeout=30)[0])
    assert lines > 0
    s = fuzzy[0]
    final = open(log, "rb").read()
    recorded = _entry(d, s["id"], "logs/app.log")
    for how in ((), ("--stream",)):
        target = os.path.join(rundir, "t" + "".join(how))
        r = d.cli("restore", s["id"], "--target", target, "--verify", *how)
        assert r.returncode == 0, r.stderr
        got = open(os.path.join(target, "logs", "app.log"), "rb").read()
        assert len(got) == recorded["size"]
        assert b"\0" not in got and final.startswith(got), f"restored {len(got)} bytes, not a prefix of the log"

    after = json.loads(d.ok("--json", "backup", "--level", "incremental"))
    assert after["fuzzy_paths"] == [] and after["status"] == "ok"
    target = os.path.join(rundir, "final")
    d.ok("restore", after["id"], "--target", target)
    restored = os.path.join(target, "logs", "app.log")
    assert open(restored, "rb").read() == final
    assert os.stat(restored).st_mtime_ns == os.stat(log).st_mtime_ns


def test_a_file_written_through_a_mapping_after_the_set_read_it_is_read_again_once_closed(
        start_daemon: Callable[..., Daemon], rundir: str) -> None:
    """Writes through a shared mapping into pages already dirty change neither mtime nor ctime
    (the kernel updates them when a write faults a clean page), so after the set read the file,
    its stat data stays the set's while its content moves on. The journal hears the close
    (IN_CLOSE_WRITE) and names the file to the next set, which must read it, not compare its
    unchanged stat data and carry the old content over."""
    import mmap

    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "db"))
    path = os.path.join(src, "db", "data.mdb")
    with open(path, "wb") as f:
        f.write(os.urandom(64 << 10))
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 64 << 10) as m:
            m[:4096] = b"A" * 4096  # faults the page: mtime moves now, and not for later writes into it
            hour_ago = time.time_ns() - 3600 * 10**9
            os.utime(fd, ns=(hour_ago, hour_ago))  # not within the set's second: no racy read either
            full = json.loads(d.ok("--json", "backup", "--level", "full"))
            before = os.fstat(fd)
            m[:4096] = b"B" * 4096
            st = os.fstat(fd)
            assert (st.st_mtime_ns, st.st_ctime_ns, st.st_size) == (before.st_mtime_ns, before.st_ctime_ns,
                                                                    before.st_size)
    finally:
        os.close(fd)  # IN_CLOSE_WRITE
    final = open(path, "rb").read()
    assert final.startswith(b"B" * 4096)
    inc = json.loads(d.ok("--json", "backup", "--level", "incremental"))  # its barrier takes in the close
    assert inc["extra"]["changes"] == "journal"
    for set_id, want in ((full["id"], b"A" * 4096), (inc["id"], b"B" * 4096)):
        target = os.path.join(rundir, "t-" + set_id[:8])
        d.ok("restore", set_id, "--target", target)
        assert open(os.path.join(target, "db", "data.mdb"), "rb").read()[:4096] == want
    assert open(os.path.join(rundir, "t-" + inc["id"][:8], "db", "data.mdb"), "rb").read() == final
