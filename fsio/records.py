"""Records of a restore stream.

A stream is a sequence of records: `EntryMeta` opens an entry; a regular file's content
follows as `Data` (bytes appended at the current offset) and `Hole` (length skipped, left as a
hole) records until the next `EntryMeta` or the end; a `Failed` record says the open file
could not be restored (it is removed and reported; the restore goes on); a `Notice` says
something the person restoring should know about an entry that is restored all the same (the
writer records it, nothing is written). Paths are bytes relative to the restore
root, '/'-separated, never absolute and never containing '..' (the writer refuses them).

Lanes (in-process streams only, never sent over the wire): a file whose `EntryMeta` has `lane`
set takes no `Data`; its content comes as `LaneData` records naming it, in order, ended by one
`LaneEnd`, while other entries and their content go on between them. A producer lanes a large
file so that its writes (which the kernel serialises per file) overlap the rest of the tree; it
reads each lane's backlog from a `LaneGauge` the writer keeps. A lane always ends before a
hardlink to its file and before the stream ends.
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
    lane: bool = False


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


@dataclass(frozen=True, slots=True)
class Notice:
    """Something to tell about an entry that is restored all the same (e.g. restored shorter than
    its entry records, with the content its set holds); it comes before that entry's `EntryMeta`,
    changes nothing on disk, and the writer records `message`."""

    message: str


@dataclass(frozen=True, slots=True)
class LaneData:
    """Content of lane file `path`, appended at that file's own offset."""

    path: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class LaneEnd:
    """The end of lane file `path`; with `failed` the file is removed and reported, as `Failed` does."""

    path: bytes
    failed: str = ""


class LaneGauge:
    """Bytes of each lane that a writer holds and has not written yet, by path (the writer adds and
    subtracts under its own lock; a producer only reads)."""

    def __init__(self) -> None:
        self._held: dict[bytes, int] = {}

    def add(self, path: bytes, n: int) -> None:
        left = self._held.get(path, 0) + n
        if left:
            self._held[path] = left
        else:
            self._held.pop(path, None)

    def backlog(self, path: bytes) -> int:
        return self._held.get(path, 0)


Record = EntryMeta | Data | Hole | Failed | Notice | LaneData | LaneEnd
