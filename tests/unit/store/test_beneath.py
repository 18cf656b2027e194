"""Beneath.parent as a with-block: the descriptor it gives is the parent directory's, and it is
closed when the block ends, however it ends (a restore opens one per file: a leak would run a
large restore out of descriptors)."""

from __future__ import annotations

import errno
import os

import pytest
from cairn.fsio.beneath import Beneath


def _open_fds(root) -> int:
    """Descriptors of this process open on `root` or below it: what a leak of Beneath's would be
    (a count of every descriptor also moved with whatever other threads of the run closed)."""
    top = str(root)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as e:
            n += e.errno == errno.ENAMETOOLONG  # a directory deeper than a path can name: these tests'
            continue  # (else closed meanwhile)
        n += where == top or where.startswith(top + "/")
    return n


def test_parent_gives_the_parent_directory_and_closes_it_however_the_block_ends(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    b = Beneath(os.fsencode(tmp_path))
    try:
        with b.parent(b"a/b/new") as (fd, name):
            assert name == b"new"
            assert os.fstat(fd).st_ino == os.stat(tmp_path / "a" / "b").st_ino
        with b.parent(b"top") as (fd, name):
            assert name == b"top" and os.fstat(fd).st_ino == os.stat(tmp_path).st_ino
        before = _open_fds(tmp_path)
        for _ in range(500):
            with b.parent(b"a/b/f"):
                pass
        for _ in range(500):
            with pytest.raises(KeyError), b.parent(b"a/b/f"):
                raise KeyError("inside the block")
        with pytest.raises(FileNotFoundError):
            with b.parent(b"a/missing/f"):
                pass
        assert _open_fds(tmp_path) == before
    finally:
        b.close()


def _deep_dirs(root, depth: int = 25, width: int = 200) -> bytes:
    """`depth` nested directories of `width`-byte names below `root` (far past PATH_MAX, so made
    through descriptors); returns their relative path."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    parts = []
    try:
        for i in range(depth):
            name = b"%02d" % i + b"d" * (width - 2)
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
            parts.append(name)
        f = os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, b"at the bottom")
        os.close(f)
    finally:
        os.close(fd)
    return b"/".join(parts)


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_a_path_longer_than_path_max_is_reached_and_a_link_on_it_still_refused(tmp_path, monkeypatch,
                                                                               openat2: bool) -> None:
    from cairn.errors import InvalidArgumentError
    from cairn.fsio import beneath

    if not openat2:
        monkeypatch.setattr(beneath, "_openat2_works", False)
    deep = _deep_dirs(tmp_path)
    assert len(deep) > 4096
    b = Beneath(os.fsencode(tmp_path))
    try:
        before = _open_fds(tmp_path)
        with b.parent(deep + b"/leaf") as (fd, name):
            assert name == b"leaf"
            assert os.stat(name, dir_fd=fd, follow_symlinks=False).st_size == len(b"at the bottom")
        fd = b.open_file(deep + b"/leaf", os.O_RDONLY | os.O_CLOEXEC)
        try:
            assert os.read(fd, 100) == b"at the bottom"
        finally:
            os.close(fd)
        assert _open_fds(tmp_path) == before
        # a directory deep down swapped for a link (to a copy of the same chain): refused
        parts = deep.split(b"/")
        at = b"/".join(parts[:22])
        with b.parent(at) as (pfd, name):
            os.rename(name, b"moved", src_dir_fd=pfd, dst_dir_fd=pfd)
            os.symlink(b"moved", name, dir_fd=pfd)
        with pytest.raises((InvalidArgumentError, OSError)), b.parent(deep + b"/leaf"):
            pass
        with pytest.raises((InvalidArgumentError, OSError)):
            os.close(b.open_file(deep + b"/leaf", os.O_RDONLY))
        assert _open_fds(tmp_path) == before
    finally:
        b.close()
