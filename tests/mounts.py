"""A small file system mounted for a test (tests only): `mount_tmpfs(path)` mounts a 4 MiB tmpfs
at `path`, or skips the test when that is not possible (not root, no mount permission);
`fill(path)` takes every free byte of the file system that will hold the file `path`."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest


def mount_tmpfs(path: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", path], capture_output=True)
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
