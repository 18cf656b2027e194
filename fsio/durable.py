"""Durable writes of small files: what crash-safe state needs everywhere in Cairn.

`write_atomic` writes a temp file beside the target, fsyncs it, renames it into place and
fsyncs the directory, so after a crash the path holds the old content or the new, never a
mix. `write_synced` is its first half for callers that put the file in place themselves (the
local backend renames or hard-links it). `fsync_dir` makes a rename, creation or removal in a
directory durable. Imports only the standard library.
"""

from __future__ import annotations

import errno
import os


def fsync_dir(path: str | bytes) -> None:
    """fsync a directory (filesystems that cannot, EINVAL/ENOTSUP, are tolerated)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_synced(path: str, data: bytes | memoryview, mode: int, *, exclusive: bool = True) -> None:
    """Write all of `data` to `path` and fsync it: the first half of an atomic replace (the
    caller renames or links the file into place, then fsyncs the directory). `exclusive`: the
    file must not exist yet; otherwise an existing one is truncated."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` by `data` atomically and durably."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write_synced(tmp, data, mode, exclusive=False)  # a leftover of a process with our pid is replaced
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
