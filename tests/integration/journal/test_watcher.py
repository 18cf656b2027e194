"""The change tracker on real inotify: every kind of change lands in the journal, every loss of
trust is marked, prepare/committed keep exactly what they must, and a hinted store backup
equals a full walk."""

from __future__ import annotations

import os
import shutil

import pytest
import watcher_hooks
from cairn.daemon.changes import watcher as watcher_mod
from cairn.daemon.changes.tracker import ChangeTracker
from watchdog.observers.inotify import InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants as IC


def incremental(tracker: ChangeTracker, base: str = "F1", source: str = "app"):
    hint, token = tracker.prepare(source, "incremental", base, None)
    return hint, token


def _why(tracker: ChangeTracker, source: str = "app") -> str:
    """The journal's own account of its state, for a failure message (a rare loss of trust under
    load is then told apart: a watch torn, a write held, a root lost)."""
    st = tracker.status(source)
    return f"journal unexpectedly untrusted: {st.state}; {'; '.join(st.reasons) or 'no reason recorded'}"


def changed_paths(tracker: ChangeTracker, base: str = "F1") -> set[str]:
    hint, _ = incremental(tracker, base)
    assert hint is not None, _why(tracker)
    return set(hint.paths)


def rescans(tracker: ChangeTracker, base: str = "F1") -> set[str]:
    hint, _ = incremental(tracker, base)
    assert hint is not None, _why(tracker)
    return set(hint.rescan)


