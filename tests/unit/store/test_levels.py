"""Levels: full, incremental, differential; bases, change statistics, change hints."""

from __future__ import annotations

import itertools
import os

import pytest
from cairn.store.model import BackupRequest, ChangeHint
from storekit import backup, differences, snapshot, write_random

_clock = itertools.count(1_700_000_000_000_000_000, 3_000_000_001)


def touch_new_mtime(path) -> None:
    """Give `path` an mtime no earlier backup saw (edits within one clock tick stay visible)."""
    t = next(_clock)
    os.utime(path, ns=(t, t), follow_symlinks=False)


def edit(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    touch_new_mtime(path)


def populate(src, rng) -> None:
    for d in ("docs", "code/sub", "media"):
        (src / d).mkdir(parents=True)
    write_random(src / "docs" / "a.txt", 5000, rng)
    write_random(src / "docs" / "b.txt", 7000, rng)
    write_random(src / "code" / "x.py", 3000, rng)
    write_random(src / "code" / "sub" / "y.py", 4000, rng)
    write_random(src / "code" / "sub" / "keep.py", 4000, rng)
    write_random(src / "media" / "z.bin", 600_000, rng)
    os.symlink("docs/a.txt", src / "link")
    for d, _, files in os.walk(src):
        for f in files:
            touch_new_mtime(os.path.join(d, f))


def assert_restores_to(repo, s, snap, target) -> None:
    stats = repo.restore(s, str(target))
    assert stats.errors == ()
    diff = differences(snap, snapshot(target))
    assert not diff, "\n".join(diff)


def test_levels_restore_each_state_and_record_changes(repo, src, tmp_path, rng):
    populate(src, rng)
    full = backup(repo, src, "full")
    snap_full = snapshot(src)
    assert (full.level, full.requested_level, full.base, full.note) == ("full", "full", None, "")
    assert full.stats.added == 11 and "docs/a.txt" in full.stats.added_paths  # 6 files, 4 dirs, 1 link
    assert (full.stats.files, full.stats.dirs) == (6, 5)  # dirs count the root

    # change set 1: edit, add, delete, rename a directory, chmod, retarget a symlink
    edit(src / "docs" / "a.txt", rng.randbytes(5000))
    write_random(src / "docs" / "new.txt", 100, rng)
    touch_new_mtime(src / "docs" / "new.txt")
    os.unlink(src / "code" / "x.py")
    os.rename(src / "media", src / "pictures")
    os.chmod(src / "code" / "sub" / "y.py", 0o600)
    os.unlink(src / "link")
    os.symlink("docs/b.txt", src / "link")
    inc1 = backup(repo, src, "incremental")
    snap_inc1 = snapshot(src)
    assert (inc1.level, inc1.requested_level, inc1.base) == ("incremental", "incremental", full.id)
    assert set(inc1.stats.added_paths) == {"docs/new.txt", "pictures/", "pictures/z.bin"}
    assert set(inc1.stats.modified_paths) == {"docs/a.txt", "code/sub/y.py", "link"}
    assert set(inc1.stats.deleted_paths) == {"code/x.py", "media/", "media/z.bin"}
    assert (inc1.stats.added, inc1.stats.modified, inc1.stats.deleted) == (3, 3, 3)
    # only what changed is read (the renamed directory is new to the walk)
    assert inc1.stats.bytes_read == 5000 + 100 + 4000 + 600_000
    assert inc1.stats.files == 6

    # change set 2, then a differential: compared with the full, not the incremental
    edit(src / "code" / "sub" / "y.py", rng.randbytes(4100))
    write_random(src / "code" / "sub" / "new2", 10, rng)
    diff1 = backup(repo, src, "differential")
    snap_diff1 = snapshot(src)
    assert (diff1.level, diff1.requested_level, diff1.base) == ("differential", "differential", full.id)
    assert set(diff1.stats.added_paths) == {"docs/new.txt", "pictures/", "pictures/z.bin", "code/sub/new2"}
    assert set(diff1.stats.modified_paths) == {"docs/a.txt", "code/sub/y.py", "link"}
    assert set(diff1.stats.deleted_paths) == {"code/x.py", "media/", "media/z.bin"}

    # change set 3: an incremental's base is the latest set of any level
    os.unlink(src / "docs" / "new.txt")
    inc2 = backup(repo, src, "incremental")
    snap_inc2 = snapshot(src)
    assert inc2.base == diff1.id
    assert inc2.stats.deleted_paths == ("docs/new.txt",)
    assert inc2.stats.added == inc2.stats.modified == 0

    # a new full becomes the base of the next differential
    full2 = backup(repo, src, "full")
    diff2 = backup(repo, src, "differential")
    assert diff2.base == full2.id and diff2.tree == full2.tree
    assert full2.stats.bytes_read == sum(os.path.getsize(os.path.join(d, f))
                                         for d, _, fs in os.walk(src) for f in fs
                                         if not os.path.islink(os.path.join(d, f)))
    assert [s.id for s in repo.list_sets("src")] == [full.id, inc1.id, diff1.id, inc2.id, full2.id, diff2.id]

    for i, (s, snap) in enumerate([(full, snap_full), (inc1, snap_inc1), (diff1, snap_diff1), (inc2, snap_inc2),
                                   (diff2, snap_inc2)]):
        assert_restores_to(repo, s, snap, tmp_path / f"out{i}")

    d = repo.diff(full, inc1)
    assert set(d.added) == {"docs/new.txt", "pictures/", "pictures/z.bin"}
    assert set(d.deleted) == {"code/x.py", "media/", "media/z.bin"}
    assert {"docs/a.txt", "code/sub/y.py", "link"} <= set(d.modified)


def test_unchanged_tree_gives_same_tree_and_reads_nothing(repo, src, rng):
    populate(src, rng)
    full = backup(repo, src, "full")
    for level in ("incremental", "differential"):
        s = backup(repo, src, level)
        assert s.tree == full.tree
        assert s.stats.bytes_read == 0
        assert (s.stats.added, s.stats.modified, s.stats.deleted) == (0, 0, 0)
        assert s.stats.chunks_added == 0
        assert s.stats.files == full.stats.files and s.stats.bytes_total == full.stats.bytes_total
    again = backup(repo, src, "full")
    assert again.tree == full.tree and again.stats.bytes_read == full.stats.bytes_total
    assert again.stats.chunks_added == 0


@pytest.mark.parametrize("level", ["incremental", "differential"])
def test_no_base_is_taken_as_full_and_says_so(repo, src, tmp_path, rng, level):
    populate(src, rng)
    other = tmp_path / "other"
    other.mkdir()
    backup(repo, other, "full", source="other")
    s = backup(repo, src, level)
    assert (s.level, s.requested_level, s.base) == ("full", level, None)
    assert "taken as full" in s.note and "'src'" in s.note
    assert s.stats.bytes_read == s.stats.bytes_total > 0


def test_base_is_chosen_within_the_same_source(repo, src, tmp_path, rng):
    populate(src, rng)
    other = tmp_path / "other"
    other.mkdir()
    mine = backup(repo, src, "full")
    backup(repo, other, "full", source="other")
    assert backup(repo, src, "incremental").base == mine.id


def _changes(src, rng) -> set[str]:
    edit(src / "code" / "sub" / "y.py", rng.randbytes(4000))
    (src / "docs" / "fresh").mkdir()
    write_random(src / "docs" / "fresh" / "n.txt", 50, rng)
    os.unlink(src / "code" / "x.py")
    os.chmod(src / "docs" / "b.txt", 0o640)
    return {str(src / "code" / "sub" / "y.py"), str(src / "docs" / "fresh" / "n.txt"), str(src / "code" / "x.py"),
            str(src / "docs" / "b.txt")}


def test_change_hint_gives_same_tree_as_full_compare(repo, src, tmp_path, rng):
    populate(src, rng)
    full = backup(repo, src, "full")
    hinted_paths = _changes(src, rng)
    hinted = backup(repo, src, "differential", changes=ChangeHint(paths=frozenset(hinted_paths)))
    walked = backup(repo, src, "differential")
    assert hinted.base == walked.base == full.id
    assert hinted.tree == walked.tree
    for f in ("added_paths", "modified_paths", "deleted_paths"):
        assert set(getattr(hinted.stats, f)) == set(getattr(walked.stats, f)), f
    assert set(hinted.stats.modified_paths) == {"code/sub/y.py", "docs/b.txt"}
    assert_restores_to(repo, hinted, snapshot(src), tmp_path / "out")


def test_change_hint_limits_what_is_read(repo, src, rng):
    populate(src, rng)
    backup(repo, src, "full")
    edit(src / "docs" / "a.txt", rng.randbytes(5000))
    edit(src / "media" / "z.bin", rng.randbytes(600_000))
    hinted = backup(repo, src, "incremental", changes=ChangeHint(paths=frozenset({str(src / "docs" / "a.txt")})))
    assert hinted.stats.modified_paths == ("docs/a.txt",)
    assert hinted.stats.bytes_read == 5000
    walked = backup(repo, src, "incremental")
    assert walked.stats.modified_paths == ("media/z.bin",)
    assert walked.tree != hinted.tree


def test_change_hint_with_rescan_dir(repo, src, tmp_path, rng):
    populate(src, rng)
    full = backup(repo, src, "full")
    edit(src / "code" / "sub" / "keep.py", rng.randbytes(10))
    write_random(src / "code" / "sub" / "more.py", 20, rng)
    os.unlink(src / "code" / "x.py")
    edit(src / "docs" / "a.txt", rng.randbytes(9))  # outside the rescan: not seen
    hint = ChangeHint(rescan=frozenset({str(src / "code")}))
    hinted = backup(repo, src, "differential", changes=hint)
    assert set(hinted.stats.modified_paths) == {"code/sub/keep.py"}
    assert set(hinted.stats.added_paths) == {"code/sub/more.py"}
    assert set(hinted.stats.deleted_paths) == {"code/x.py"}
    edit(src / "docs" / "a.txt", (src / "docs" / "a.txt").read_bytes())
    hint2 = ChangeHint(paths=frozenset({str(src / "docs" / "a.txt")}), rescan=frozenset({str(src / "code")}))
    hinted2 = backup(repo, src, "differential", changes=hint2)
    walked = backup(repo, src, "differential")
    assert hinted2.base == walked.base == full.id
    assert hinted2.tree == walked.tree
    assert_restores_to(repo, hinted2, snapshot(src), tmp_path / "out")


def test_empty_hint_carries_base_over_unread(repo, src, rng):
    populate(src, rng)
    full = backup(repo, src, "full")
    s = backup(repo, src, "incremental", changes=ChangeHint())
    assert s.tree == full.tree and s.stats.bytes_read == 0


def test_hint_is_ignored_for_a_full(repo, src, rng):
    populate(src, rng)
    backup(repo, src, "full")
    edit(src / "docs" / "a.txt", rng.randbytes(5000))
    s = repo.backup(BackupRequest(source="src", paths=(str(src),), level="full", changes=ChangeHint()))
    assert s.stats.bytes_read == s.stats.bytes_total


def test_unknown_level_is_refused(repo, src):
    from cairn.store.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="unknown level"):
        backup(repo, src, "weekly")
    assert repo.list_sets() == []


