"""The change tracker on real inotify, where the kernel is silent or the watcher used to lose
track: excludes anchored at a source path, a symlinked root retargeted, directories gone before
their watch was added, files with a hard link outside the source, mounts below a root."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import warnings

import pytest
import watcher_hooks
from cairn.daemon.changes import tracker as tracker_mod
from cairn.daemon.changes import watcher as watcher_mod
from cairn.daemon.changes.tracker import ChangeTracker
from mounts import mount_tmpfs


def write(path: str, data: bytes = b"x", mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def hint_of(t: ChangeTracker, base: str = "F1"):
    hint, _ = t.prepare("app", "incremental", base, None)
    assert hint is not None, "journal unexpectedly untrusted"
    return hint


# -- excludes anchored at the source path -----------------------------------------------------------

def test_excludes_anchored_at_the_source_path_apply_to_events_and_watches(env):
    os.makedirs(env.p("cache", "x"))
    os.makedirs(env.p("keep"))
    write(env.p("keep.log"), b"1\n")
    write(env.p("other.log"), b"1\n")
    excludes = ("*.log", f"!{env.src}/keep.log", f"{env.src}/cache/")
    t = env.tracker([env.source("app", (env.src,), excludes)])
    env.trust(t)
    assert t.status("app").watches == 2          # the root and keep/: cache/ is excluded
    write(env.p("keep.log"), b"2\n", "ab")       # re-included by the anchored negation
    write(env.p("other.log"), b"2\n", "ab")
    write(env.p("cache", "x", "f"))
    write(env.p("keep", "k.log"))                # excluded, but it changed keep/'s mtime
    hint = hint_of(t)
    assert hint.paths == frozenset({env.p("keep.log"), env.p("keep")})
    assert hint.rescan == frozenset()


def test_an_anchored_exclude_applies_under_its_own_source_path_only(env):
    a, b = env.p("a"), env.p("b")
    for root in (a, b):
        os.makedirs(os.path.join(root, "skip"))
    t = env.tracker([env.source("app", (a, b), (f"{a}/skip/",))])
    env.trust(t)
    assert t.status("app").watches == 3          # a, b and b/skip
    write(os.path.join(a, "skip", "f"))
    write(os.path.join(b, "skip", "f"))
    assert hint_of(t).paths == frozenset({os.path.join(b, "skip", "f"), os.path.join(b, "skip")})


# -- a symlinked root retargeted ---------------------------------------------------------------------

@pytest.fixture
def linked_root(env):
    releases = os.path.join(env.root, "releases")
    for r in ("r1", "r2"):
        os.makedirs(os.path.join(releases, r))
        write(os.path.join(releases, r, "app.txt"), r.encode())
    current = os.path.join(env.root, "current")
    os.symlink("releases/r1", current)
    t = env.tracker([env.source("app", (current,))])
    env.trust(t)
    return env, t, current


def retarget(link: str, target: str) -> None:
    tmp = link + ".tmp"
    os.symlink(target, tmp)
    os.replace(tmp, link)  # what `mv -T` does


def test_retargeted_symlink_root_is_walked_then_watched_at_its_new_target(linked_root):
    env, t, current = linked_root
    retarget(current, "releases/r2")
    hint, token = t.prepare("app", "incremental", "F1", "full")
    assert hint is None                            # the whole new tree must be walked
    t.committed("app", "incremental", "I1", token)
    write(os.path.join(current, "app.txt"), b"r2 again")
    hint = hint_of(t, "I1")
    assert os.path.join(current, "app.txt") in hint.paths
    write(os.path.join(env.root, "releases", "r1", "only-old"))  # no longer the source
    assert os.path.join(current, "only-old") not in hint_of(t, "I1").paths


def test_retargeted_symlink_root_is_noticed_without_a_set(linked_root):
    env, t, current = linked_root
    assert t.oldest_unprotected("app") is None
    retarget(current, "releases/r2")
    # the tracker's own thread notices: an RPO would wake up without any event
    env.wait_until(lambda: t.oldest_unprotected("app") is not None, what="the retarget noticed")
    status = t.status("app")
    assert status.state == "rescan" and any("now leads to" in r for r in status.reasons), status


# -- directories gone before their watch was added ---------------------------------------------------

def test_directories_gone_before_their_watch_are_not_gaps(env):
    t = env.tracker()
    env.trust(t)
    assert watcher_hooks.pause(t.watcher)
    try:
        for i in range(300):  # every one is gone by the time its creation is read
            os.mkdir(env.p(f"t{i}"))
            os.rmdir(env.p(f"t{i}"))
    finally:
        watcher_hooks.resume(t.watcher)
    hint, token = t.prepare("app", "incremental", "F1", "full")
    assert hint is not None and hint.rescan <= {env.p(f"t{i}") for i in range(300)}  # new directories
    status = t.status("app")
    assert status.state == "complete", status.reasons         # nothing that exists went unwatched
    t.committed("app", "incremental", "I1", token)
    assert hint_of(t, "I1") == type(hint)()


def test_unwatched_directories_are_cleared_once_a_set_walked_them_and_they_are_gone(env):
    for d in ("d1/x", "d2/y", "d3/z"):
        os.makedirs(env.p(d))
    t = env.tracker(max_watches=4)
    env.trust(t)
    unwatched = set(hint_of(t).rescan)
    assert unwatched
    for d in unwatched:
        shutil.rmtree(d)
    hint, token = t.prepare("app", "incremental", "F1", "full")
    assert unwatched <= set(hint.rescan)
    t.committed("app", "incremental", "I1", token)
    status = t.status("app")
    assert status.state == "complete", status.reasons
    assert hint_of(t, "I1").rescan == frozenset()


# -- files with a hard link outside the source ---------------------------------------------------------

def test_file_linked_outside_before_the_start_is_rechecked_by_every_set(env):
    outside = os.path.join(env.root, "outside")
    os.makedirs(outside)
    os.makedirs(env.p("data"))
    write(env.p("data", "f"), b"v1\n")
    os.link(env.p("data", "f"), os.path.join(outside, "f"))
    write(env.p("other"))
    t = env.tracker()
    env.wait_until(lambda: t.status("app").linked_files == 1, what="the link census")
    env.trust(t)
    assert t.status("app").pending_paths == 0 and t.oldest_unprotected("app") is None
    write(os.path.join(outside, "f"), b"through the outside name\n", "ab")
    # no event, yet not "nothing changed": a scheduled set is not skipped, an RPO wakes up
    assert t.status("app").pending_paths == 1 and t.oldest_unprotected("app") is not None
    assert env.p("data", "f") in hint_of(t).paths
    # still in the next incremental's hint: the outside name can change it at any time
    hint, token = t.prepare("app", "incremental", "F1", "full")
    t.committed("app", "incremental", "I1", token)
    assert t.status("app").pending_paths == 0
    assert env.p("data", "f") in hint_of(t, "I1").paths
    os.unlink(os.path.join(outside, "f"))          # one name left: no longer re-checked
    hint = hint_of(t, "I1")
    assert env.p("data", "f") in hint.paths        # checked once more, then dropped
    hint, token = t.prepare("app", "incremental", "I1", "incremental")
    t.committed("app", "incremental", "I2", token)
    assert env.p("data", "f") not in hint_of(t, "I2").paths
    assert t.status("app").linked_files == 0


def test_file_linked_outside_while_watched_is_rechecked_once_a_walk_met_it(env):
    """Linking a name outside raises no event for the watched name (the kernel reports a link
    count change to watches of the file itself only): a walk of the source (the backstop
    scan's) hands such files to the tracker."""
    outside = os.path.join(env.root, "outside")
    os.makedirs(outside)
    write(env.p("f"), b"v1\n")
    t = env.tracker()
    env.trust(t)
    os.link(env.p("f"), os.path.join(outside, "f"))
    t.note_links("app", [env.p("f"), os.path.join(outside, "f")])   # what the backstop walk met
    assert t.status("app").linked_files == 1                        # the name outside is not kept
    write(os.path.join(outside, "f"), b"unseen\n", "ab")
    assert env.p("f") in hint_of(t).paths


def test_too_many_linked_files_walk_the_roots(env, monkeypatch):
    monkeypatch.setattr(tracker_mod, "MAX_LINKED_FILES", 2)
    outside = os.path.join(env.root, "outside")
    os.makedirs(outside)
    for i in range(3):
        write(env.p(f"f{i}"))
        os.link(env.p(f"f{i}"), os.path.join(outside, f"f{i}"))
    t = env.tracker()
    env.wait_until(lambda: any("hard links" in r for r in t.status("app").reasons), what="the overflow")
    env.trust(t)
    assert hint_of(t).rescan == frozenset({env.src})
    assert t.status("app").state == "rescan"


# -- file systems mounted and unmounted below a root --------------------------------------------------

def test_mount_below_a_root_is_walked_and_watched(env):
    vol = env.p("vol")
    os.makedirs(vol)
    write(os.path.join(vol, "hidden"))
    t = env.tracker()
    env.trust(t)
    mount_tmpfs(vol)
    try:
        write(os.path.join(vol, "new-file"))
        hint, token = t.prepare("app", "incremental", "F1", "full")
        assert hint is not None and vol in hint.rescan
        t.committed("app", "incremental", "I1", token)
        write(os.path.join(vol, "second"))       # the mounted file system is watched now
        assert os.path.join(vol, "second") in hint_of(t, "I1").paths
        env.trust(t, set_id="F2")
    finally:
        subprocess.run(["umount", vol], check=True)
    hint, _ = t.prepare("app", "incremental", "F2", "full")
    assert hint is None or vol in hint.rescan     # the covered directory shows again: walked
    status = t.status("app")
    assert status.state == "rescan"


def test_a_file_bind_mounted_over_one_of_the_source_is_rechecked_by_every_set(env):
    """A single file mounted over a file of the source (a container's resolv.conf): writes to
    it raise no event in the watched tree, whichever name they go through, so every set
    re-checks it (as it does files with a name outside); mounted before or after the start."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    host = os.path.join(env.root, "host")
    os.makedirs(host)
    write(os.path.join(host, "resolv.conf"), b"nameserver 10.0.0.1\n")
    write(os.path.join(host, "hosts"), b"127.0.0.1 localhost\n")
    os.makedirs(env.p("etc"))
    for name in ("resolv.conf", "hosts"):
        write(env.p("etc", name), b"covered\n")
    mounted = []
    try:
        subprocess.run(["mount", "--bind", os.path.join(host, "resolv.conf"), env.p("etc", "resolv.conf")],
                       check=True)
        mounted.append(env.p("etc", "resolv.conf"))
        t = env.tracker()
        env.trust(t)
        write(os.path.join(host, "resolv.conf"), b"nameserver 10.0.0.2\n")
        assert env.p("etc", "resolv.conf") in hint_of(t).paths
        subprocess.run(["mount", "--bind", os.path.join(host, "hosts"), env.p("etc", "hosts")], check=True)
        mounted.append(env.p("etc", "hosts"))
        env.wait_until(lambda: env.p("etc", "hosts") in hint_of(t).paths, what="the mount to be seen")
        assert env.p("etc", "hosts") not in hint_of(t).rescan
    finally:
        for m in mounted:
            subprocess.run(["umount", m], check=False)


# -- a watched directory renamed into a new directory before the events are read ---------------------

def test_a_watched_tree_renamed_into_a_new_directory_while_events_wait_stays_watched(env):
    """`mkdir Z; mv A Z/B` read late: walking the new Z finds B, the inode already watched as A,
    and inotify answers with A's watch. The watches of A and below are moved to Z/B then (as the
    move's handling would): the set walks Z (and looks at A and the root's listing), not the whole
    source, and later changes below B are seen through the same watches."""
    os.makedirs(env.p("A", "sub", "deep"))
    t = env.tracker()
    env.trust(t)
    watched_before = t.status("app").watches
    assert watcher_hooks.pause(t.watcher)
    try:
        os.mkdir(env.p("Z"))
        os.rename(env.p("A"), env.p("Z", "B"))
    finally:
        watcher_hooks.resume(t.watcher)
    # the walk of Z reached B under A's watch: its watches moved with it, and only what moved is
    # walked (Z, new, holds B) or looked at (A's name, the root's listing)
    hint, token = t.prepare("app", "incremental", "F1", "full")
    assert hint is not None, t.status("app").reasons
    assert hint.rescan == frozenset({env.p("Z")}), hint
    assert {env.p("A"), env.src} <= hint.paths, hint
    assert not any("renamed" in r or "watched anew" in r for r in t.status("app").reasons), t.status("app").reasons
    t.committed("app", "incremental", "I1", token)
    for d in ("Z", "Z/B", "Z/B/sub", "Z/B/sub/deep"):
        assert t.watcher.is_watched("app", env.p(*d.split("/"))), f"{d} lost its watch"
    assert t.status("app").watches == watched_before + 1  # Z is new; B and below watched again
    write(env.p("Z", "B", "sub", "deep", "late.txt"))
    hint = hint_of(t, "I1")
    assert env.p("Z", "B", "sub", "deep", "late.txt") in hint.paths or \
        any(env.p("Z", "B", "sub", "deep").startswith(r) for r in hint.rescan), hint


def test_a_directory_renamed_the_instant_its_watch_was_added_keeps_its_watch(env):
    """`mkdir -p A/s; mkdir -p Z/s; mv A Z/B`, the rename landing right after the watcher added A's
    watch while handling A's creation, before it looked at A again (a loaded machine: the campaign
    test below, seed 5, round 2). The walk of the new Z meets B under A's watch. The watch stays
    with the directory through the move and the next barrier's tidying (it was dropped there with
    the node left at A's old path, while the journal said 'complete'), and later writes in it are
    seen."""
    t = env.tracker()
    env.trust(t)
    a = os.fsencode(os.path.realpath(env.p("A")))
    dest = env.p("Z", "B")

    def rename_a(path: bytes) -> None:  # on the inotify thread, right after a watch was added
        if path == a and os.path.isdir(a):
            os.rename(a, dest)

    assert watcher_hooks.pause(t.watcher)
    try:
        os.makedirs(env.p("A", "s"))
        write(env.p("A", "s", "f"))
        os.makedirs(env.p("Z", "s"))
        watcher_hooks.after_add(t.watcher, rename_a)
    finally:
        watcher_hooks.resume(t.watcher)
    hint, token = t.prepare("app", "incremental", "F1", "full")
    watcher_hooks.after_add(t.watcher, None)
    assert os.path.isdir(dest), "the rename did not happen"
    assert hint is not None, t.status("app").reasons
    assert any(dest.startswith(r + "/") or dest == r for r in hint.rescan), hint
    assert env.p("A") in hint.paths or env.p("A") in hint.rescan, hint
    t.committed("app", "incremental", "I1", token)
    for d in ("Z", "Z/s", "Z/B", "Z/B/s"):
        assert t.watcher.is_watched("app", env.p(*d.split("/"))), f"{d} lost its watch"
    assert t.status("app").state == "complete", t.status("app").reasons
    write(env.p("Z", "B", "late"))
    write(env.p("Z", "B", "s", "later"))
    hint = hint_of(t, "I1")
    assert {env.p("Z", "B", "late"), env.p("Z", "B", "s", "later")} <= hint.paths, hint


@pytest.mark.parametrize("known_at_new_path", [True, False])
def test_a_watch_whose_directory_was_never_known_is_not_dropped_unseen(env, monkeypatch, known_at_new_path):
    """As above, but A's inode could be read neither just before its watch was added nor just after
    (as if it were renamed in and out around the add). The walk of Z meets B under that watch: the
    kernel's answer says the watch is B's, which is then known, and the watch stays. If B is gone
    again by then, which directory the watch follows cannot be told: the next set watches the
    source anew and walks it. Either way no watch is dropped while the journal says 'complete'."""
    a = os.fsencode(os.path.realpath(env.p("A")))
    dest = env.p("Z", "B")
    unknown = {a} if known_at_new_path else {a, os.fsencode(os.path.realpath(dest))}
    real_inode = watcher_mod._inode
    monkeypatch.setattr(watcher_mod, "_inode", lambda path: None if path in unknown else real_inode(path))
    t = env.tracker()
    env.trust(t)

    def rename_a(path: bytes) -> None:
        if path == a and os.path.isdir(a):
            os.rename(a, dest)

    assert watcher_hooks.pause(t.watcher)
    try:
        os.makedirs(env.p("A", "s"))
        os.makedirs(env.p("Z", "s"))
        watcher_hooks.after_add(t.watcher, rename_a)
    finally:
        watcher_hooks.resume(t.watcher)
    hint, token = t.prepare("app", "incremental", "F1", "full")
    watcher_hooks.after_add(t.watcher, None)
    assert os.path.isdir(dest), "the rename did not happen"
    if known_at_new_path:
        assert hint is not None, t.status("app").reasons
        assert any(dest == r or dest.startswith(r + "/") for r in hint.rescan), hint
    else:
        assert hint is None, hint  # watched anew, and walked
    t.committed("app", "incremental", "I1", token)
    for d in ("Z", "Z/s", "Z/B", "Z/B/s"):
        assert t.watcher.is_watched("app", env.p(*d.split("/"))), f"{d} lost its watch"
    assert t.status("app").state == "complete", t.status("app").reasons
    write(env.p("Z", "B", "s", "later"))
    assert env.p("Z", "B", "s", "later") in hint_of(t, "I1").paths


def test_a_watched_tree_met_at_its_new_path_adds_no_callback_twice(env):
    """The kernel answers a watch added at a renamed directory's new path with the watch it has,
    whose callback is this watcher's already: watchdog warned (RuntimeWarning: "Callback with id
    ... already exists ... it will be overwritten") once per directory met so. Nothing warns, and
    each directory is watched once."""
    os.makedirs(env.p("A", "sub", "deep"))
    t = env.tracker()
    env.trust(t)
    watched_before = t.status("app").watches
    with warnings.catch_warnings(record=True) as caught:  # (on the inotify thread too: filters are global)
        warnings.simplefilter("always")
        assert watcher_hooks.pause(t.watcher)
        try:
            os.makedirs(env.p("Z", "Y"))
            os.rename(env.p("A"), env.p("Z", "Y", "B"))
        finally:
            watcher_hooks.resume(t.watcher)
        assert t.watcher.barrier()
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]
    assert t.status("app").watches == watched_before + 2  # Z and Z/Y; B and below as before
    for d in ("Z/Y/B", "Z/Y/B/sub", "Z/Y/B/sub/deep"):
        assert t.watcher.is_watched("app", env.p(*d.split("/"))), f"{d} lost its watch"


def test_a_watch_dropped_while_its_directory_exists_is_a_reported_gap(env):
    """watchdog tidying its tree can drop the watches of a subtree whose directories are still
    there (a move it read late): each is reported unwatched, and the next set watches the source
    anew and walks it; later changes there are seen again."""
    os.makedirs(env.p("a", "b"))
    t = env.tracker()
    env.trust(t)
    ((info, real),) = t.watcher._placed("app", env.p("a"))
    group = next(g for g in info.groups if g.watches_path(real))
    with group._lock:
        group._remove_node_and_watches(group._find_node_by_path(real), real)
    assert not t.watcher.is_watched("app", env.p("a"))
    reasons = t.status("app").reasons
    assert any("its watch was dropped while it still exists: '" + env.p("a", "b") + "'" in r for r in reasons), reasons
    hint, token = t.prepare("app", "incremental", "F1", "full")
    assert hint is None  # watched anew, and walked
    assert t.watcher.is_watched("app", env.p("a")) and t.watcher.is_watched("app", env.p("a", "b"))
    t.committed("app", "incremental", "I1", token)
    write(env.p("a", "b", "later"))
    assert env.p("a", "b", "later") in hint_of(t, "I1").paths


def test_a_directory_made_removed_and_made_again_before_its_events_are_read_keeps_the_journal(env):
    """`mkdir T/a; rm -r T; mkdir T/a` read late (an application's temporary directories): the
    first creation's handling watches the second T, then the deletion's detaches it, and the
    second creation finds T's inode already watched. Not a rename: the journal stays trusted, T
    is walked as a new directory, and what is written in it later is seen."""
    os.makedirs(env.p("q"))
    t = env.tracker()
    env.trust(t)
    assert watcher_hooks.pause(t.watcher)
    try:
        for _ in range(2):
            os.makedirs(env.p("q", "tmp", "a"))
            shutil.rmtree(env.p("q", "tmp"))
        os.makedirs(env.p("q", "tmp", "a"))
    finally:
        watcher_hooks.resume(t.watcher)
    hint = hint_of(t)
    assert hint is not None, t.status("app").reasons  # not a whole-source walk
    assert any(env.p("q", "tmp").startswith(r) for r in hint.rescan), hint
    assert not any("renamed" in r or "watched anew" in r for r in t.status("app").reasons), t.status("app").reasons
    _, token = t.prepare("app", "incremental", "F1", "full")
    t.committed("app", "incremental", "I1", token)
    write(env.p("q", "tmp", "a", "later"))
    assert env.p("q", "tmp", "a", "later") in hint_of(t, "I1").paths
    assert t.watcher.is_watched("app", env.p("q", "tmp", "a"))


# -- directories staged under a temporary name and renamed into place, read late --------------------

def _snapshot(root: str) -> dict[str, tuple[int, int, int, int]]:
    """Every entry below `root` (and root) with what a walk compares: mode, size, mtime, inode."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            p = os.path.normpath(os.path.join(top, name))
            if name == "." and p != os.path.normpath(root):
                continue
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size if not os.path.isdir(p) else 0, st.st_mtime_ns, st.st_ino)
    return out


