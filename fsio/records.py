"""Records of a restore stream.

A stream is a sequence of records: `EntryMeta` opens an entry; a regular file's content
follows as `Data` (bytes appended at the current offset) and `Hole` (length skipped, left as a
hole) records until the next `EntryMeta` or the end; a `Failed` record says the open file
could not be restored (it is removed and reported; the restore goes on). Paths are bytes relative to the restore
root, '/'-separated, never absolute and never containing '..' (the writer refuses them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev", "socket")


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """One entry to restore. `link_to` (kind 'hardlink') names an earlier path of the stream.
    In a manifest (no content follows), a file's `chunks` are its chunk ids (blake3 of the
    plaintext) in order and `chunk_sizes` their lengths, so a tree on disk can be compared."""

    path: bytes
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    target: bytes = b""
    link_to: bytes = b""
    rdev: int = 0
    sparse: bool = False
    chunks: tuple[bytes, ...] = ()
    chunk_sizes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Data:
    """File content appended at the current offset of the open file."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Hole:
    """A run of zero bytes of the open file, restored as a hole (seek, not write)."""

    length: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The open file could not be restored completely (e.g. a damaged chunk); the writer removes
    the partial file and records `message`, and the stream goes on with the next entry."""

    message: str


Record = EntryMeta | Data | Hole | Failed
