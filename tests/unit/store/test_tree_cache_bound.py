"""The decoded trees a repository handle keeps are bounded by their plaintext bytes, not only
by their count: a long-running daemon reads the trees of every new set (its base's, to find
what changed), and 4096 trees of up to 256 KiB each made its resident size climb set after
set. Here the byte bound is made small so that a few directories exceed it; every listing
still answers from the repository."""

from __future__ import annotations

import os

from cairn.store import repository
from storekit import backup

DIRS, FILES = 12, 60


def test_decoded_trees_kept_are_bounded_by_their_bytes(repo, src, monkeypatch):
    for d in range(DIRS):
        os.makedirs(os.path.join(src, f"d{d:02d}"))
        for f in range(FILES):
            with open(os.path.join(src, f"d{d:02d}", f"file-with-a-longish-name-{f:03d}"), "w") as out:
                out.write(f"{d}/{f}\n")
    s = backup(repo, src)
    repo.close()  # nothing of the backup itself stays cached
    monkeypatch.setattr(repository, "TREE_CACHE_BYTES", 32 * 1024)
    seen_bytes = 0
    for _ in range(2):
        for d in range(DIRS):
            names = sorted(e.path for e in repo.iter_tree(s, f"d{d:02d}"))
            assert names == [f"d{d:02d}/file-with-a-longish-name-{f:03d}" for f in range(FILES)]
            count, held = repo.cached_trees()
            assert held <= 32 * 1024 or count == 1, (count, held)
            seen_bytes = max(seen_bytes, held)
    count, held = repo.cached_trees()
    assert 1 <= count < DIRS + 1 and seen_bytes > 0, (count, held)