def test_directories_renamed_into_place_while_their_events_wait_cost_only_their_subtrees(env):
    """A content repository's writer: a directory staged as `tmp-N/` (files, a subdirectory) and
    renamed into a new fan-out directory (`objects/NN/final`), an older one moved aside and
    removed, all read late. The walk of the new `objects/NN` meets the staged directory at its
    final path, under the watch it has as `tmp-N`. That used to make the next set watch the whole
    source anew and walk it; now only the moved subtrees are walked, every change since the last
    set is in the hint, and the moved directories stay watched (later writes are seen as paths)."""
    os.makedirs(env.p("objects"))
    os.makedirs(env.p("static", "css"))
    write(env.p("static", "css", "site.css"))
    t = env.tracker()
    env.trust(t)
    base, before = "F1", _snapshot(env.src)
    walks = 0
    for i in range(8):
        tmp = env.p(f"tmp-{i:04x}")
        os.makedirs(os.path.join(tmp, "sub"))
        write(os.path.join(tmp, "a"), b"a%d" % i)
        write(os.path.join(tmp, "sub", "b"), b"b%d" % i)
        assert t.watcher.barrier()  # the staged directory is watched under its temporary name
        assert watcher_hooks.pause(t.watcher)
        try:
            os.mkdir(env.p("objects", f"{i:02x}"))
            os.rename(tmp, env.p("objects", f"{i:02x}", "final"))
            if i >= 2:  # an older one moved aside and removed
                aside = env.p(f"old-{i}")
                os.rename(env.p("objects", f"{i - 2:02x}", "final"), aside)
                shutil.rmtree(aside)
        finally:
            watcher_hooks.resume(t.watcher)
        if i >= 1:  # written after the previous set, in the directory it saw renamed into place
            late = env.p("objects", f"{i - 1:02x}", "final", "sub", f"late-{i}")
            write(late)
        hint, token = t.prepare("app", "incremental", base, None)
        now = _snapshot(env.src)
        changed = {p for p in before.keys() | now.keys() if before.get(p) != now.get(p)}
        if hint is None:
            walks += 1
        else:
            # a name that is gone is covered by the name of the directory it went with
            missed = [p for p in changed if p not in hint.paths
                      and not any(p == r or p.startswith(r + "/") for r in hint.rescan)
                      and not (p not in now and any(p.startswith(q + "/") for q in hint.paths))]
            assert not missed, (i, missed, hint)
            assert env.src not in hint.rescan, hint  # the moved subtrees only, not the source
            if i >= 1:
                assert late in hint.paths, (late, hint)  # seen by its watch, not by a walk
        t.committed("app", "incremental", f"I{i}", token)
        base, before = f"I{i}", now
        for top, dirs, _ in os.walk(env.src):
            for d in [top, *[os.path.join(top, x) for x in dirs]]:
                assert t.watcher.is_watched("app", d), f"{d} lost its watch"
    assert walks == 0, f"{walks} of 8 incrementals walked the whole source"
    assert t.status("app").state == "complete", t.status("app").reasons


