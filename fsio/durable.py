"""Durable writes of small files: what crash-safe state needs everywhere in Cairn.

`write_atomic` writes a temp file beside the target, fsyncs it, renames it into place and
fsyncs the directory, so after a crash the path holds the old content or the new, never a
mix. `fsync_dir` makes a rename, creation or removal in a directory durable. Imports only
the standard library.
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


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` by `data` atomically and durably."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
