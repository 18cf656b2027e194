"""Beneath.parent as a with-block: the descriptor it gives is the parent directory's, and it is
closed when the block ends, however it ends (a restore opens one per file: a leak would run a
large restore out of descriptors)."""

from __future__ import annotations

import os

import pytest
from cairn.fsio.beneath import Beneath


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_parent_gives_the_parent_directory_and_closes_it_however_the_block_ends(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    b = Beneath(os.fsencode(tmp_path))
    try:
        with b.parent(b"a/b/new") as (fd, name):
            assert name == b"new"
            assert os.fstat(fd).st_ino == os.stat(tmp_path / "a" / "b").st_ino
        with b.parent(b"top") as (fd, name):
            assert name == b"top" and os.fstat(fd).st_ino == os.stat(tmp_path).st_ino
        before = _open_fds()
        for _ in range(500):
            with b.parent(b"a/b/f"):
                pass
        for _ in range(500):
            with pytest.raises(KeyError), b.parent(b"a/b/f"):
                raise KeyError("inside the block")
        with pytest.raises(FileNotFoundError):
            with b.parent(b"a/missing/f"):
                pass
        assert _open_fds() == before
    finally:
        b.close()