def test_a_directory_met_at_its_new_path_keeps_its_watches_when_its_move_is_read(env):
    """`mv X Y; mv A Y/B` read late: watching the tree moved to Y meets B, the inode watched as A,
    before A's move is read; Y's watch then reports that move. Its handling finds the directory
    already at Y/B and keeps its watches (watchdog took it for another directory moved over it
    and dropped them, and the source was watched anew and walked)."""
    os.makedirs(env.p("X"))
    os.makedirs(env.p("A", "sub"))
    t = env.tracker()
    env.trust(t)
    watched_before = t.status("app").watches
    assert watcher_hooks.pause(t.watcher)
    try:
        os.rename(env.p("X"), env.p("Y"))
        os.rename(env.p("A"), env.p("Y", "B"))
    finally:
        watcher_hooks.resume(t.watcher)
    hint, token = t.prepare("app", "incremental", "F1", "full")
    assert hint is not None, t.status("app").reasons  # not a whole-source walk
    for p in (env.p("A"), env.p("X"), env.p("Y"), env.src):
        assert p in hint.paths or p in hint.rescan, (p, hint)
    assert any(env.p("Y", "B").startswith(r) for r in hint.rescan), hint
    assert env.src not in hint.rescan, hint
    t.committed("app", "incremental", "I1", token)
    for d in ("Y", "Y/B", "Y/B/sub"):
        assert t.watcher.is_watched("app", env.p(*d.split("/"))), f"{d} lost its watch"
    assert t.status("app").watches == watched_before
    write(env.p("Y", "B", "sub", "late"))
    assert env.p("Y", "B", "sub", "late") in hint_of(t, "I1").paths
    assert t.status("app").state == "complete", t.status("app").reasons


