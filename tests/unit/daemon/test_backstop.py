"""The backstop compare: a set's tree against the real tree by metadata, and which differences
the journal's pending changes explain."""

from __future__ import annotations

import os

import pytest
from cairn.daemon.changes.backstop import Difference, compare_tree, rescan_dirs, unexplained
from cairn.store.model import BackupRequest, ChangeHint
from cairn.store.repository import Repository


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "f").write_bytes(b"one")
    (src / "a" / "b" / "g").write_bytes(b"two")
    (src / "x").symlink_to("f")
    (src / "ignored").mkdir()
    (src / "ignored" / "i").write_bytes(b"i")
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    s = repo.backup(BackupRequest(source="app", paths=(str(src),), level="full", excludes=("ignored/",)))
    return repo, s, str(src)


def diffs(repo, s, src) -> set[tuple[str, str]]:
    return {(os.path.relpath(d.path, src), d.what) for d in compare_tree(repo, s, [src], ("ignored/",))}


def test_unchanged_tree_has_no_difference(tree):
    repo, s, src = tree
    with open(os.path.join(src, "a", "f"), "rb") as f:  # reading is no change
        f.read()
    (open(os.path.join(src, "ignored", "new"), "wb")).close()  # excluded
    assert diffs(repo, s, src) == set()


def test_every_kind_of_change_is_found(tree):
    repo, s, src = tree
    with open(os.path.join(src, "a", "b", "g"), "ab") as f:
        f.write(b"more")
    os.chmod(os.path.join(src, "a", "f"), 0o600)
    os.unlink(os.path.join(src, "x"))
    os.symlink("elsewhere", os.path.join(src, "x"))
    os.mkdir(os.path.join(src, "new"))
    found = diffs(repo, s, src)
    assert ("a/b/g", "size") in found
    assert ("a/f", "ctime") in found
    assert any(p == "x" for p, _ in found)
    assert (".", "added") not in found and ("new", "added") in found


def test_deleted_entries_are_found(tree):
    repo, s, src = tree
    os.unlink(os.path.join(src, "a", "b", "g"))
    assert ("a/b/g", "deleted") in diffs(repo, s, src)


def test_pending_journal_entries_explain_differences():
    d = [Difference("/s/a/f", "size"), Difference("/s/n/x", "added"), Difference("/s/b/g", "mtime")]
    hint = ChangeHint(paths=frozenset({"/s/a/f"}), rescan=frozenset({"/s/n"}))
    assert unexplained(d, hint) == [Difference("/s/b/g", "mtime")]


def test_rescan_dirs_are_parents_folded():
    missed = [Difference("/s/b/g", "mtime"), Difference("/s/b/c/h", "size"), Difference("/s", "mtime")]
    assert rescan_dirs(missed[:2], ["/s"]) == ["/s/b"]
    assert rescan_dirs(missed, ["/s"]) == ["/s"]


def test_link_count_ctime_of_a_multiply_linked_file_is_not_a_difference(tree):
    repo, s, src = tree
    f = os.path.join(src, "a", "f")
    os.link(f, os.path.join(src, "a", "b", "h"))  # f's ctime moves; only the new name is reported
    found = diffs(repo, s, src)
    assert found == {("a/b/h", "added"), ("a/b", "mtime")}
    os.chmod(f, 0o600)  # a real change of the other name is still found
    assert ("a/f", "mode") in diffs(repo, s, src)
