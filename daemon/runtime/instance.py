"""One daemon per state directory and per repository, refused at start with one clear line.

What always holds while a daemon runs:
- It holds an exclusive flock on `<state_dir>/cairnd.lock` (mode 0600, holding its pid, for
  the message a second daemon prints; on a file system with no room for the pid the lock is
  held without it, so a full state directory never stops a start). The state directory is
  created 0700.
- It holds a flock on its local repository's directory: exclusive for a writing daemon,
  shared for a read-only one, so two writers, or a writer and a reader (whose index a
  writer's prune would make stale), never share a repository; read-only daemons may.
- flock locks belong to the open file description: they go with the process, also on
  kill -9, and the descriptors are not inherited by hooks the daemon runs (O_CLOEXEC), so
  a hook that outlives the daemon cannot keep them. Nothing is written to the repository.

The repository lock is for the local backend only: a repository behind another backend
needs that backend's own way to exclude a second daemon.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from cairn.errors import FailedPreconditionError, InvalidArgumentError, LockedError

LOCK_FILE = "cairnd.lock"
STOP_IT = "stop it first: two daemons on one repository or state directory are not safe"


class InstanceLock:
    """An flock held on an open descriptor until `release` (or the process ends)."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def make_state_dir(path: str) -> None:
    """Create the state directory private (0700) if it is missing; an existing one is kept as is."""
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise InvalidArgumentError(f"state directory '{path}' is not a directory") from None
        return
    except OSError as exc:
        raise FailedPreconditionError(f"unable to create state directory '{path}': {exc.strerror or exc}") from exc
    os.chmod(path, 0o700)  # makedirs' mode passes through the umask


def lock_state_dir(path: str) -> InstanceLock:
    """Take the state directory's lock or raise LockedError naming the daemon that holds it."""
    make_state_dir(path)
    lock_path = os.path.join(path, LOCK_FILE)
    fd = _open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if not _try_flock(fd, lock_path, exclusive=True):
            holder = _read_pid(fd)
            who = f" (pid {holder})" if holder else ""
            raise LockedError(f"state directory '{path}' is in use by another cairnd{who}; {STOP_IT}")
        os.fchmod(fd, 0o600)
        _write_pid(fd, lock_path)
    except BaseException:
        os.close(fd)
        raise
    return InstanceLock(fd, lock_path)


def lock_local_repository(path: str, *, shared: bool) -> InstanceLock:
    """Lock a local repository's directory (shared for a read-only daemon) or raise LockedError."""
    fd = _open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not _try_flock(fd, path, exclusive=not shared):
            raise LockedError(f"repository '{path}' is in use by another cairnd; {STOP_IT}")
    except BaseException:
        os.close(fd)
        raise
    return InstanceLock(fd, path)


def _open(path: str, flags: int, mode: int = 0o600) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise FailedPreconditionError(f"unable to open '{path}' to lock it: {exc.strerror or exc}") from exc


def _try_flock(fd: int, path: str, *, exclusive: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise FailedPreconditionError(f"unable to lock '{path}': {exc.strerror or exc}") from exc
    return True


def _write_pid(fd: int, path: str) -> None:
    """Put this process's pid in the held lock file, over the old one and then cut to its length,
    so a restart on a full file system rewrites the block it has. With no room at all (a fresh
    state directory on a full disk) the lock is held without it: the pid only names the holder
    in a second daemon's message."""
    data = f"{os.getpid()}\n".encode()
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no half pid for a second daemon to read
            return
        raise FailedPreconditionError(f"unable to write '{path}': {exc.strerror or exc}") from exc


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
