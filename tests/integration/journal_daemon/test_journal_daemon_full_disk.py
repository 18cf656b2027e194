"""The real cairnd with its state directory on a small, full file system (a 4 MiB tmpfs), or
with its change journal damaged on disk: no change is lost, no traceback, one-line errors.

- The state dir fills up while files are created: the journal cannot record them, status
  says so (never 'complete'), and once there is room the next incremental holds every file.
- SIGTERM while the state dir is full: the daemon stops with status 0, no traceback, and the
  next start walks the source.
- A damaged journal database at start: moved aside, the daemon starts and walks the source.
- A full state dir at start: `cairnd` starts and serves, refuses quiesce windows and index
  repairs with one line each, says so in status and the log, and goes on by itself once there
  is room.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from cairnd_harness import snapshot
from journal_daemon_kit import wait_until
from mounts import fill, mount_tmpfs

FULL = "database or disk is full"


@pytest.fixture
def small_state(jd) -> Iterator[str]:
    """The daemon's state directory on a 4 MiB tmpfs (unmounted after the daemon is gone)."""
    state = os.path.join(jd.base, "state")
    os.makedirs(state)
    mount_tmpfs(state)
    try:
        yield state
    finally:
        jd.kill()
        if subprocess.run(["umount", state], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", state], capture_output=True)


def test_files_created_while_the_state_dir_is_full_are_in_the_next_set(jd, small_state):
    os.makedirs(os.path.join(jd.src, "sub"))
    for i in range(20):
        with open(os.path.join(jd.src, "sub", f"f{i}"), "wb") as f:
            f.write(os.urandom(1000))
    jd.start()
    jd.backup("full")
    jd.backup("incremental")                    # journal-driven from here on
    filler = fill(os.path.join(small_state, "fill"))
    made = 0

    def failing() -> bool:
        nonlocal made
        for _ in range(10):                    # files until the journal can no longer record them
            with open(os.path.join(jd.src, "sub", f"new{made:03d}-" + "n" * 150), "wb"):
                pass
            made += 1
        return any(FULL in r for r in jd.status()["journal_reasons"])

    wait_until(failing, 20, "status to say the journal cannot be written")
    st = jd.status()
    assert st["journal_state"] != "complete" and st["pending_paths"] >= made
    os.unlink(filler)
    wait_until(lambda: jd.status()["journal_state"] == "complete", 10, "the journal written again")
    assert jd.status()["pending_paths"] >= made
    s = jd.backup("incremental")
    jd.restore_equals(s["id"], snapshot(jd.src), "incremental after the full state dir: ")
    log = jd.daemon.log()
    assert "Traceback" not in log and "thread change-journal failed" not in log


def test_sigterm_with_the_state_dir_full_stops_cleanly_and_the_next_start_walks(jd, small_state):
    with open(os.path.join(jd.src, "a"), "wb") as f:
        f.write(b"a")
    jd.start()
    jd.backup("full")
    filler = fill(os.path.join(small_state, "fill"))
    n = 0

    def failing() -> bool:
        nonlocal n
        for _ in range(10):
            with open(os.path.join(jd.src, f"late{n:03d}-" + "n" * 150), "wb"):
                pass
            n += 1
        return any(FULL in r for r in jd.status()["journal_reasons"])

    wait_until(failing, 20, "status to say the journal cannot be written")
    d = jd.daemon
    jd.stop()                                     # asserts exit status 0
    log = d.log()
    assert "Traceback" not in log, log
    assert "were not recorded at stop; the next start walks every source" in log
    os.unlink(filler)
    jd.start()
    st = jd.status()
    assert st["journal_state"] == "rescan" and any("unclean stop" in r for r in st["journal_reasons"]), st
    s = jd.backup("incremental")
    jd.restore_equals(s["id"], snapshot(jd.src), "incremental after a stop with the state dir full: ")


def test_a_damaged_journal_is_moved_aside_and_the_daemon_starts(jd):
    with open(os.path.join(jd.src, "a"), "wb") as f:
        f.write(b"a")
    jd.start()
    jd.backup("full")
    jd.stop()
    journal = os.path.join(jd.base, "state", "journal.sqlite")
    os.truncate(journal, 1000)
    with open(os.path.join(jd.src, "b"), "wb") as f:   # while no daemon ran
        f.write(b"b")
    d = jd.start()
    assert len(glob.glob(journal + ".corrupt-*")) == 1
    assert "Traceback" not in d.log() and "was damaged" in d.log()
    st = jd.status()
    assert st["journal_state"] == "rescan" and any("damaged" in r for r in st["journal_reasons"]), st
    s = jd.backup("incremental")
    jd.restore_equals(s["id"], snapshot(jd.src), "incremental after a damaged journal: ")


def test_a_full_state_dir_at_start_serves_refuses_writes_and_recovers_by_itself(jd, small_state):
    """cairnd restarted with its state directory's file system full (a unit restarted by systemd
    on a full /var): it starts and serves (status, restores, reads, sets that walk their source);
    the full directory is a health problem in status and the log; what must write state there (a
    quiesce window's record, an index repair's mark) is refused with one line naming the
    directory and "no space left"; once room is freed the change journal starts by itself."""
    with open(os.path.join(jd.src, "a"), "wb") as f:
        f.write(b"a")
    jd.start()                                     # the state dir as a daemon leaves it
    first = jd.backup("full")
    jd.stop()
    filler = fill(os.path.join(small_state, "fill"))
    d = jd.start()                                 # READY=1 (asserted by start)
    problem = f"state directory '{small_state}' is full: no space left on device"
    status = json.loads(d.ok("--json", "status"))
    assert any(w.startswith(problem) for w in status["daemon"]["warnings"]), status["daemon"]
    assert problem in d.ok("status")
    src = status["sources"][0]
    assert src["journal_state"] == "rescan" and any(problem in r for r in src["journal_reasons"]), src
    r = d.cli("repair", "index")
    errors = [line for line in r.stderr.splitlines() if line.startswith("cairn: error:")]
    assert r.returncode == 1 and errors == [f"cairn: error: unable to repair the index: {problem}"], r.stderr
    assert [s["id"] for s in json.loads(d.ok("--json", "sets"))] == [first["id"]]  # reads work
    jd.restore_equals(first["id"], snapshot(jd.src), "restore while the state dir is full: ")
    with open(os.path.join(jd.src, "b"), "wb") as f:
        f.write(b"b")
    walked = jd.backup("incremental")              # the repository has room: the set walks the source
    assert walked["extra"]["changes"] != "journal", walked["extra"]
    jd.restore_equals(walked["id"], snapshot(jd.src), "incremental while the state dir is full: ")
    log = d.log()
    assert "Traceback" not in log, log
    assert sum(problem in line and "level=error" in line and "no restart needed" in line
               for line in log.splitlines()) == 1, log

    # a source with a quiesce window: refused before any hook runs (its record would not be durable)
    jd.stop()
    with open(jd.config, "a", encoding="utf-8") as f:
        f.write(f'quiesce = {{ mode = "cold", freeze = ["touch", "{jd.base}/frozen"], thaw = ["true"] }}\n')
    d = jd.start()
    r = d.cli("backup")
    errors = [line for line in r.stderr.splitlines() if line.startswith("cairn: error:")]
    assert r.returncode == 1 and errors == [f"cairn: error: unable to open the quiesce window of source 'app': "
                                            f"{problem}"], r.stderr
    assert not os.path.exists(os.path.join(jd.base, "frozen"))
    # a source whose database is dumped into a directory first (in the state directory): refused too
    jd.stop()
    jd.write_config()
    dump = json.dumps(["sh", "-c", "echo rows > {dir}/rows"])
    with open(jd.config, "a", encoding="utf-8") as f:
        f.write(f'database = "notes"\n\n[[database]]\nname = "notes"\nkind = "command"\ndump = {dump}\n'
                'restore = ["true"]\n')
    d = jd.start()
    r = d.cli("backup")
    errors = [line for line in r.stderr.splitlines() if line.startswith("cairn: error:")]
    assert r.returncode == 1 and errors == [f"cairn: error: unable to dump database 'notes' of source 'app': "
                                            f"{problem}"], r.stderr

    os.unlink(filler)                              # room again: no restart
    wait_until(lambda: not any(problem in r for r in jd.status()["journal_reasons"]), 20, "the journal to start")
    assert not json.loads(d.ok("--json", "status"))["daemon"].get("warnings"), d.ok("status")
    assert "has room again: the change journal started" in d.log(), d.log()
    with open(os.path.join(jd.src, "c"), "wb") as f:
        f.write(b"c")
    s = jd.backup("incremental")
    jd.restore_equals(s["id"], snapshot(jd.src), "incremental once the state dir has room: ")
    with open(os.path.join(jd.src, "d"), "wb") as f:  # the journal records again
        f.write(b"d")
    wait_until(lambda: jd.status()["pending_paths"] >= 1, 10, "the journal to record a change")
