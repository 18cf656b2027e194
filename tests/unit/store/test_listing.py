"""A set's listing is read as it is taken (Repository.iter_tree): the path is checked at once,
and a recursive listing loads each directory's tree only when the walk reaches it, so a
listing of millions of entries is never held whole (the daemon serves it in batches)."""

from __future__ import annotations

import os

import pytest
from cairn.store.errors import NotFoundError
from storekit import backup


def test_a_recursive_listing_reads_each_directory_when_it_reaches_it(repo, src, monkeypatch):
    for d in range(30):
        os.makedirs(src / f"d{d:02}")
        (src / f"d{d:02}" / "f").write_bytes(b"x")
    s = backup(repo, str(src))
    loads = []
    real = repo.tree_entries
    monkeypatch.setattr(repo, "tree_entries", lambda t: (loads.append(t), real(t))[1])
    entries = repo.iter_tree(s, "", recursive=True)
    first = next(entries)
    assert first.path == "d00" and len(loads) <= 2  # the root, and at most the first directory
    rest = list(entries)
    assert len(loads) == 31 and len(rest) == 2 * 30 - 1
    assert [e.path for e in rest[:2]] == ["d00/f", "d01"]
    assert repo.list_tree(s, "", recursive=True)[1:] == rest


def test_a_path_not_in_the_set_is_refused_before_the_first_entry(repo, src):
    (src / "a").write_bytes(b"x")
    s = backup(repo, str(src))
    with pytest.raises(NotFoundError, match="path 'nope' is not in the set"):
        repo.iter_tree(s, "nope")
