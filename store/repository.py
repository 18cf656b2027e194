"""The repository facade: open/init, backup, browse, diff, restore, check, prune, WAL.

(skeleton: the bodies are being written; the signatures are the contract)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from cairn.fsio.records import Record

from .model import (
    BackupRequest,
    BackupSet,
    CheckReport,
    Progress,
    PrunePolicy,
    PruneReport,
    RestoreStats,
    SetDiff,
    TreeEntry,
)

ProgressFn = Callable[[Progress], None]


class Repository:
    """A Cairn repository on a Backend. Thread-safe for concurrent reads and one writer per source."""

    @classmethod
    def init_local(cls, path: str) -> Repository: ...
    @classmethod
    def open_local(cls, path: str, *, create: bool = False, read_only: bool = False) -> Repository: ...

    def list_sets(self, source: str | None = None) -> list[BackupSet]: ...
    def get_set(self, ref: str, source: str | None = None) -> BackupSet: ...
    def backup(self, req: BackupRequest, progress: ProgressFn | None = None,
               cancel: threading.Event | None = None) -> BackupSet: ...
    def list_tree(self, s: BackupSet, path: str = "", recursive: bool = False) -> list[TreeEntry]: ...
    def diff(self, a: BackupSet, b: BackupSet) -> SetDiff: ...
    def restore_stream(self, s: BackupSet, paths: list[str] | None = None) -> Iterator[Record]: ...
    def restore(self, s: BackupSet, target: str, paths: list[str] | None = None, *, overwrite: bool = False,
                progress: ProgressFn | None = None) -> RestoreStats: ...
    def check(self, *, read_data: bool = False, set_ref: str | None = None,
              progress: ProgressFn | None = None) -> CheckReport: ...
    def prune(self, policy: PrunePolicy, *, dry_run: bool = False, source: str | None = None) -> PruneReport: ...
    def put_wal(self, name: str, data: bytes) -> bool: ...
    def get_wal(self, name: str) -> bytes: ...
    def list_wal(self) -> list[str]: ...
    def close(self) -> None: ...