def test_incremental_of_edge_cases_restores_exactly(repo, src, tmp_path, rng):
    from test_roundtrip import build_edge_cases
    build_edge_cases(str(src), rng)
    backup(repo, src, "full")
    os.link(src / "plain.bin", src / "dir" / "new-hardlink")
    os.unlink(src / "pair-2")
    edit(src / "hl-a", rng.randbytes(1000))
    os.chmod(src / "readonly", 0o755)
    write_random(src / "readonly" / "added", 10, rng)
    os.chmod(src / "readonly", 0o555)
    os.unlink(src / "dangling")
    os.symlink("still/dangling", src / "dangling")
    s = backup(repo, src, "incremental")
    assert {"dir/new-hardlink", "readonly/added"} <= set(s.stats.added_paths)
    assert {"hl-a", "dir/hl-b", "dir/nested/hl-c", "dangling"} <= set(s.stats.modified_paths)
    assert s.stats.deleted_paths == ("pair-2",)
    assert_restores_to(repo, s, snapshot(src), tmp_path / "out")


def test_file_written_just_before_its_base_is_read_again(repo, src, rng):
    """Racy stat data: a file modified in the second its base set started is re-read next time,
    because a same-size rewrite within the same timestamp tick would not change its stat data."""
    populate(src, rng)
    write_random(src / "docs" / "fresh.txt", 3000, rng)  # mtime: now, inside the full's start second
    full = backup(repo, src, "full")
    inc = backup(repo, src, "incremental")
    assert inc.stats.bytes_read == 3000
    assert inc.tree == full.tree
    inc2 = backup(repo, src, "incremental")
    assert inc2.stats.bytes_read in (0, 3000)  # re-read only while still within a second of its base


