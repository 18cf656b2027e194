"""The change tracker when its journal cannot be written or read: a full state directory (a real
small tmpfs, real SQLite), a journal database damaged on disk, a stop while the disk is full.

What must hold: no change is ever lost (held in memory and written once there is room, and until
then every set walks), the flush thread keeps running, status never says 'complete' while the
journal misses changes, a damaged database is moved aside and every source walked, a full disk
at start is one JournalError (a CairnError), and a stop never raises."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator

import pytest
from cairn.daemon.changes.journal import JournalError
from cairn.daemon.changes.tracker import JOURNAL_FILE, ChangeTracker
from cairn.errors import CairnError
from mounts import fill, mount_tmpfs

FULL = "database or disk is full"


class SmallFs:
    """A 4 MiB tmpfs holding the tracker's state directory; `fill()` takes all its room."""

    def __init__(self, mnt: str) -> None:
        self.mnt = mnt
        self.filler = os.path.join(mnt, "fill")

    def fill(self) -> None:
        fill(self.filler)

    def free(self) -> None:
        os.unlink(self.filler)


@pytest.fixture
def small(env) -> Iterator[SmallFs]:
    mnt = os.path.join(env.root, "statefs")
    os.makedirs(mnt)
    mount_tmpfs(mnt)
    env.state = os.path.join(mnt, "state")
    try:
        yield SmallFs(mnt)
    finally:
        for t in env.trackers:
            with contextlib.suppress(Exception):
                t.stop()
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)


def make_files_until_the_journal_fails(env, t: ChangeTracker, prefix: str) -> list[str]:
    """Create files (long names: every one takes room in the journal) until a flush fails."""
    made: list[str] = []
    for batch in range(40):
        for i in range(25):
            p = env.p(f"{prefix}-{batch:02d}-{i:02d}-" + "n" * 180)
            with open(p, "wb"):
                pass
            made.append(p)
        with contextlib.suppress(AssertionError):
            env.wait_until(lambda: t.write_failure is not None, 0.3, "a failed flush")
            return made
    raise AssertionError("the journal never failed on a full file system")


def test_changes_made_while_the_state_dir_is_full_are_held_and_written_once_there_is_room(env, small):
    t = env.tracker()
    env.trust(t)
    small.fill()
    made = make_files_until_the_journal_fails(env, t, "a")
    assert FULL in (t.write_failure or "")
    # The flush thread is alive and keeps the changes; nothing vouches for the source meanwhile.
    assert t.healthy and t._flusher is not None and t._flusher.is_alive()
    st = t.status("app")
    assert st.state == "rescan" and any(FULL in r for r in st.reasons), st
    assert st.pending_paths >= len(made) and st.oldest_unprotected_age is not None
    assert t.oldest_unprotected("app") is not None
    hint, token = t.prepare("app", "incremental", "F1", None)
    assert hint is None                                   # the set walks the whole source
    later = env.p("b-after-the-failure")
    with open(later, "wb"):
        pass
    made.append(later)
    small.free()
    env.wait_until(lambda: t.write_failure is None, 5, "the journal written again")
    assert t.healthy
    hint, _ = t.prepare("app", "incremental", "F1", None)
    assert hint is not None and set(made) <= hint.paths
    st = t.status("app")
    assert st.state == "complete" and st.pending_paths >= len(made)


def test_a_set_committed_while_changes_are_held_leaves_them_pending(env, small):
    t = env.tracker()
    env.trust(t)
    small.fill()
    made = make_files_until_the_journal_fails(env, t, "c")
    hint, token = t.prepare("app", "incremental", "F1", None)
    assert hint is None
    t.committed("app", "incremental", "I1", token)        # fails to write: logged, not raised
    small.free()
    env.wait_until(lambda: t.write_failure is None, 5, "the journal written again")
    t.committed("app", "incremental", "I1", token)        # the commit, once there is room
    # What the journal held when the set's token was read is still pending after it.
    hint, _ = t.prepare("app", "incremental", "I1", None)
    assert hint is not None and set(made) <= hint.paths


def test_stop_with_the_state_dir_full_does_not_raise_and_the_next_start_walks(env, small, caplog):
    t = env.tracker()
    env.trust(t)
    small.fill()
    make_files_until_the_journal_fails(env, t, "d")
    with caplog.at_level(logging.ERROR, logger="cairn.daemon.changes.tracker"):
        t.stop()
    stops = [r for r in caplog.records if "not recorded at stop" in r.getMessage()]
    assert len(stops) == 1 and "\n" not in stops[0].getMessage() and stops[0].exc_info is None
    small.free()
    t2 = env.tracker()
    st = t2.status("app")
    assert st.state == "rescan" and any("unclean stop" in r for r in st.reasons), st
    assert t2.prepare("app", "incremental", "F1", None)[0] is None


