"""A small file system mounted for a test (tests only): `mount_tmpfs(path)` mounts a 4 MiB tmpfs
(or `size`, and at most `inodes` files) at `path`, or skips the test when that is not possible
(not root, no mount permission); `fill(path)` takes every free byte of the file system that
will hold the file `path`, `fill_inodes(dir)` every free inode; `bind_read_only(path)` makes a
directory read-only where it is."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest


def mount_tmpfs(path: str, size: str = "4m", inodes: int | None = None) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"unable to mount a tmpfs: {r.stderr.decode().strip()}")


def fill(path: str) -> str:
    """Grow the file `path` until the file system is full (ENOSPC), the last partial pages too;
    return `path` (unlink it to free the room again)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 512):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return path


def fill_inodes(directory: str) -> list[str]:
    """Create empty files in `directory` until its file system has no inode left (ENOSPC on a
    mkdir or a create, however much room there is); return them (unlink one to free one)."""
    made: list[str] = []
    while True:
        path = os.path.join(directory, f"inode-{len(made)}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return made
        made.append(path)


def bind_read_only(path: str) -> None:
    """Make the directory `path` a read-only bind mount of itself (EROFS for every write under
    it; `writable(path)` makes it writable again, `unmount(path)` ends it), or skip the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    r = subprocess.run(["mount", "--bind", path, path], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"unable to bind-mount a directory: {r.stderr.decode().strip()}")
    subprocess.run(["mount", "-o", "remount,ro,bind", path], check=True, capture_output=True)


def writable(path: str) -> None:
    subprocess.run(["mount", "-o", "remount,rw,bind", path], check=True, capture_output=True)


def unmount(path: str) -> None:
    """Unmount `path` (lazily when it is still busy)."""
    if subprocess.run(["umount", path], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", path], capture_output=True)
