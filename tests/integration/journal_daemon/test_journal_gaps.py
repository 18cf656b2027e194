"""The change journal inside the real daemon where inotify is silent or the watcher used to lose
track, each found by running real application writers against cairnd: after the writers stop,
the last incremental set must restore the tree exactly as it is, and the journal must say
'complete' only when it can vouch for that."""

from __future__ import annotations

import os
import shutil
import subprocess

from cairnd_harness import snapshot
from journal_daemon_kit import wait_until
from mounts import mount_tmpfs


def write(path: str, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def without(snap: dict, *names: str) -> dict:
    return {k: v for k, v in snap.items() if k not in names}


def test_a_negated_exclude_anchored_at_the_source_path_is_journaled(jd):
    write(os.path.join(jd.src, "keep.log"), b"keep1\n")
    write(os.path.join(jd.src, "other.log"), b"drop\n")
    write(os.path.join(jd.src, "a"), b"a")
    jd.write_config(source_exclude=["*.log", f"!{jd.src}/keep.log"])
    jd.start()
    jd.backup("full")
    write(os.path.join(jd.src, "keep.log"), b"second line\n", "ab")
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal" and s["stats"]["modified"] == 1, s
    jd.restore_equals(s["id"], without(snapshot(jd.src), "other.log"))
    d = jd.backup("differential")
    jd.restore_equals(d["id"], without(snapshot(jd.src), "other.log"))


def test_the_backstop_scan_honours_an_exclude_anchored_at_the_source_path(jd):
    os.makedirs(os.path.join(jd.src, "cache"))
    os.makedirs(os.path.join(jd.src, "sub"))
    write(os.path.join(jd.src, "cache", "c"), b"c")
    write(os.path.join(jd.src, "sub", "s"), b"s")
    jd.write_config(source_exclude=[f"{jd.src}/cache/"], backstop_interval="1h")
    jd.start()
    jd.backup("full")
    write(os.path.join(jd.src, "cache", "c2"), b"excluded, and so no change")
    assert jd.hook("backstop") == {"app": []}
    assert jd.status()["journal_state"] == "complete"
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal", s


def test_a_symlinked_source_path_retargeted_by_the_application(jd):
    releases = os.path.join(jd.base, "releases")
    for r in ("r1", "r2"):
        os.makedirs(os.path.join(releases, r))
    write(os.path.join(releases, "r1", "app.txt"), b"v1\n")
    write(os.path.join(releases, "r1", "cfg"), b"cfg1\n")
    jd.src = os.path.join(jd.base, "current")
    os.symlink("releases/r1", jd.src)
    jd.write_config()
    jd.start()
    jd.backup("full")
    write(os.path.join(releases, "r2", "app.txt"), b"v2\n")
    write(os.path.join(releases, "r2", "only-in-r2"), b"new\n")
    os.symlink("releases/r2", jd.src + ".tmp")
    os.replace(jd.src + ".tmp", jd.src)          # a deploy: ln -s, then mv -T
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "walk", s    # the new target's past is unknown: walked
    jd.restore_equals(s["id"], snapshot(jd.src))
    write(os.path.join(jd.src, "app.txt"), b"more\n", "ab")
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal", s  # the new target is watched
    jd.restore_equals(s["id"], snapshot(jd.src))
    d = jd.backup("differential")
    jd.restore_equals(d["id"], snapshot(jd.src))


def test_directories_that_vanish_before_their_watch_leave_the_journal_complete(jd):
    write(os.path.join(jd.src, "f"), b"hi\n")
    jd.start()
    jd.backup("full")
    assert jd.hook("pause") == "ok"
    try:
        for i in range(300):
            os.mkdir(os.path.join(jd.src, f"t{i}"))
            os.rmdir(os.path.join(jd.src, f"t{i}"))
    finally:
        jd.hook("resume")
    st = wait_until(lambda: (x := jd.status())["pending_paths"] > 0 and x, 10, "the burst journaled")
    assert st["journal_state"] == "complete", st["journal_reasons"]
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal", s
    st = jd.status()
    assert st["journal_state"] == "complete" and st["pending_paths"] == 0, st


def test_a_new_directory_that_became_a_symlink_before_its_event_was_read_is_not_followed(jd):
    """A directory made in the source and replaced by a symlink to a tree elsewhere before the
    watcher read its creation: watching the new directory went through the link and walked the
    tree it names, adding a watch for each of its directories (which then count as the
    source's: here they ran into max_watches, and the journal gave up its trust)."""
    outside = os.path.join(jd.base, "outside")
    for i in range(20):
        os.makedirs(os.path.join(outside, f"d{i}"))
    write(os.path.join(jd.src, "f"), b"f\n")
    jd.write_config(max_watches=5)
    jd.start()
    jd.backup("full")
    assert jd.hook("pause") == "ok"
    try:
        os.mkdir(os.path.join(jd.src, "flip"))
        os.rmdir(os.path.join(jd.src, "flip"))
        os.symlink(outside, os.path.join(jd.src, "flip"))
    finally:
        jd.hook("resume")
    assert jd.hook("hear") == "ok"  # every event so far handled
    st = jd.status()
    assert st["journal_state"] == "complete", st["journal_reasons"]
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal", s
    jd.restore_equals(s["id"], snapshot(jd.src))


def test_a_file_written_through_a_hard_link_outside_the_source(jd):
    outside = os.path.join(jd.base, "outside")
    os.makedirs(outside)
    os.makedirs(os.path.join(jd.src, "data"))
    write(os.path.join(jd.src, "data", "f"), b"version 1\n")
    os.link(os.path.join(jd.src, "data", "f"), os.path.join(outside, "f"))
    write(os.path.join(jd.src, "other"), b"o")
    jd.start()
    wait_until(lambda: jd.hook("links") == 1, 10, "the link census")
    jd.backup("full")
    jd.backup("incremental")
    write(os.path.join(outside, "f"), b"appended through the outside name\n", "ab")
    s = jd.backup("incremental")
    jd.restore_equals(s["id"], snapshot(jd.src), "first incremental: ")
    write(os.path.join(jd.src, "other"), b"o2")
    s = jd.backup("incremental")
    jd.restore_equals(s["id"], snapshot(jd.src), "second incremental: ")
    d = jd.backup("differential")
    jd.restore_equals(d["id"], snapshot(jd.src), "differential: ")
    # A link made outside while watched raises no event for the watched name: the backstop
    # scan's walk meets the file and hands it to the journal.
    write(os.path.join(jd.src, "g"), b"g1\n")
    s = jd.backup("incremental")
    os.link(os.path.join(jd.src, "g"), os.path.join(outside, "g"))
    jd.hook("backstop")
    assert jd.hook("links") == 2
    write(os.path.join(outside, "g"), b"through the new outside name\n", "ab")
    s = jd.backup("incremental")
    jd.restore_equals(s["id"], snapshot(jd.src), "after the backstop scan: ")


def test_a_file_system_mounted_over_and_unmounted_from_a_subdirectory(jd):
    vol = os.path.join(jd.src, "vol")
    os.makedirs(vol)
    write(os.path.join(vol, "hidden"), b"under\n")
    write(os.path.join(jd.src, "other"), b"x\n")
    jd.start()
    jd.backup("full")
    mount_tmpfs(vol)
    try:
        write(os.path.join(vol, "new-file"), b"on tmpfs\n")
        s = jd.backup("incremental")
        jd.restore_equals(s["id"], snapshot(jd.src), "after the mount: ")
        write(os.path.join(vol, "second"), b"more\n")
        s = jd.backup("incremental")
        assert s["extra"]["changes"] == "journal", s
        jd.restore_equals(s["id"], snapshot(jd.src), "written on the mount: ")
    finally:
        subprocess.run(["umount", vol], check=True)
    s = jd.backup("incremental")
    jd.restore_equals(s["id"], snapshot(jd.src), "after the unmount: ")
    s = jd.backup("incremental")
    assert jd.status()["journal_state"] == "complete"


def test_a_file_system_mounted_over_one_already_mounted_there_is_walked(jd):
    """A second file system mounted on a directory that already is a mount point (a stack: a
    remount script, a container runtime) leaves the set of mount points as it was, yet hides
    the watched one: what is written on the new one raised no event and the incremental, trusting
    the journal, held the old content. Unmounting the top one shows the old again, the same way."""
    vol = os.path.join(jd.src, "vol")
    os.makedirs(vol)
    write(os.path.join(jd.src, "other"), b"x\n")
    jd.start()
    jd.backup("full")
    mounted = 0
    try:
        mount_tmpfs(vol)
        mounted += 1
        write(os.path.join(vol, "lower"), b"on the first tmpfs\n")
        s = jd.backup("incremental")
        jd.restore_equals(s["id"], snapshot(jd.src), "after the first mount: ")
        mount_tmpfs(vol)
        mounted += 1
        write(os.path.join(vol, "upper"), b"on the second tmpfs\n")
        s = jd.backup("incremental")
        jd.restore_equals(s["id"], snapshot(jd.src), "after the second mount: ")
        write(os.path.join(vol, "upper2"), b"more\n")
        s = jd.backup("incremental")
        assert s["extra"]["changes"] == "journal", s  # the top one is watched now
        jd.restore_equals(s["id"], snapshot(jd.src), "written on the second mount: ")
        subprocess.run(["umount", vol], check=True)
        mounted -= 1
        s = jd.backup("incremental")
        jd.restore_equals(s["id"], snapshot(jd.src), "after the top one was unmounted: ")
    finally:
        for _ in range(mounted):
            subprocess.run(["umount", vol], check=True)


def test_a_write_through_a_shared_mapping_is_caught_by_the_backstop_scan(jd):
    """A write through a shared mapping of a file kept open raises no inotify event (the
    documented limit); the backstop scan finds it by its mtime and the next set takes it."""
    import mmap

    os.makedirs(os.path.join(jd.src, "db"))
    data = os.path.join(jd.src, "db", "data.mdb")
    write(data, os.urandom(65536))
    write(os.path.join(jd.src, "other"), b"x\n")
    jd.write_config(backstop_interval="1h")
    jd.start()
    jd.backup("full")
    fd = os.open(data, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 0)
        m[100:116] = b"MMAP-WRITE-16B!!"
        m.flush()                                 # written and synced; the file stays open
        found = jd.hook("backstop")
        assert found == {"app": [[data, "mtime"]]}, found
        assert any("backstop scan found 1 changes" in r for r in jd.status()["journal_reasons"])
        s = jd.backup("incremental")
        assert s["extra"]["changes"] == "journal", s
        jd.restore_equals(s["id"], snapshot(jd.src))
        m.close()
    finally:
        os.close(fd)


def test_directories_staged_and_renamed_into_place_are_journaled_not_walked_whole(jd):
    """A content repository's writer, read late: a directory staged as `tmp-N/` (files, a
    subdirectory) and renamed into a new fan-out directory, an older one moved aside and removed.
    The walk of the new fan-out directory meets the staged one at its final path before its move
    is read; that made every such set watch the whole source anew and walk it. Each incremental
    now goes by the journal and restores the tree exactly as it is."""
    os.makedirs(os.path.join(jd.src, "objects"))
    os.makedirs(os.path.join(jd.src, "static"))
    write(os.path.join(jd.src, "static", "site.css"), b"body {}\n")
    jd.start()
    jd.backup("full")
    walked = []
    for i in range(5):
        tmp = os.path.join(jd.src, f"tmp-{i:04x}")
        os.makedirs(os.path.join(tmp, "sub"))
        write(os.path.join(tmp, "a"), b"a%d\n" % i)
        write(os.path.join(tmp, "sub", "b"), b"b%d\n" % i)
        assert jd.hook("hear") == "ok"  # the staged directory is watched under its temporary name
        assert jd.hook("pause") == "ok"
        try:
            os.mkdir(os.path.join(jd.src, "objects", f"{i:02x}"))
            os.rename(tmp, os.path.join(jd.src, "objects", f"{i:02x}", "final"))
            if i >= 2:
                aside = os.path.join(jd.src, f"old-{i}")
                os.rename(os.path.join(jd.src, "objects", f"{i - 2:02x}", "final"), aside)
                shutil.rmtree(aside)
        finally:
            jd.hook("resume")
        if i >= 1:  # below the directory the previous set saw renamed into place
            write(os.path.join(jd.src, "objects", f"{i - 1:02x}", "final", "sub", f"late-{i}"), b"late\n")
        s = jd.backup("incremental")
        if s["extra"]["changes"] != "journal":
            walked.append(i)
        jd.restore_equals(s["id"], snapshot(jd.src), f"incremental {i}: ")
    assert not walked, f"incrementals {walked} walked the whole source"
    st = jd.status()
    assert st["journal_state"] == "complete", st["journal_reasons"]


def test_directories_renamed_into_place_while_their_moves_wait_log_no_warning(jd):
    """A watched tree renamed into a new directory, read late: the walk of the new directory
    adds a watch at each renamed directory's new path and the kernel answers with the watch it
    already has. watchdog took that for a callback being overwritten and logged a RuntimeWarning
    (`logger=py.warnings`) per directory; the watches are placed, the log says nothing."""
    os.makedirs(os.path.join(jd.src, "objects"))
    jd.start()
    jd.backup("full")
    for i in range(3):
        tmp = os.path.join(jd.src, f"tmp-{i}")
        os.makedirs(os.path.join(tmp, "sub", "deep"))
        write(os.path.join(tmp, "sub", "deep", "f"), b"%d\n" % i)
        assert jd.hook("hear") == "ok"  # watched under its temporary name
        assert jd.hook("pause") == "ok"
        try:
            os.mkdir(os.path.join(jd.src, "objects", f"{i:02x}"))
            os.rename(tmp, os.path.join(jd.src, "objects", f"{i:02x}", "final"))
        finally:
            jd.hook("resume")
    assert jd.hook("hear") == "ok"  # every move read and handled
    s = jd.backup("incremental")
    assert s["extra"]["changes"] == "journal", s["extra"]
    jd.restore_equals(s["id"], snapshot(jd.src))
    log = jd.daemon.log()
    assert "py.warnings" not in log and "RuntimeWarning" not in log, log
    assert jd.status()["journal_state"] == "complete", jd.status()["journal_reasons"]