class _FailingWrites:
    """A journal connection whose writes fail as on a full disk (reads pass through)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: object) -> object:
        if sql.split()[0].upper() in ("INSERT", "UPDATE", "DELETE", "BEGIN"):
            raise sqlite3.OperationalError(FULL)
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_stop_whose_session_record_fails_logs_one_line(env, caplog):
    t = env.tracker()
    env.trust(t)
    journal = t._journal
    real = journal._db
    journal._db = _FailingWrites(real)
    try:
        with caplog.at_level(logging.ERROR, logger="cairn.daemon.changes.tracker"):
            t.stop()
    finally:
        real.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert lines == [f"unable to write change journal '{journal.path}': {FULL}: the stop is not recorded; "
                     "the next start walks every source"]
    t2 = env.tracker()
    assert any("unclean stop" in r for r in t2.status("app").reasons)


def _truncate(path: str) -> None:
    os.truncate(path, 1000)


def _garbage(path: str) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(20000))


@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "random-bytes"])
def test_a_damaged_journal_is_moved_aside_and_every_source_walked(env, caplog, damage):
    t = env.tracker()
    env.trust(t)
    with open(env.p("x"), "wb"):
        pass
    env.wait_until(lambda: t.status("app").pending_paths, 5, "the change journaled")
    t.stop()
    path = os.path.join(env.state, JOURNAL_FILE)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="cairn.daemon.changes.tracker"):
        t2 = env.tracker()
    aside = glob.glob(path + ".corrupt-*")
    assert len(aside) == 1 and os.stat(aside[0]).st_mode & 0o077 == 0
    assert any("was damaged" in r.getMessage() and aside[0] in r.getMessage() for r in caplog.records)
    st = t2.status("app")
    assert st.state == "rescan" and any("damaged" in r for r in st.reasons), st
    assert t2.prepare("app", "incremental", "F1", None)[0] is None
    env.trust(t2, set_id="F2")                             # the fresh journal works from here on
    with open(env.p("y"), "wb"):
        pass
    hint, _ = t2.prepare("app", "incremental", "F2", None)
    assert hint is not None and env.p("y") in hint.paths


@pytest.mark.parametrize("existing", [False, True], ids=["new-journal", "existing-journal"])
def test_a_full_state_dir_at_start_is_one_journal_error(env, small, existing):
    if existing:
        env.tracker().stop()
    else:
        os.makedirs(env.state)
    small.fill()
    t = env.tracker(start=False)
    with pytest.raises(JournalError) as info:
        t.start()
    assert isinstance(info.value, CairnError)
    # SQLite says "disk I/O error" when it cannot grow the -shm file of an existing journal
    assert FULL in info.value.message or info.value.message.endswith("(No space left on device)")
    assert "\n" not in info.value.message
    assert info.value.message.startswith(("unable to open change journal", "unable to write change journal"))
    t.stop()                                              # what the daemon does after a failed start
    small.free()
    t2 = env.tracker()
    assert t2.prepare("app", "incremental", "F1", None)[0] is None


def test_a_scheduled_set_is_not_skipped_while_or_after_the_journal_could_not_record(env, small):
    from types import SimpleNamespace

    from cairn.daemon.changes import skip

    t = env.tracker()
    env.trust(t)
    src = SimpleNamespace(name="app", watch=True, database=None, paths=(env.src,), aux_paths=())
    config = SimpleNamespace(daemon=SimpleNamespace(skip_unchanged=True, host="h"), sources=[src])
    repo = SimpleNamespace(list_sets=lambda source: [SimpleNamespace(id="F1", hostname="h", level="full")])
    assert skip.unchanged_since(config, t, repo, "app", "incremental") == "F1"   # nothing changed yet
    small.fill()
    make_files_until_the_journal_fails(env, t, "s")
    assert skip.unchanged_since(config, t, repo, "app", "incremental") is None   # cannot vouch
    small.free()
    env.wait_until(lambda: t.write_failure is None, 5, "the journal written again")
    assert skip.unchanged_since(config, t, repo, "app", "incremental") is None   # the changes are pending


def test_a_dead_flush_thread_makes_the_tracker_and_the_daemon_unhealthy(env):
    from types import SimpleNamespace

    from cairn.daemon.runtime.process import Daemon

    t = env.tracker()
    daemon = Daemon(SimpleNamespace(daemon=SimpleNamespace(state_dir=env.state)), SimpleNamespace())
    daemon.tracker = t
    assert t.healthy and daemon.healthy()

    def broken() -> None:
        raise RuntimeError("boom")

    t.flush = broken  # the flush thread's next round dies of an unexpected error
    env.wait_until(lambda: not t._flusher.is_alive(), 5, "the flush thread to die")
    assert not t.healthy
    assert not daemon.healthy()  # the watchdog stops being fed: systemd restarts the daemon
