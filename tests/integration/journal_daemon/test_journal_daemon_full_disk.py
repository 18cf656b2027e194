"""The real cairnd with its state directory on a small, full file system (a 4 MiB tmpfs), or
with its change journal damaged on disk: no change is lost, no traceback, one-line errors.

- The state dir fills up while files are created: the journal cannot record them, status
  says so (never 'complete'), and once there is room the next incremental holds every file.
- SIGTERM while the state dir is full: the daemon stops with status 0, no traceback, and the
  next start walks the source.
- A damaged journal database at start: moved aside, the daemon starts and walks the source.
- A full state dir at start: `cairnd` exits 1 with one line on stderr, no traceback.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cairnd_harness import env_for, snapshot
from journal_daemon_kit import HOOKED, wait_until
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


def test_a_full_state_dir_at_start_is_one_line_and_exit_1(jd, small_state):
    jd.start()                                     # the state dir as a daemon leaves it
    jd.stop()
    fill(os.path.join(small_state, "fill"))
    env = env_for({"CAIRN_TEST_HOOKS": jd.hooks, "CAIRN_HOME": os.path.join(jd.base, "home")})
    r = subprocess.run([sys.executable, HOOKED, "--config", jd.config], capture_output=True, text=True,
                       env=env, timeout=60)
    errors = [line for line in r.stderr.splitlines() if line.startswith("cairnd: error:")]
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert len(errors) == 1 and "journal" in errors[0], r.stderr
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(small_state, "fill"))
