"""Claim files: how a client on the daemon's host proves that a place it asks the daemon to
write is its own (local restores, delta restores run by the daemon, WAL segments the
prefetcher spools), so that data need not cross gRPC.

The client makes a file named CLAIM_PREFIX + nonce (a fresh random hex nonce) holding exactly
the nonce (`make_claim`), and names the nonce and the place in its request. The daemon checks
(`check_claim` for an empty target directory, `check_delta_claim` for a directory with
content, `open_claimed_file` for one file). What always holds:
- the claim is a regular file with one link, opened without following links, named for the
  nonce and holding exactly it, and it and its directory belong to root or the daemon's user:
  so the daemon never writes anywhere on behalf of a less privileged user (nobody else can
  make such a file), and a path changed meanwhile cannot turn a write elsewhere (the file
  checks run on the open descriptor);
- a refusal is FailedPreconditionError "local write to '...' refused: ...", raised before
  anything is written; the client then does the work itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator

from cairn.errors import FailedPreconditionError

CLAIM_PREFIX = ".cairn-claim-"
_NONCE = re.compile(r"^[0-9a-f]{32,128}$")


def make_claim(path: str, nonce: str) -> None:
    """Client side: create the claim file `path` (it must not exist) holding `nonce`. The
    directory's times are put back: a claim is no change of the user's (`drop_claim` alike).
    A directory that cannot take it (full, read-only) raises OSError naming the directory, not
    the claim, and no part of a claim is left there."""
    directory = os.path.dirname(path)
    with _times_kept(directory):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, directory) from exc
        try:
            try:
                if os.write(fd, nonce.encode()) != len(nonce):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise OSError(exc.errno, exc.strerror, directory) from exc


def drop_claim(path: str) -> None:
    """Remove the claim file `path` (OSError as os.unlink raises it), the directory's times put
    back as they were: a delta of chosen paths leaves the target's own metadata alone, and one
    of an intact tree has no metadata to fix."""
    with _times_kept(os.path.dirname(path)):
        os.unlink(path)


@contextlib.contextmanager
def _times_kept(directory: str) -> Iterator[None]:
    try:
        st: os.stat_result | None = os.lstat(directory)
    except OSError:
        st = None
    try:
        yield
    finally:
        if st is not None and stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _refuser(target_path: str) -> Callable[[str], FailedPreconditionError]:
    def refuse(why: str) -> FailedPreconditionError:
        return FailedPreconditionError(f"local write to '{target_path}' refused: {why}")
    return refuse


def _claimed_directory(target_path: str, nonce: str) -> os.stat_result:
    """What every directory claim needs first: a well-formed nonce and an absolute path that is
    a directory itself (lstat: not a link to one). Its lstat; FailedPreconditionError otherwise."""
    refuse = _refuser(target_path)
    if not _NONCE.match(nonce or ""):
        raise refuse("malformed claim")
    if not os.path.isabs(target_path):
        raise refuse("not an absolute path")
    try:
        st = os.lstat(target_path)
    except OSError as exc:
        raise refuse(exc.strerror or "not reachable from the daemon") from None
    if not stat.S_ISDIR(st.st_mode):
        raise refuse("not a directory")
    return st


def check_claim(target_path: str, nonce: str, same_powers: bool = False) -> str:
    """The claim of a local restore: `target_path` is a directory that holds only the claim
    file (module docstring); returns the claim's path, FailedPreconditionError otherwise.
    With `same_powers` a client that is root is refused unless the daemon is root too, since the
    daemon could not then restore what such a client would (file owners)."""
    refuse = _refuser(target_path)
    st = _claimed_directory(target_path, nonce)
    try:
        names = os.listdir(target_path)
    except OSError as exc:
        raise refuse(exc.strerror or "not reachable from the daemon") from None
    claim = CLAIM_PREFIX + nonce
    if names != [claim]:
        raise refuse("the directory must hold only the client's claim file")
    path = os.path.join(target_path, claim)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise refuse(exc.strerror or "claim unreadable") from None
    try:
        cst = os.fstat(fd)
        content = os.read(fd, 256)
    finally:
        os.close(fd)
    if not stat.S_ISREG(cst.st_mode) or content != nonce.encode():
        raise refuse("claim does not match")
    if cst.st_uid not in (0, os.geteuid()) or st.st_uid not in (0, os.geteuid()):
        raise refuse("the client is neither root nor the daemon's user")
    if same_powers and cst.st_uid == 0 and os.geteuid() != 0:
        raise refuse("the client is root and the daemon is not")
    return path


def check_delta_claim(target_path: str, nonce: str, any_owner: bool = False) -> str:
    """The claim file of a delta restore by the daemon: `target_path` is an absolute path of an
    existing directory (not a link) of root or the daemon's user, holding the regular file
    CLAIM_PREFIX + nonce (one link, of root or the daemon's user) with exactly the nonce; a
    client that is root is refused unless the daemon is root too. With `any_owner` the
    directory may belong to anyone when client and daemon are both root (a data directory
    belongs to the database's user): the daemon then does only what its root client could.
    Returns the claim's path; FailedPreconditionError otherwise."""
    refuse = _refuser(target_path)
    st = _claimed_directory(target_path, nonce)
    path = os.path.join(target_path, CLAIM_PREFIX + nonce)
    fd = open_claimed_file(path, nonce)
    try:
        cst = os.fstat(fd)
    finally:
        os.close(fd)
    both_root = cst.st_uid == 0 and os.geteuid() == 0
    if st.st_uid not in (0, os.geteuid()) and not (any_owner and both_root):
        raise refuse("the client is neither root nor the daemon's user")
    if cst.st_uid == 0 and os.geteuid() != 0:
        raise refuse("the client is root and the daemon is not")
    return path


def open_claimed_file(path: str, nonce: str) -> int:
    """A read-write descriptor on the client's claim file for a local write of one file (a WAL
    segment the prefetcher spools): `path` is absolute and its name ends in CLAIM_PREFIX + nonce,
    and the file opened there (never through a link) is a regular file with one link, of root or
    the daemon's user, holding exactly the nonce. Everything is checked on the descriptor, so a
    path changed meanwhile cannot turn the write elsewhere; FailedPreconditionError otherwise."""
    refuse = _refuser(path)
    if not _NONCE.match(nonce or ""):
        raise refuse("malformed claim")
    if not os.path.isabs(path) or not os.path.basename(path).endswith(CLAIM_PREFIX + nonce):
        raise refuse("not an absolute path named for the claim")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise refuse(exc.strerror or "not reachable from the daemon") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise refuse("not a regular file of one link")
        if st.st_uid not in (0, os.geteuid()):
            raise refuse("the client is neither root nor the daemon's user")
        if st.st_size != len(nonce) or os.pread(fd, len(nonce) + 1, 0) != nonce.encode():
            raise refuse("claim does not match")
    except BaseException:
        os.close(fd)
        raise
    return fd