def _dirs(root: str) -> list[str]:
    return [top for top, _, _ in os.walk(root)]


def test_directory_trees_made_moved_and_removed_while_events_wait_keep_every_hint_whole(env):
    """Drawn operations (directories made with content, renamed, into new directories too, moved
    aside and removed, files written), some read late and some while they happen: every hint
    holds every change since the set before, a directory without a watch is never hidden behind
    a 'complete' journal, and few sets walk the whole source (most did, each rename of a watched
    directory met at its new path tearing it)."""
    walks = 0
    for seed in range(6):
        rng = random.Random(seed)
        top = env.p(f"s{seed}")
        os.makedirs(os.path.join(top, "d0", "d1"))
        t = env.tracker([env.source(f"s{seed}", (top,))])
        env.trust(t, f"s{seed}")
        base, before, n = "F1", _snapshot(top), 0
        for rnd in range(12):
            paused = False
            for _ in range(rng.randint(3, 12)):
                if not paused and rng.random() < 0.4:
                    assert watcher_hooks.pause(t.watcher)
                    paused = True
                ds, op, n = _dirs(top), rng.random(), n + 1
                if op < 0.25:
                    d = os.path.join(rng.choice(ds), f"n{n}")
                    os.makedirs(os.path.join(d, "s"))
                    write(os.path.join(d, "s", "f"))
                elif op < 0.55 and len(ds) > 1:
                    src = rng.choice(ds[1:])
                    into = [x for x in ds if not (x + "/").startswith(src + "/")]
                    if rng.random() < 0.5:
                        made = os.path.join(rng.choice(into), f"m{n}")
                        os.mkdir(made)
                        into = [made]
                    os.rename(src, os.path.join(rng.choice(into), f"r{n}"))
                elif op < 0.7 and len(ds) > 2:
                    aside = os.path.join(env.root, f"aside-{seed}-{n}")
                    os.rename(rng.choice(ds[1:]), aside)
                    shutil.rmtree(aside)
                else:
                    write(os.path.join(rng.choice(ds), f"w{n}"), b"%d" % n)
                if paused and rng.random() < 0.3:
                    watcher_hooks.resume(t.watcher)
                    paused = False
            if paused:
                watcher_hooks.resume(t.watcher)
            hint, token = t.prepare(f"s{seed}", "incremental", base, None)
            now = _snapshot(top)
            changed = {p for p in before.keys() | now.keys() if before.get(p) != now.get(p)}
            if hint is None:
                walks += 1
            else:
                missed = [p for p in changed if p not in hint.paths
                          and not any(p == r or p.startswith(r + "/") for r in hint.rescan)
                          and not (p not in now and any(p.startswith(q + "/") for q in hint.paths))]
                assert not missed, (seed, rnd, missed)
            t.committed(f"s{seed}", "incremental", f"I{rnd}", token)
            base, before = f"I{rnd}", now
            unwatched = [d for d in _dirs(top) if not t.watcher.is_watched(f"s{seed}", d)]
            assert not unwatched or t.status(f"s{seed}").state != "complete", (seed, rnd, unwatched)
        t.stop()
    assert walks <= 12, f"{walks} of 72 sets walked the whole source"
