"""A small file system mounted for a test (tests only): `mount_tmpfs(path)` mounts a 4 MiB tmpfs
at `path`, or skips the test when that is not possible (not root, no mount permission)."""

from __future__ import annotations

import os
import subprocess

import pytest


def mount_tmpfs(path: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", path], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"unable to mount a tmpfs: {r.stderr.decode().strip()}")
