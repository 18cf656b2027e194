"""What trees, sets and the WAL catalog need of an open repository: `RepositoryHandle`.

The repository facade (store/repository.py) implements it; sessions (session.py) and the WAL
catalog (wal.py) are written against this protocol, so they never import the facade above
them. What always holds: everything named here is public on the facade, and nothing in this
layer reaches into the facade's private members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..content.blobs import BlobReader, BlobWriter
    from ..content.index import Index
    from ..content.locks import Locks
    from ..content.repoconfig import RepoConfig
    from ..model import BackupSet
    from ..storage.backend import Backend
    from .indexed import IndexedTrees
    from .trees import Entry


class RepositoryHandle(Protocol):
    """An open repository as seen from trees and sets: its objects (`backend`, small objects
    sealed in format 2), its config, the current index and blob reader, its locks, and which
    stored trees it found wholly indexed."""

    backend: Backend
    config: RepoConfig
    index: Index
    reader: BlobReader
    locks: Locks
    segment_rule: Callable[[str], bool]
    write_only: bool  # a write-only key: it lists only its own sets (from its host cache)
    indexed_trees: IndexedTrees  # stored trees found wholly in the index (what a backup may carry over)

    def check_writable(self) -> None:
        """Raise FailedPreconditionError when the repository is open read-only."""

    def writer(self) -> BlobWriter:
        """A new write session's blob writer, publishing its index files into the current index."""

    def refresh_index(self) -> None:
        """Bring the in-memory index (and gc markers) up to the durable one."""

    def find_unstored(self) -> frozenset[str]:
        """The packs the index names that storage lacks (never deduplicated against from now on)."""

    def confirm_deduped(self, writer: BlobWriter, base: BackupSet | None = None, lock: str | None = None) -> None:
        """Before a commit: raise unless every blob `writer` relies on (and `base`) is still there."""

    def choose_base(self, source: str, level: str, host: str | None = None,
                    machine: str = "") -> tuple[str, BackupSet | None, str]:
        """(level taken, base set, note) for a new set of `source`."""

    def load_tree(self, tree_id: bytes) -> list[Entry]:
        """The entries of tree `tree_id`, verified."""

    def list_sets(self, source: str | None = None) -> list[BackupSet]:
        """The readable sets (of `source`), oldest first."""
