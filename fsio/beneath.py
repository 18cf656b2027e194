"""Reaching a path below a restore target without ever following a symbolic link.

A restore run as root writes into a tree that other users may be able to change while it
runs. Checking a parent with lstat and then using its absolute path leaves a window in which a
directory can be swapped for a symbolic link to anywhere (a root-owned /etc): the write would
follow it. So every operation of a restore on an entry goes through a descriptor of the
entry's parent directory, opened at the moment of use, by `Beneath.parent(rel)`:

- it resolves `rel`'s parent below the target's own descriptor with openat2(2)
  (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS): the kernel refuses any
  symbolic link and any step outside the target, atomically; where openat2 is not available
  (kernels before 5.6, filters that forbid it) it walks the components with
  openat(O_NOFOLLOW | O_DIRECTORY), which holds the same guarantee one component at a time;
- a relative path of any length: one longer than a system call takes (PATH_MAX, 4096 bytes
  with its NUL) is resolved in pieces, each below the descriptor the one before gave, so a
  tree nested deeper than PATH_MAX is reached as any other;
- the caller then acts on the last component with the *at() calls (dir_fd=...), never
  following a link there either (O_NOFOLLOW, follow_symlinks=False).

What always holds: an entry of a restore is created, changed or removed only inside a
directory that was, at the moment it was reached, a real directory below the target reached
through real directories. A parent that is not (a link, a file, missing) is an
InvalidArgumentError naming the first component that is not a directory, or OSError (ENOENT).
The standard library only (ctypes for the system call).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from cairn.errors import InvalidArgumentError

from .names import shown

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SYS_OPENAT2 = 437  # the same number on x86_64 and on the generic table (arm64, riscv64)
_SYS_LISTXATTRAT = 465  # Linux 6.13; the same number on every table, as openat2's
_AT_SYMLINK_NOFOLLOW = 0x100
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# The same request for every call, which the kernel only reads: made once (a call spent more
# time building it than in the system call).
_HOW = _OpenHow(_DIR_FLAGS & ~os.O_NOFOLLOW, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
_HOW_REF = ctypes.byref(_HOW)
_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_HOW))
_FILE_HOWS: dict[int, tuple[_OpenHow, object]] = {}  # open flags -> the request opening a file (open_file)
_libc: ctypes.CDLL | None = None
_openat2_works = True  # until the kernel says otherwise
_listxattrat_works = True
XATTR_LIST_MAX = 65536  # the kernel's bound on a list of xattr names
PATH_ROOM = 4000  # bytes of a relative path given to one system call (PATH_MAX is 4096 with its NUL)


def _openat2(dir_fd: int, path: bytes, how: object = _HOW_REF) -> int | None:
    """A descriptor of directory `path` below `dir_fd` (see the module docstring), or with `how`
    of what that request opens; None when this kernel has no openat2 (the caller walks the
    components instead)."""
    global _libc, _openat2_works
    if not _openat2_works:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = _libc.syscall(_SYS_OPENAT2, dir_fd, path, how, _HOW_SIZE)  # a plain int and bytes: see listxattr_at
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL):  # absent, or filtered out
        _openat2_works = False
        return None
    raise OSError(err, os.strerror(err), path)


def listxattr_at(dir_fd: int, name: bytes, buf: ctypes.Array) -> list[bytes] | None:
    """The names of the extended attributes of entry `name` of directory `dir_fd` (an O_PATH
    descriptor will do), never through a link, by listxattrat(2) into `buf` (XATTR_LIST_MAX
    bytes, the caller's: one per thread); None when this kernel has no such call (before 6.13,
    or filtered out): the caller then reads them through /proc/self/fd. OSError as listxattr."""
    global _libc, _listxattrat_works
    if not _listxattrat_works:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    # plain ints (each passed as a C int, sign-extended in its register): small and positive
    # here, and a third cheaper than building a ctypes object per argument, once per entry
    n = _libc.syscall(_SYS_LISTXATTRAT, dir_fd, name, _AT_SYMLINK_NOFOLLOW, buf, len(buf))
    if n >= 0:
        return ctypes.string_at(buf, n).split(b"\0")[:-1] if n else []
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
        _listxattrat_works = False
        return None
    raise OSError(err, os.strerror(err), name)


def pieces(rel: bytes) -> list[bytes]:
    """`rel` cut at slashes into pieces of at most PATH_ROOM bytes (a name is at most 255)."""
    out: list[bytes] = []
    while len(rel) > PATH_ROOM:
        cut = rel.rfind(b"/", 0, PATH_ROOM + 1)
        if cut <= 0:  # a name longer than a path may be: the system call says so (ENAMETOOLONG)
            break
        out.append(rel[:cut])
        rel = rel[cut + 1:]
    out.append(rel)
    return out


class Beneath:
    """Descriptors of directories below one target directory (see the module docstring)."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # the target itself may be a link

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def open_dir(self, rel: bytes) -> int:
        """A new O_PATH descriptor of directory `rel` (b"": the target), the caller closes it."""
        if not rel:
            return os.dup(self.fd)
        try:
            fd = self._resolve(rel)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                raise
            fd = None  # the walk below names the component that is not a directory
        if fd is not None:
            return fd
        cur = os.dup(self.fd)
        done = b""
        try:
            for part in rel.split(b"/"):
                done = done + b"/" + part if done else part
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=cur)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise InvalidArgumentError(f"refusing to write through '{shown(done)}': not a directory"
                                                   ) from None
                    raise
                os.close(cur)
                cur = nxt
                if not stat.S_ISDIR(os.fstat(cur).st_mode):
                    raise InvalidArgumentError(f"refusing to write through '{shown(done)}': not a directory")
            out, cur = cur, -1
            return out
        finally:
            if cur >= 0:
                os.close(cur)

    def _resolve(self, rel: bytes) -> int | None:
        """openat2 of directory `rel` below the target, in pieces when it is longer than one
        call takes; None when this kernel has no openat2."""
        if len(rel) <= PATH_ROOM:
            return _openat2(self.fd, rel)
        cur = -1
        try:
            for piece in pieces(rel):
                nxt = _openat2(self.fd if cur < 0 else cur, piece)
                if cur >= 0:
                    os.close(cur)
                cur = -1
                if nxt is None:
                    return None
                cur = nxt
            out, cur = cur, -1
            return out
        finally:
            if cur >= 0:
                os.close(cur)

    def open_file(self, rel: bytes, flags: int) -> int:
        """Open entry `rel` of the target with `flags` (O_NOFOLLOW is added), reached without
        following a link anywhere on the way: one openat2 for a path that fits a call, else
        the parent's descriptor and an openat. Raises OSError (ELOOP: a link), or
        InvalidArgumentError for a parent that is not a directory."""
        flags |= os.O_NOFOLLOW
        if len(rel) <= PATH_ROOM and _openat2_works:
            how = _FILE_HOWS.get(flags)
            if how is None:
                req = _OpenHow(flags & ~os.O_NOFOLLOW, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS
                               | _RESOLVE_NO_MAGICLINKS)
                how = _FILE_HOWS[flags] = (req, ctypes.byref(req))  # made once per flags, as _HOW is
            fd = _openat2(self.fd, rel, how[1])
            if fd is not None:
                return fd
        with self.parent(rel) as (pfd, name):
            return os.open(name, flags, dir_fd=pfd)

    def parent(self, rel: bytes) -> _Parent:
        """(descriptor of `rel`'s parent directory, `rel`'s last component), for a with-block;
        the descriptor is closed when the block ends."""
        return _Parent(self, rel)


class _Parent:
    """The context manager of `Beneath.parent` (a class: a generator-based one cost more than
    the openat2 call it wraps, once per restored file)."""

    __slots__ = ("beneath", "rel", "fd")

    def __init__(self, beneath: Beneath, rel: bytes) -> None:
        self.beneath, self.rel, self.fd = beneath, rel, -1

    def __enter__(self) -> tuple[int, bytes]:
        head, _, name = self.rel.rpartition(b"/")
        self.fd = self.beneath.open_dir(head)
        return self.fd, name

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