def test_hint_naming_one_name_of_a_hardlinked_file_still_updates_the_others(repo, src, tmp_path, rng):
    """A write through one name changes every name; a hint that names only the written one
    must not leave the others stale: the walk falls back to a full compare and says so."""
    populate(src, rng)
    (src / "media" / "alias").hardlink_to(src / "docs" / "a.txt")
    full = backup(repo, src, "full")
    with open(src / "docs" / "a.txt", "r+b") as f:
        f.write(b"changed through one name")
    touch_new_mtime(src / "docs" / "a.txt")
    hint = ChangeHint(paths=frozenset({str(src / "docs" / "a.txt")}))
    inc = backup(repo, src, "incremental", changes=hint)
    assert inc.base == full.id
    assert any("hard links" in n for n in inc.extra.get("notes", ()))
    assert set(inc.stats.modified_paths) == {"docs/a.txt", "media/alias"}
    assert_restores_to(repo, inc, snapshot(src), tmp_path / "out")


def test_a_base_whose_tree_the_index_lost_is_named_as_such(repo, src, tmp_path, rng):
    """Sets of the source exist but the index no longer names their trees (its file lost): the
    incremental is taken as full and the note says why, not that the source has no set."""
    populate(src, rng)
    backup(repo, src, "full")
    repo.close()
    for f in (tmp_path / "repo" / "index").iterdir():
        f.unlink()
    from cairn.store.repository import Repository

    again = Repository.open_local(str(tmp_path / "repo"))
    try:
        s = backup(again, src, "incremental")
        assert (s.level, s.base) == ("full", None)
        assert "the index does not name their trees" in s.note and "'src'" in s.note
        assert again.check().ok  # the full stored the trees again: the old set is whole once more
    finally:
        again.close()


