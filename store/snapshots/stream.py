"""Storing a byte stream (a dump tool's stdout) as a file, chunked and deduplicated like files.

`read_stream(writer, params, cancel, fd)` reads a pipe until its end through the same
FileReader path a file takes: FastCDC cut points (so a stream that barely changed since the
last set shares almost all its chunks with it), blake3 ids, new chunks handed to the writer
as they are cut. Memory is one reused segment buffer: the stream is never held or spooled
whole. `stream_tree(name, chunks, size)` is the tree of an attachment holding that one file.

What always holds: every chunk a returned list names was handed to the writer (durable once
the writer finishes); a cancel raises AbortedError between segments.
"""

from __future__ import annotations

import os
import stat
import threading
import time

from ..content.blobs import BlobWriter
from ..content.repoconfig import ChunkerParams
from .filereader import FileReader
from .trees import Entry, encode_tree

HEAD = 64 * 1024


def read_stream(writer: BlobWriter, params: ChunkerParams, cancel: threading.Event | None,
                fd: int) -> tuple[list[bytes], int]:
    """(chunk ids, bytes read) of everything readable from `fd` until end of file."""
    head = os.read(fd, HEAD)
    if not head:
        return [], 0
    return FileReader(writer, params, cancel)._read_large(fd, head, None)


def stream_tree(name: str, chunks: list[bytes], size: int) -> bytes:
    """The encoded tree of a directory holding one regular file `name` made of `chunks`."""
    now = time.time_ns()
    e = Entry(name=os.fsencode(name), kind="file", mode=stat.S_IFREG | 0o600, uid=os.getuid(), gid=os.getgid(),
              mtime_ns=now, ctime_ns=now, size=size, chunks=list(chunks))
    return encode_tree([e])
