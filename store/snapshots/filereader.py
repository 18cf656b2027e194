"""Reading one file into chunks: open, cut (FastCDC), hash, hand new chunks to the writer.

What always holds: a read of a file takes at most the size the file had when that read began
(its stat data at open), so a file appended faster than it can be read is read to an end all
the same; a file whose size or times change while it is read is read again up to `retries`
times and, if it never holds still, stored as read and flagged fuzzy, with the stat data of the
end of that read (its times then lie within the set, so the next set reads it again by the racy
rule) but the size of what was read, so that a restore of it never makes up bytes the read did
not see (zeros after what it read, when the file grew meanwhile); a file that holds still is
recorded with its stat data at open. A file larger than `reread_max` (REREAD_MAX) is not read
again: it is stored as read and flagged fuzzy at once. Memory per reader thread is one reused
segment buffer.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cairn.fsio.names import shown

from ..content.blobs import BlobWriter
from ..content.chunker import Chunker
from ..content.packs import TYPE_DATA
from ..content.repoconfig import ChunkerParams
from ..errors import AbortedError

SEGMENT = 8 * 1024 * 1024
# Re-reading a file costs its size each time, and a large file written while it is read is
# nearly always written all the time (a log, a database's own file): four reads of it bought no
# consistent copy and stored every attempt's new chunks (1.2 GiB for a 300 MB file rewritten in
# place). Such a file is stored as read, flagged fuzzy; the next set reads it again.
REREAD_MAX = 64 * 1024 * 1024
# O_NONBLOCK: a file the walk listed may be a FIFO by the time it is opened (replaced meanwhile),
# and opening a FIFO for reading waits for a writer, for ever; on a regular file it changes nothing.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_tls = threading.local()


@dataclass(slots=True)
class ReadResult:
    """Chunks of a file and the stat data they correspond to."""

    chunks: list[bytes]
    st: os.stat_result
    bytes_read: int
    fuzzy: bool
    xattrs: dict[bytes, bytes] | None = None  # read from the very file, when asked
    size: int = 0  # the length of `chunks`' content: st.st_size unless fuzzy (a file that moved meanwhile)


def _chunker(params: ChunkerParams) -> Chunker:
    c = getattr(_tls, "chunker", None)
    if c is None or c.params != params:
        c = _tls.chunker = Chunker(params)
    return c


def _open(path: bytes, dir_fd: int | None) -> int:
    try:
        return os.open(path, _OPEN_FLAGS | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(path, _OPEN_FLAGS, dir_fd=dir_fd)


def read_xattrs(target: bytes | int) -> dict[bytes, bytes]:
    """The extended attributes of the entry at path `target` (not following a link there), or
    of the file open as descriptor `target`; {} when they cannot be read."""
    by_fd = isinstance(target, int)
    try:
        names = os.listxattr(target) if by_fd else os.listxattr(target, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        try:
            out[os.fsencode(n)] = os.getxattr(target, n) if by_fd else os.getxattr(target, n, follow_symlinks=False)
        except OSError:
            continue
    return out


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class FileReader:
    """Reads files for one backup; shared by the worker threads."""

    def __init__(self, writer: BlobWriter, params: ChunkerParams, cancel: threading.Event | None,
                 retries: int = 3, *, fixed_size: int | None = None,
                 delta_base: Callable[[bytes], tuple[bytes, bytes] | None] | None = None,
                 reread_max: int = REREAD_MAX) -> None:
        self.writer = writer
        self.params = params
        self.cancel = cancel
        self.retries = retries
        self.reread_max = reread_max
        self.fixed_size = fixed_size
        self.delta_base = delta_base

    def read(self, path: bytes, base_chunks: list[bytes] | None = None, *, dir_fd: int | None = None,
             xattrs: bool = False) -> ReadResult:
        """Read `path` (relative to directory `dir_fd` when given; never through a link at its
        end); raises OSError if it cannot be opened (vanished, denied). With `xattrs` the
        result holds the file's extended attributes, read from the same open file.

        With fixed-size chunking and `base_chunks` (the same file's chunks in the base set), a
        new chunk is delta-compressed against the base chunk at the same position."""
        fd = _open(path, dir_fd)
        try:
            total = 0
            for attempt in range(self.retries + 1):
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise IsADirectoryError(f"'{shown(path)}' is no longer a regular file")
                chunks, n = self._read_fd(fd, st.st_size, base_chunks)
                total += n
                after = os.fstat(fd)
                if _stamp(after) == _stamp(st) and n == st.st_size:
                    return ReadResult(chunks, st, total, fuzzy=False, xattrs=read_xattrs(fd) if xattrs else None,
                                      size=n)
                if attempt == self.retries or max(st.st_size, after.st_size) > self.reread_max:
                    break
                os.lseek(fd, 0, os.SEEK_SET)
            return ReadResult(chunks, after, total, fuzzy=True, xattrs=read_xattrs(fd) if xattrs else None, size=n)
        finally:
            os.close(fd)

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise AbortedError("backup cancelled")

    def _store(self, view: memoryview, base_chunks: list[bytes] | None) -> bytes:
        bid = self.writer.blob_id(view)
        if not self.writer.rely([bid]):  # (stored: its pack is noted, the commit checks it is whole)
            self.writer.put_many(TYPE_DATA, [(bid, view)], self._bases(base_chunks, 0))
        return bid

    def _bases(self, base_chunks: list[bytes] | None, first: int) -> Callable[[int], tuple[bytes, bytes] | None] | None:
        """Delta references for pieces numbered from chunk `first` of the file (or None)."""
        if not base_chunks or self.delta_base is None or self.fixed_size is None:
            return None
        source = self.delta_base

        def base(i: int) -> tuple[bytes, bytes] | None:
            k = first + i
            return source(base_chunks[k]) if k < len(base_chunks) else None
        return base

    def _cuts(self, view: memoryview) -> Iterator[tuple[int, int]]:
        if self.fixed_size is None:
            return _chunker(self.params).cut(view)
        n, size = len(view), self.fixed_size
        return ((off, min(size, n - off)) for off in range(0, n, size))

    def _read_fd(self, fd: int, size: int, base_chunks: list[bytes] | None) -> tuple[list[bytes], int]:
        """Chunks of the file's first `size` bytes (its size at open), or of fewer when it ends
        sooner: what was appended since is left for the next read (the stamps tell it changed)."""
        if size <= (self.fixed_size or self.params.min_size):  # one chunk
            first = os.read(fd, size) if size else b""
            return ([self._store(memoryview(first), base_chunks)] if first else []), len(first)
        return self._read_large(fd, b"", base_chunks, limit=size)

    def _read_large(self, fd: int, head: bytes, base_chunks: list[bytes] | None,
                    limit: int | None = None) -> tuple[list[bytes], int]:
        """Chunks of `head` and what follows it in `fd`: up to its end, or until `limit` bytes
        in all (head included) when given."""
        seg = max(SEGMENT, 2 * self.params.max_size, 2 * (self.fixed_size or 0))
        buf = _buffer(seg)  # a read never goes past seg; a segment always holds >= 1 whole chunk
        buf[: len(head)] = head
        filled, total, eof = len(head), len(head), False
        chunks: list[bytes] = []
        while filled or not eof:
            self._check_cancel()
            while not eof and filled < seg:
                room = seg if limit is None else filled + min(seg - filled, limit - total)
                n = os.readv(fd, [memoryview(buf)[filled:room]]) if room > filled else 0
                if n == 0:
                    eof = True
                filled += n
                total += n
            view = memoryview(buf)[:filled]
            consumed = 0
            pieces = []
            for off, length in self._cuts(view):
                if not eof and off + length == filled:
                    break
                piece = view[off:off + length]
                pieces.append((self.writer.blob_id(piece), piece))
                consumed = off + length
            if pieces:
                self.writer.put_many(TYPE_DATA, pieces, self._bases(base_chunks, len(chunks)))
            chunks.extend(bid for bid, _ in pieces)
            del pieces
            rest = filled - consumed
            view = memoryview(buf)
            view[:rest] = view[consumed:filled]  # memmove, no temporary copy
            view.release()
            filled = rest
            if eof and filled == 0:
                break
        return chunks, total


def _buffer(size: int) -> bytearray:
    """This thread's read buffer, reused across files (no fresh zeroed allocation per file)."""
    buf = getattr(_tls, "buf", None)
    if buf is None or len(buf) != size:
        buf = _tls.buf = bytearray(size)
    return buf
