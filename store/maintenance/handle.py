"""What check and garbage collection need of an open repository: `MaintainedRepository`.

The repository facade implements it; check.py and prune.py are written against it and never
import the facade above them. It adds to the snapshot layer's handle what only maintenance
uses: reloading the whole index, the problems found loading it, the key and the key objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from ..snapshots.handle import RepositoryHandle

if TYPE_CHECKING:
    from ..content.crypto import KeyInfo, RepoKey
    from ..content.packs import PackEntry
    from ..model import BackupSet


class MaintainedRepository(RepositoryHandle, Protocol):
    key: RepoKey | None  # format 2: the master key's derived keys; None for a plaintext repository
    index_problems: list[str]  # index files that could not be read at the last load

    def load_index(self) -> None:
        """Reload every index file (what sessions publish meanwhile is kept)."""

    def stored_index_files(self, names: list[str]) -> Iterator[tuple[str, dict[str, list[PackEntry]] | Exception]]:
        """Index files `names` as the store holds them now, decoded and read ahead, in order,
        each with its name or the error that reading it raised."""

    def get_set(self, ref: str, source: str | None = None) -> BackupSet:
        """The set `ref` (id prefix or 'latest') names."""

    def list_keys(self) -> list[tuple[KeyInfo | None, str, str]]:
        """(info, key id, problem) of every key object (format 2)."""

    def local_copy(self, kind: str, name: str) -> bytes | None:
        """The plaintext of set object `name` from the local cache when that copy verifies."""

    def local_tree(self, tree_id: bytes) -> bytes | None:
        """The plaintext of tree `tree_id` from the local cache when that copy verifies."""
