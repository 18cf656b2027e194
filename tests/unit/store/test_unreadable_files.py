"""A file the backup cannot read is never stored as something it never was: one that vanished
while it was read is left out (noted); one that cannot be read keeps its base version whole
(metadata with its content) or, new, is left out; either way the error is recorded."""

from __future__ import annotations

import os
import stat

from cairn.store.snapshots.filereader import FileReader
from storekit import backup, make_tree, write_random


def test_vanished_and_unreadable_files(repo, src, tmp_path, rng, monkeypatch):
    make_tree(str(src), rng, files=6)
    write_random(src / "kept.bin", 10_000, rng)
    base = backup(repo, src)
    write_random(src / "kept.bin", 20_000, rng)  # changed: read again, and that read fails
    write_random(src / "new-refused.bin", 3000, rng)
    write_random(src / "new-vanishing.bin", 3000, rng)
    write_random(src / "kept-vanishing.bin", 3000, rng)
    real = FileReader.read

    def read(self, path: bytes, base_chunks=None, **how):
        name = os.path.basename(path)  # a name in its directory's descriptor, how["dir_fd"]
        if name in (b"new-vanishing.bin", b"kept-vanishing.bin"):
            os.unlink(path, dir_fd=how.get("dir_fd"))
            raise FileNotFoundError(2, "No such file or directory")
        if name in (b"kept.bin", b"new-refused.bin"):
            raise PermissionError(13, "Permission denied")
        return real(self, path, base_chunks, **how)

    monkeypatch.setattr(FileReader, "read", read)
    s = backup(repo, src, "incremental")
    names = {e.name: e for e in repo.load_tree(bytes.fromhex(s.tree))}
    assert b"new-vanishing.bin" not in names and b"kept-vanishing.bin" not in names
    assert b"new-refused.bin" not in names
    old = {e.name: e for e in repo.load_tree(bytes.fromhex(base.tree))}[b"kept.bin"]
    assert names[b"kept.bin"].size == 10_000 and names[b"kept.bin"].chunks == old.chunks
    assert names[b"kept.bin"].mtime_ns == old.mtime_ns, "the base version whole, not new metadata"
    errors = s.extra.get("errors", [])
    assert len(errors) == 2 and all("Permission denied" in e for e in errors), errors
    assert sum("vanished while it was read" in n for n in s.extra.get("notes", [])) == 2
    assert s.stats.files == len(names) - sum(e.kind == "dir" for e in names.values()) + sum(
        len(f) for d, _, f in os.walk(src) if d != str(src))


def test_entries_beyond_path_max_are_backed_up_and_restored(repo, src, tmp_path):
    """Directories nested past PATH_MAX (4096 bytes) below the source root: the walk reaches
    every entry through its parent's descriptor, so the deepest file is stored (content,
    metadata, xattrs) and restored like any other, with no error."""
    deep = os.open(str(src), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(22):  # 22 x 201 bytes: past 4096 below the source root
            os.mkdir(b"d" * 200, dir_fd=deep)
            nxt = os.open(b"d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=deep)
            os.close(deep)
            deep = nxt
        fd = os.open(b"deepfile", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=deep)
        os.write(fd, b"at the bottom")
        os.setxattr(fd, b"user.depth", b"22")
        os.close(fd)
        os.symlink(b"deepfile", b"deeplink", dir_fd=deep)
    finally:
        os.close(deep)
    (src / "top.txt").write_text("top")
    s = backup(repo, src)
    assert not s.extra.get("errors"), s.extra
    assert s.stats.files == 2 and s.stats.dirs == 23  # top.txt and deepfile; the root and the chain
    tree = repo.load_tree(bytes.fromhex(s.tree))
    for _ in range(22):
        tree = repo.load_tree(next(e for e in tree if e.name == b"d" * 200).subtree)
    leaf = {e.name: e for e in tree}
    assert leaf[b"deepfile"].size == len(b"at the bottom") and leaf[b"deepfile"].xattrs == {b"user.depth": b"22"}
    assert leaf[b"deeplink"].kind == "symlink" and leaf[b"deeplink"].target == b"deepfile"
    assert stat.S_IMODE(leaf[b"deepfile"].mode) == 0o640
    stats = repo.restore(s, str(tmp_path / "out"))  # the plain restore writes it back at its depth
    assert stats.errors == (), stats.errors
    fd = os.open(str(tmp_path / "out"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(22):
            nxt = os.open(b"d" * 200, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        f = os.open(b"deepfile", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            assert os.read(f, 100) == b"at the bottom" and os.getxattr(f, b"user.depth") == b"22"
            assert stat.S_IMODE(os.fstat(f).st_mode) == 0o640
        finally:
            os.close(f)
        assert os.readlink(b"deeplink", dir_fd=fd) == b"deepfile"
    finally:
        os.close(fd)
