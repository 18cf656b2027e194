"""Which stored trees are wholly in the index: `IndexedTrees`, one per open repository.

An incremental carries an unchanged directory over from its base set by the id of its stored
tree, without reading it. That is only right while every blob below that tree (the tree
itself, the trees under it, the chunks of its files) is named by an index file: a set naming
a blob no index file names cannot be restored until `cairn repair index` has run. Trees are
served from caches that do not ask the index (the handle's tree cache, the local object
cache), so a deleted index file is not noticed by reading them.

`missing(tree, load)` answers the question by walking the stored tree once, and remembers
each tree found whole, so the next incremental of an unchanged large source asks the index
nothing. What always holds: a tree is remembered as whole only if it and every blob below it
were named by the index during the current epoch; the epoch ends (`forget`) whenever a
reload of the repository's index no longer names a pack it named before, whatever took it
out (see Repository._notice_lost), and the memory ends with it. That includes a collection
deleting packs: from storage alone it cannot be told from a pack deleted together with its
index file, whose blobs are lost. The cost is one walk of the stored trees at the next
carry (about 0.25 s per 200,000 files), once per reload that dropped a pack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .trees import Entry

MAX_TREES = 200_000  # trees remembered as whole (about 100 bytes each)


class IndexedTrees:
    """The stored trees found wholly in the index during the current epoch (thread-safe)."""

    def __init__(self, contains: Callable[[bytes], bool], max_trees: int = MAX_TREES) -> None:
        self._contains = contains  # whether an index file names a blob (the handle's current index)
        self._whole: dict[bytes, None] = {}  # insertion order: the oldest is forgotten first
        self._lock = threading.Lock()
        self._max = max_trees
        self.epoch = 0

    def forget(self) -> None:
        """The index lost knowledge: nothing found whole before is trusted any more."""
        with self._lock:
            self._whole.clear()
            self.epoch += 1

    def __len__(self) -> int:
        return len(self._whole)

    def missing(self, tree: bytes, load: Callable[[bytes], list[Entry]],
                seen: Callable[[bytes, list[Entry]], None] | None = None) -> bytes | None:
        """The first blob of stored tree `tree` (itself, a tree below it, a chunk of a file in
        it) that no index file names; None when every one is named. `load` reads a tree's
        entries (its errors pass through); `seen` is handed each tree loaded, with its entries
        (a caller that needs them too does not load them again)."""
        whole = self._whole
        if tree in whole:
            return None
        epoch = self.epoch
        contains = self._contains
        found: list[bytes] = []
        visited: set[bytes] = set()
        stack = [tree]
        while stack:
            t = stack.pop()
            if t in whole or t in visited:
                continue
            visited.add(t)
            if not contains(t):
                return t
            entries = load(t)
            for e in entries:
                if e.kind == "dir" and e.subtree:
                    stack.append(e.subtree)
                for c in e.chunks:
                    if not contains(c):
                        return c
            if seen is not None:
                seen(t, entries)
            found.append(t)
        with self._lock:
            if self.epoch == epoch:  # not forgotten meanwhile: what was found holds
                for t in found:
                    whole[t] = None
                while len(whole) > self._max:
                    del whole[next(iter(whole))]
        return None