def test_a_set_counts_its_changes_as_diff_names_them(repo, src, rng):
    """A directory replaced by a file or a link of its name has its whole subtree deleted, a
    file replaced by a link is modified, and a directory whose mode or xattrs changed is modified:
    the set's counts and paths say what `diff` with its base says."""
    for d in ("to-file/sub", "to-link", "chmod", "xattr"):
        (src / d).mkdir(parents=True)
    write_random(src / "to-file" / "sub" / "f", 100, rng)
    write_random(src / "to-link" / "g", 100, rng)
    write_random(src / "file-to-link", 100, rng)
    write_random(src / "file-to-dir", 100, rng)
    full = backup(repo, src, "full")
    for tree in ("to-file", "to-link"):
        for dirpath, _dirs, files in os.walk(src / tree, topdown=False):
            for f in files:
                os.unlink(os.path.join(dirpath, f))
            os.rmdir(dirpath)
    write_random(src / "to-file", 10, rng)
    os.symlink("chmod", src / "to-link")
    os.unlink(src / "file-to-link")
    os.symlink("chmod", src / "file-to-link")
    os.unlink(src / "file-to-dir")
    (src / "file-to-dir").mkdir()
    os.chmod(src / "chmod", 0o700)
    os.setxattr(src / "xattr", "user.tag", b"x")
    inc = backup(repo, src, "incremental")
    d = repo.diff(full, inc)
    assert set(d.deleted) == {"to-file/", "to-file/sub/", "to-file/sub/f", "to-link/", "to-link/g", "file-to-dir"}
    assert set(d.added) == {"to-file", "to-link", "file-to-dir/"}
    assert set(d.modified) == {"file-to-link", "chmod/", "xattr/"}
    assert (set(inc.stats.deleted_paths), set(inc.stats.added_paths), set(inc.stats.modified_paths)) == (
        set(d.deleted), set(d.added), set(d.modified))
    assert (inc.stats.deleted, inc.stats.added, inc.stats.modified) == (6, 3, 3)