def write(path: str, data: bytes = b"x", mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


@pytest.fixture
def tracked(env):
    os.makedirs(env.p("sub", "deep"))
    write(env.p("a"), b"a")
    write(env.p("sub", "b"), b"b")
    write(env.p("sub", "deep", "c"), b"c")
    t = env.tracker()
    env.trust(t)
    return env, t


# -- each kind of change ---------------------------------------------------------------------

def test_nothing_changed_gives_empty_hint(tracked):
    env, t = tracked
    hint, _ = incremental(t)
    assert hint is not None and hint.paths == frozenset() and hint.rescan == frozenset()
    assert t.status("app").state == "complete"


def test_create_write_append_truncate_delete(tracked):
    env, t = tracked
    write(env.p("new"), b"1")
    write(env.p("sub", "b"), b"more", "ab")
    os.truncate(env.p("sub", "deep", "c"), 0)
    os.unlink(env.p("a"))
    paths = changed_paths(t)
    assert {env.p("new"), env.p("sub", "b"), env.p("sub", "deep", "c"), env.p("a")} <= paths
    # parents of appearing/vanishing names are listed as well
    assert env.src in paths


def test_file_rename_records_old_and_new(tracked):
    env, t = tracked
    os.rename(env.p("sub", "b"), env.p("sub", "deep", "b2"))
    paths = changed_paths(t)
    assert {env.p("sub", "b"), env.p("sub", "deep", "b2")} <= paths


def test_file_writes_are_reported_without_passing_through_watchdog(tracked, monkeypatch):
    """An application's writes (thousands a second) are reported by the watcher alone; watchdog
    gets only what its bookkeeping acts on (directories made, moves), so its move queue, scanned
    on every move, does not grow at the writer's rate. Watches still follow new directories."""
    env, t = tracked
    handed: list[int] = []
    plain = InotifyWatchGroup.on_event

    def counted(self, event):  # type: ignore[no-untyped-def]
        handed.append(event.mask)
        return plain(self, event)

    monkeypatch.setattr(InotifyWatchGroup, "on_event", counted)
    with open(env.p("a"), "ab") as f:
        for _ in range(2000):
            f.write(b"x")
            f.flush()
    write(env.p("made"), b"1")
    os.chmod(env.p("made"), 0o600)
    os.unlink(env.p("made"))
    os.mkdir(env.p("newdir"))
    os.rename(env.p("sub", "b"), env.p("sub", "deep", "b2"))
    hint, token = incremental(t)
    assert {env.p("a"), env.p("made"), env.p("sub", "b"), env.p("sub", "deep", "b2")} <= hint.paths
    assert env.p("newdir") in hint.rescan
    t.committed("app", "incremental", "I1", token)
    needs = IC.IN_ISDIR | IC.IN_MOVED_FROM | IC.IN_MOVED_TO | IC.IN_IGNORED | IC.IN_DELETE_SELF | IC.IN_MOVE_SELF
    assert handed and all(m & needs for m in handed), [hex(m) for m in handed if not m & needs][:5]
    assert any(m & IC.IN_CREATE and m & IC.IN_ISDIR for m in handed)
    assert any(m & IC.IN_MOVED_TO for m in handed) and any(m & IC.IN_MOVED_FROM for m in handed)
    write(env.p("newdir", "later"), b"2")  # the new directory is watched
    assert env.p("newdir", "later") in changed_paths(t, "I1")


def test_a_path_reported_again_before_the_flush_is_held_once(tracked):
    env, t = tracked
    with t._flush_lock:  # the flush thread waits: what follows is one batch
        for _ in range(1000):
            t.changed("app", env.p("a"), True)
            t.changed("app", env.p("sub"), False)
        t.changed("app", env.p("a"), False)
        assert sorted((c.path, w) for c, w in t._batch) == [(env.p("a"), False), (env.p("a"), True),
                                                            (env.p("sub"), False)]
        first = t._batch[0][0].time
    hint, _ = incremental(t)
    assert {env.p("a"), env.p("sub")} <= hint.paths
    assert {e.path: e.first_seen for e in t._journal.entries_after("app", 0)}[env.p("a")] == first
    with t._flush_lock:  # the next batch takes it again
        t.changed("app", env.p("a"), True)
        assert [(c.path, w) for c, w in t._batch] == [(env.p("a"), True)]


def test_dir_rename_inside_source(tracked):
    env, t = tracked
    os.rename(env.p("sub"), env.p("moved"))
    hint, _ = incremental(t)
    assert env.p("sub") in hint.paths
    assert env.p("moved") in hint.rescan
    # the moved directory keeps being watched under its new name
    write(env.p("moved", "deep", "later"))
    assert env.p("moved") in rescans(t)


def test_dir_moved_in_from_outside_is_rescanned(tracked):
    env, t = tracked
    outside = os.path.join(env.root, "outside")
    os.makedirs(os.path.join(outside, "x", "y"))
    write(os.path.join(outside, "x", "y", "f"))
    os.rename(outside, env.p("inside"))
    assert env.p("inside") in rescans(t)
    write(env.p("inside", "x", "y", "g"))
    hint, _ = incremental(t)
    # now watched: a new file below it is seen (and lies within the rescanned subtree)
    assert env.p("inside") in hint.rescan


def test_dir_moved_in_then_parent_renamed_before_the_event_is_read_stays_watched(tracked):
    """Found by the fuzz test (seed 62117700): a directory moved in from outside whose parent is
    renamed before the watcher reads the event could not be watched at its old path; its new
    content must still be seen once the parent's move is read."""
    env, t = tracked
    outside = os.path.join(env.root, "outside")
    os.makedirs(os.path.join(outside, "in"))
    assert watcher_hooks.pause(t.watcher)
    try:
        os.rename(outside, env.p("sub", "deep", "o"))
        os.rename(env.p("sub"), env.p("moved"))
    finally:
        watcher_hooks.resume(t.watcher)
    env.trust(t, set_id="F2")  # a set walked the rescan subtrees and is committed
    write(env.p("moved", "deep", "o", "in", "late"))
    assert env.p("moved", "deep", "o", "in", "late") in changed_paths(t, base="F2")


def test_dir_moved_out_records_old_path(tracked):
    env, t = tracked
    os.rename(env.p("sub"), os.path.join(env.root, "gone"))
    assert env.p("sub") in changed_paths(t)


def test_new_dir_with_content_before_watch_is_rescanned(tracked):
    env, t = tracked
    os.makedirs(env.p("n1", "n2", "n3"))
    write(env.p("n1", "n2", "n3", "f"))
    hint, _ = incremental(t)
    assert hint.rescan == frozenset({env.p("n1")})


def test_rmtree_records_deleted_dir(tracked):
    env, t = tracked
    shutil.rmtree(env.p("sub"))
    assert env.p("sub") in changed_paths(t)


def test_metadata_only_changes(tracked):
    env, t = tracked
    os.chmod(env.p("a"), 0o600)
    os.chown(env.p("sub", "b"), 1234, 1234)
    os.setxattr(env.p("sub", "deep", "c"), "user.tag", b"v")
    os.utime(env.p("sub", "deep"), ns=(1_000_000_000, 1_000_000_000))
    paths = changed_paths(t)
    assert {env.p("a"), env.p("sub", "b"), env.p("sub", "deep", "c"), env.p("sub", "deep")} <= paths


def test_symlink_create_and_retarget(tracked):
    env, t = tracked
    os.symlink("a", env.p("link"))
    assert env.p("link") in changed_paths(t)
    hint, token = incremental(t)
    t.committed("app", "incremental", "I1", token)
    tmp = env.p(".link.tmp")
    os.symlink("sub/b", tmp)
    os.replace(tmp, env.p("link"))
    assert env.p("link") in changed_paths(t, "I1")


def test_hardlink_distrusts_the_source(tracked):
    env, t = tracked
    os.link(env.p("a"), env.p("sub", "a-again"))
    hint, _ = incremental(t)
    assert hint is None
    status = t.status("app")
    assert status.state == "rescan"
    assert any("hard links" in r for r in status.reasons)


# -- excludes ----------------------------------------------------------------------------------

def test_excludes_apply_to_events_and_watches(env):
    os.makedirs(env.p("cache", "x", "y"))
    os.makedirs(env.p("keep"))
    t = env.tracker([env.source("app", (env.src,), ("*.tmp", "cache/"))])
    env.trust(t)
    assert t.status("app").watches == 2          # root and keep/, not cache/ and below
    write(env.p("junk.tmp"))
    write(env.p("keep", "junk.tmp"))
    write(env.p("cache", "x", "y", "f"))
    write(env.p("keep", "real"))
    hint, _ = incremental(t)
    # an excluded name is not recorded, but the directory it appeared in is (its mtime changed)
    assert hint.paths == frozenset({env.p("keep", "real"), env.p("keep"), env.src})
    assert hint.rescan == frozenset()
    t.committed("app", "incremental", "I1", _)
    os.unlink(env.p("keep", "junk.tmp"))  # a vanished excluded name: its directory again
    os.mkdir(env.p("keep", "x.tmp"))
    hint, _ = incremental(t, "I1")
    assert hint.paths == frozenset({env.p("keep")}), hint.paths


# -- prepare / committed ------------------------------------------------------------------------

def test_changes_after_prepare_stay_pending(tracked):
    env, t = tracked
    write(env.p("before"))
    hint, token = incremental(t)
    assert env.p("before") in hint.paths
    write(env.p("during"))
    env.wait_until(lambda: t.status("app").pending_paths >= 3, what="'during' journaled")
    t.committed("app", "incremental", "I1", token)
    paths = changed_paths(t, "I1")
    assert env.p("during") in paths and env.p("before") not in paths


def test_failed_set_loses_nothing(tracked):
    env, t = tracked
    write(env.p("x1"))
    hint, token = incremental(t)          # the set fails: committed() is never called
    write(env.p("x2"))
    paths = changed_paths(t)
    assert {env.p("x1"), env.p("x2")} <= paths


def test_rewrite_of_protected_path_is_pending_again(tracked):
    env, t = tracked
    write(env.p("a"), b"1")
    hint, token = incremental(t)
    t.committed("app", "incremental", "I1", token)
    assert t.oldest_unprotected("app") is None
    write(env.p("a"), b"2")
    assert env.p("a") in changed_paths(t, "I1")
    assert env.wait_until(lambda: t.oldest_unprotected("app"), what="unprotected change") >= token.prepared_at


def test_differential_is_union_since_full(tracked):
    env, t = tracked
    write(env.p("one"))
    _, tok = incremental(t, "F1")
    t.committed("app", "incremental", "I1", tok)
    write(env.p("two"))
    _, tok = incremental(t, "I1")
    t.committed("app", "incremental", "I2", tok)
    write(env.p("three"))
    diff, dtok = t.prepare("app", "differential", "F1", "full")
    assert {env.p("one"), env.p("two"), env.p("three")} <= diff.paths
    inc, _ = t.prepare("app", "incremental", "I2", "incremental")
    assert env.p("three") in inc.paths and not {env.p("one"), env.p("two")} & inc.paths
    t.committed("app", "differential", "D1", dtok)
    # a differential does not move the full: the next one still sees everything since F1
    diff2, _ = t.prepare("app", "differential", "F1", "full")
    assert {env.p("one"), env.p("two"), env.p("three")} <= diff2.paths
    # a new full consumes it all
    _, ftok = t.prepare("app", "full", None, None)
    t.committed("app", "full", "F2", ftok)
    assert t.prepare("app", "differential", "F2", "full")[0] == t.prepare("app", "incremental", "F2", "full")[0]
    assert changed_paths(t, "F2") == set()


def test_unknown_base_or_full_gives_no_hint(tracked):
    env, t = tracked
    assert t.prepare("app", "incremental", "not-a-set-we-saw", "full")[0] is None
    assert t.prepare("app", "incremental", None, None)[0] is None
    assert t.prepare("app", "full", "F1", "full")[0] is None


def test_on_change_and_oldest_unprotected(tracked):
    env, t = tracked
    seen: list[str] = []
    t.on_change = seen.append
    assert t.oldest_unprotected("app") is None
    write(env.p("new"))
    env.wait_until(lambda: "app" in seen, what="on_change callback")
    oldest = t.oldest_unprotected("app")
    assert oldest is not None
    status = t.status("app")
    assert status.oldest_unprotected_age is not None and status.pending_paths >= 1


def test_unwatched_source_has_no_hint(env):
    db = os.path.join(env.root, "pgdata")
    os.makedirs(db)
    t = env.tracker([env.source("app", (env.src,)), env.source("db", (db,), watch=False)])
    env.trust(t, "db")
    write(os.path.join(db, "f"))
    assert t.prepare("db", "incremental", "F1", "full")[0] is None
    status = t.status("db")
    assert status.state == "rescan" and status.watches == 0
    assert t.oldest_unprotected("db") is None


# -- loss of trust ------------------------------------------------------------------------------

def test_injected_overflow_marks_every_source(tracked):
    env, t = tracked
    watcher_hooks.simulate_overflow(t.watcher)
    env.wait_until(lambda: t.status("app").state == "rescan", what="overflow noticed")
    assert any("overflow" in r for r in t.status("app").reasons)
    assert incremental(t)[0] is None
    # the watches were rebuilt: after the next set the journal is trusted and complete again
    _, tok = incremental(t)
    t.committed("app", "incremental", "I1", tok)
    write(env.p("sub", "deep", "after"))
    assert env.p("sub", "deep", "after") in changed_paths(t, "I1")
    assert t.status("app").state == "complete"


def test_real_overflow_while_reader_is_held(tracked):
    env, t = tracked
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        limit = int(f.read())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to overflow quickly")
    a, b = env.p("a"), env.p("sub", "b")
    assert watcher_hooks.pause(t.watcher)
    try:
        for i in range(limit // 2 + 100):   # alternate names so the kernel cannot merge events
            os.utime(a, ns=(i, i))
            os.utime(env.p("sub", "deep", "c"), ns=(i, i))
            os.utime(b, ns=(i, i))
    finally:
        watcher_hooks.resume(t.watcher)
    env.wait_until(lambda: any("overflow" in r for r in t.status("app").reasons), what="real overflow")
    assert incremental(t)[0] is None


def test_a_backlog_past_its_bound_is_dropped_and_reported_as_an_overflow(env, monkeypatch):
    """Events read but not yet handled are held up to MAX_BACKLOG bytes; beyond, they are dropped
    and the source is rescanned, as for a kernel queue overflow, and the journal recovers."""
    monkeypatch.setattr(watcher_mod, "MAX_BACKLOG", 64 * 1024)
    os.makedirs(env.p("sub"))
    write(env.p("a"))
    write(env.p("sub", "b"))
    t = env.tracker()
    env.trust(t)
    backlog = t.watcher._fd._raw_queue
    assert isinstance(backlog, watcher_mod._Backlog) and backlog.limit == 64 * 1024
    with t._batch_lock:  # the handling thread waits in the first report; the reader goes on
        for i in range(20_000):  # about 32 bytes of raw record each; alternate names: none merge
            os.utime(env.p("a"), ns=(i, i))
            os.utime(env.p("sub", "b"), ns=(i, i))
        env.wait_until(lambda: backlog.dropped > 0, what="the backlog full")
    assert backlog.peak <= 64 * 1024
    env.wait_until(lambda: any("overflow" in r for r in t.status("app").reasons), what="overflow reported")
    hint, token = incremental(t)
    assert hint is None  # the source is walked
    t.committed("app", "incremental", "I1", token)
    write(env.p("sub", "after"))  # watched again, trusted again
    assert env.p("sub", "after") in changed_paths(t, "I1")
    assert t.status("app").state == "complete"


def test_watch_cap_marks_unwatched_subtrees(env):
    for d in ("d1/x", "d2/y", "d3/z"):
        os.makedirs(env.p(d))
    t = env.tracker(max_watches=4)
    env.trust(t)
    status = t.status("app")
    assert status.watches == 4
    assert status.state == "rescan"
    assert any("watch limit" in r for r in status.reasons)
    hint, _ = incremental(t)
    assert hint is not None and hint.rescan           # the unwatched subtrees are always walked
    unwatched = set(hint.rescan)
    write(env.p("d1", "x", "f"))
    write(env.p("d3", "z", "f"))
    hint2, tok = incremental(t)
    assert unwatched <= set(hint2.rescan)
    t.committed("app", "incremental", "I1", tok)
    assert unwatched <= rescans(t, "I1")              # sticky until watched again


def test_watch_cap_at_root_leaves_source_unwatched(env):
    other = os.path.join(env.root, "other")
    os.makedirs(other)
    t = env.tracker([env.source("app", (env.src,)), env.source("other", (other,))], max_watches=1)
    env.trust(t)
    env.trust(t, "other", "O1")
    assert t.prepare("app", "incremental", "F1", "full")[0] is not None
    assert t.prepare("other", "incremental", "O1", "full")[0] is None
    assert any("watch" in r for r in t.status("other").reasons)


def test_restart_marks_rescan_then_trusts(env):
    write(env.p("a"))
    t = env.tracker()
    env.trust(t)
    t.stop()
    write(env.p("while-down"))
    t2 = env.tracker()
    status = t2.status("app")
    assert status.state == "rescan" and any("restarted" in r for r in status.reasons)
    hint, tok = t2.prepare("app", "incremental", "F1", "full")
    assert hint is None
    t2.committed("app", "incremental", "I1", tok)
    write(env.p("after"))
    assert changed_paths(t2, "I1") >= {env.p("after")}
    # a differential against the old full still cannot trust the journal (gap since F1)
    assert t2.prepare("app", "differential", "F1", "full")[0] is None


def test_unclean_stop_is_named(env):
    t = env.tracker()
    env.trust(t)
    # the process "dies": threads end, no clean end of session is written
    t.watcher.stop()
    t._flusher.stop()
    t._journal.close()
    env.trackers.remove(t)
    t2 = env.tracker()
    assert any("unclean" in r for r in t2.status("app").reasons)


def test_root_deleted_then_recreated(env):
    root = os.path.join(env.root, "vol")
    os.makedirs(root)
    t = env.tracker([env.source("vol", (root,))])
    env.trust(t, "vol")
    shutil.rmtree(root)
    env.wait_until(lambda: t.status("vol").state == "rescan", what="root loss noticed")
    assert t.prepare("vol", "incremental", "F1", "full")[0] is None
    os.makedirs(root)
    hint, tok = t.prepare("vol", "incremental", "F1", "full")     # watched again, gap unknown
    assert hint is None
    t.committed("vol", "incremental", "I1", tok)
    write(os.path.join(root, "f"))
    hint, _ = t.prepare("vol", "incremental", "I1", "incremental")
    assert hint is not None and os.path.join(root, "f") in hint.paths


def test_mark_rescan_and_reload(tracked):
    env, t = tracked
    t.mark_rescan("app", env.p("sub"), "backstop scan found a missed change")
    assert env.p("sub") in rescans(t)
    assert any("backstop" in r for r in t.status("app").reasons)
    # changing excludes: whole source rescan; new sources start untrusted
    other = os.path.join(env.root, "other")
    os.makedirs(other)
    t.reload([env.source("app", (env.src,), ("*.log",)), env.source("other", (other,))])
    assert incremental(t)[0] is None
    assert t.prepare("other", "incremental", "X", None)[0] is None
    assert t.status("other").watches == 1
    t.reload([env.source("app", (env.src,), ("*.log",))])
    assert t.status("other").watches == 0


# -- a hinted store backup equals a full walk -------------------------------------------------------

store_repo = pytest.importorskip("cairn.store.repository")


def _tree(repo, s) -> list[tuple]:
    entries = repo.list_tree(s, "", recursive=True)
    return [(e.path, e.kind, e.mode, e.uid, e.size, e.mtime_ns, e.target) for e in entries]


def test_hinted_backup_equals_full_walk(env, tmp_path):
    from cairn.store.model import BackupRequest

    os.makedirs(env.p("docs", "old"))
    for i in range(20):
        write(env.p("docs", f"f{i}"), os.urandom(100))
    write(env.p("docs", "old", "keep"), b"keep")
    os.makedirs(env.p("untouched", "deep"))
    write(env.p("untouched", "deep", "u"), b"u")
    repo = store_repo.Repository.open_local(str(tmp_path / "repo"), create=True)
    t = env.tracker()
    hint, tok = t.prepare("app", "full", None, None)
    full = repo.backup(BackupRequest("app", (env.src,), "full", changes=hint))
    t.committed("app", full.level, full.id, tok)

    # one of each change
    write(env.p("docs", "f1"), b"rewritten")
    write(env.p("docs", "f2"), b"appended", "ab")
    os.unlink(env.p("docs", "f3"))
    os.rename(env.p("docs", "f4"), env.p("docs", "f4-renamed"))
    os.rename(env.p("docs", "old"), env.p("archive"))
    os.chmod(env.p("docs", "f5"), 0o600)
    os.symlink("docs/f6", env.p("ln"))
    os.makedirs(env.p("fresh", "a", "b"))
    write(env.p("fresh", "a", "b", "deep-file"), b"deep")
    outside = tmp_path / "incoming"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "y").write_bytes(b"y")
    os.rename(outside, env.p("incoming"))

    hint, tok = t.prepare("app", "incremental", full.id, full.level)
    assert hint is not None and env.p("untouched") not in hint.paths | hint.rescan
    inc = repo.backup(BackupRequest("app", (env.src,), "incremental", changes=hint))
    t.committed("app", inc.level, inc.id, tok)
    walked = repo.backup(BackupRequest("app", (env.src,), "full"))
    assert _tree(repo, inc) == _tree(repo, walked)
    assert inc.tree == walked.tree

    # a differential from the union since the full also equals the walk
    write(env.p("docs", "f7"), b"later")
    dhint, dtok = t.prepare("app", "differential", full.id, "full")
    assert env.p("docs", "f1") in dhint.paths and env.p("docs", "f7") in dhint.paths
    diff = repo.backup(BackupRequest("app", (env.src,), "differential", changes=dhint))
    walked2 = repo.backup(BackupRequest("app", (env.src,), "full"))
    assert diff.tree == walked2.tree
    repo.close()


def test_a_directory_moved_out_or_deleted_but_held_open_stops_reporting_after_a_set(tracked):
    """A directory moved out of the source, and one deleted while a process holds a file open in
    it, keep their inotify watch in the kernel: their later writes are not the source's
    changes. The next set's prepare drops those watches, so they count for nothing after it
    (no pending changes, no RPO set of an unchanged source, no whole-source rescan)."""
    env, t = tracked
    outside = os.path.join(env.root, "outside")
    os.makedirs(outside)
    watches = t.status("app").watches
    os.makedirs(env.p("held"))
    held = open(env.p("held", "log"), "ab")
    try:
        env.wait_until(lambda: t.status("app").watches == watches + 1, what="held/ to be watched")
        os.rename(env.p("sub"), os.path.join(outside, "sub"))  # sub/ and sub/deep/ leave the source
        shutil.rmtree(env.p("held"))                           # gone, but its inode pinned by the open file
        hint, token = t.prepare("app", "incremental", "F1", "full")
        t.committed("app", "incremental", "I1", token)
        assert t.status("app").watches == watches - 2  # the root's only: sub/, sub/deep/ and held/ dropped
        write(os.path.join(outside, "sub", "deep", "new"))
        held.write(b"more\n")
        held.flush()
        hint, _ = incremental(t, "I1")  # its barrier: the writes' events, if any, are read by now
        assert hint is not None, t.status("app").reasons
        assert hint.paths == frozenset() and hint.rescan == frozenset(), hint
        assert t.status("app").pending_paths == 0 and t.status("app").state == "complete"
    finally:
        held.close()


def test_writes_in_a_directory_deleted_while_held_open_do_not_make_the_source_walk(tracked):
    """An application deletes a directory while it still holds a file open inside and goes on
    writing it: the kernel keeps the watch and reports those writes, which no path of the source
    holds any more. They concern nothing in the tree (the deletion was reported through the
    parent), so the next set keeps the journal: it lists the deletion and nothing is walked
    (they made every set walk the whole source while such a writer ran)."""
    env, t = tracked
    watches = t.status("app").watches
    os.makedirs(env.p("sub", "held"))
    with open(env.p("sub", "held", "log"), "ab") as held:
        env.wait_until(lambda: t.status("app").watches == watches + 1, what="sub/held/ to be watched")
        held.write(b"first\n")
        held.flush()
        _, token = t.prepare("app", "incremental", "F1", "full")
        t.committed("app", "incremental", "I1", token)  # a set that holds sub/held/
        shutil.rmtree(env.p("sub", "held"))  # gone, its inode pinned by the open file
        for _ in range(3):
            held.write(b"more\n")
            held.flush()
        write(env.p("a"), b"changed")
        hint, _ = incremental(t, "I1")
        assert hint is not None, _why(t)
        assert hint.rescan == frozenset(), hint
        assert {env.p("a"), env.p("sub"), env.p("sub", "held")} <= hint.paths, hint


def test_aux_paths_outside_the_watched_paths_are_walked_by_every_set(env):
    """aux_paths are captured by every set (windows/capture.py) but not watched: an incremental
    walks a directory of them and re-checks a file, or their changes were never captured."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class AuxSrc:
        name: str
        paths: tuple[str, ...]
        aux_paths: tuple[str, ...]
        exclude: tuple[str, ...] = ()
        watch: bool = True

        def path_excludes(self):
            return (), ()

    aux_dir = os.path.join(env.root, "auxd")
    aux_file = os.path.join(env.root, "aux.conf")
    os.makedirs(aux_dir)
    write(os.path.join(aux_dir, "a1"), b"old")
    write(aux_file, b"conf")
    inside = os.path.join(env.src, "sub")
    os.makedirs(inside)
    t = env.tracker([AuxSrc("app", (env.src,), (aux_dir, aux_file, inside))])
    env.trust(t)
    hint, _ = incremental(t)
    assert hint is not None, _why(t)
    assert aux_dir in hint.rescan and aux_file in hint.paths
    assert inside not in hint.rescan  # under a watched path: its events are seen


@pytest.mark.parametrize("made_again", [False, True], ids=["removed", "removed-and-made-again"])
def test_a_barrier_directory_removed_by_hand_is_made_and_watched_again(tracked, made_again):
    """Someone removed <state>/watch-barrier: the next set is not failed with 'No such file', and
    the barrier works again (a directory made again by hand is watched again too), so sets stop
    waiting for it and walking."""
    env, t = tracked
    barrier = os.path.join(env.state, "watch-barrier")
    shutil.rmtree(barrier)
    if made_again:
        os.mkdir(barrier)
    incremental(t)  # may walk (the barrier could not answer), never raises
    write(env.p("after"), b"x")
    assert env.p("after") in changed_paths(t)
    assert t._watcher.barrier(timeout=5.0)


def test_a_source_whose_watch_failed_counts_as_unprotected_and_is_watched_again(env, monkeypatch):
    """The watch failed at start (here: the source path did not exist yet). No event can tell
    of a change, so the source counts as unprotected since then (an RPO set, a walk, becomes
    due), and the flush thread tries again on its own, not only when a set is prepared."""
    from cairn.daemon.changes import tracker as tracker_mod

    monkeypatch.setattr(tracker_mod, "WATCH_RETRY", 0.2)
    late = os.path.join(env.root, "late")
    t = env.tracker([env.source("app", (late,))])
    assert t.status("app").state == "rescan"
    assert f"unable to watch '{late}': no such directory" in t.status("app").reasons
    since = t.oldest_unprotected("app")
    assert since is not None and since <= __import__("time").time()
    os.makedirs(late)
    env.wait_until(lambda: t._is_watched("app"), timeout=10, what="the source watched again")
    env.trust(t)
    write(os.path.join(late, "f"), b"x")
    hint, _ = incremental(t)
    assert hint is not None and os.path.join(late, "f") in hint.paths, _why(t)


def test_an_overflow_in_a_tree_of_more_directories_than_the_queue_holds_is_recovered_from_once(env):
    """The watches are reconciled after an overflow without removing them: removing one queues
    an IN_IGNORED event, and with more directories than max_queued_events those overflow the
    queue again, forever (the journal never out of rescan, the daemon busy rebuilding)."""
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        limit = int(f.read())
    if limit > 40_000:
        pytest.skip(f"max_queued_events is {limit}: too many directories to make quickly")
    for i in range(limit + 500):
        os.makedirs(env.p(f"d{i // 256:03d}", f"{i % 256:03d}"))
    t = env.tracker()
    env.trust(t)
    overflows = []
    seen = t.watcher.overflowed
    t.watcher.overflowed = lambda: (overflows.append(1), seen())[1]
    watcher_hooks.simulate_overflow(t.watcher)
    env.wait_until(lambda: overflows, what="the injected overflow handled")
    hint, token = incremental(t)  # a barrier: every event up to here handled
    assert hint is None  # the source is walked
    t.committed("app", "incremental", "I1", token)
    write(env.p("d010", "200", "after"))  # a directory watched before the overflow and after
    os.makedirs(env.p("d010", "new"))
    write(env.p("d010", "new", "made"))
    hint, _ = incremental(t, "I1")
    assert hint is not None, _why(t)
    assert env.p("d010", "200", "after") in hint.paths
    assert env.p("d010", "new") in hint.rescan  # a directory made after it is watched: its content walked
    assert t.status("app").state == "complete", _why(t)
    assert len(overflows) == 1, f"{len(overflows)} overflows: the rebuild overflowed the queue again"
