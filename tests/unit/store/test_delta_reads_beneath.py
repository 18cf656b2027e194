"""The delta's plan reads the target only through descriptors of its directories: xattrs are
compared with or without listxattrat(2) (Linux 6.13), a directory swapped for a link to
elsewhere is never read through, and a tree deeper than PATH_MAX is compared as any other,
with or without openat2."""

from __future__ import annotations

import os

import blake3
import pytest
from cairn.fsio import beneath
from cairn.fsio.delta import mend, plan
from cairn.fsio.records import EntryMeta

NAME = b"n" * 200


def _file(path: bytes, data: bytes, **kw) -> EntryMeta:
    return EntryMeta(path=path, kind="file", mode=0o100644, mtime_ns=10**18, size=len(data),
                     chunks=(blake3.blake3(data).digest(),), chunk_sizes=(len(data),), **kw)


def _dirs(depth: int) -> list[EntryMeta]:
    return [EntryMeta(path=b"/".join([NAME] * (i + 1)), kind="dir", mode=0o40755, mtime_ns=10**18)
            for i in range(depth)]


def _mend(root: str, entries: list[EntryMeta], content: dict[bytes, bytes]) -> None:
    p, st = mend(root, entries, lambda ids: ((i, content[i]) for i in ids))
    assert not st.errors and not p.errors, (st.errors, p.errors)


@pytest.mark.parametrize("listxattrat", [True, False], ids=["listxattrat", "proc"])
def test_xattrs_are_compared_with_or_without_listxattrat(tmp_path, monkeypatch, listxattrat: bool) -> None:
    if not listxattrat:
        monkeypatch.setattr(beneath, "_listxattrat_works", False)
    data = b"content"
    entries = [EntryMeta(path=b"d", kind="dir", mode=0o40755, mtime_ns=10**18),
               _file(b"d/plain", data), _file(b"d/tagged", data, xattrs={b"user.tag": b"1"})]
    root = str(tmp_path / "t")
    _mend(root, entries, {entries[1].chunks[0]: data})
    assert plan(root, entries).clean
    os.setxattr(os.path.join(root, "d", "plain"), "user.extra", b"x")
    os.setxattr(os.path.join(root, "d", "tagged"), "user.tag", b"2")
    for quick in (False, True):
        p = plan(root, entries, quick=quick)
        assert sorted(f.meta.path for f in p.files if f.fix_meta and not f.writes) == [b"d/plain", b"d/tagged"]
    _mend(root, entries, {})
    assert plan(root, entries).clean
    assert os.listxattr(os.path.join(root, "d", "plain")) == []


def test_a_directory_swapped_for_a_link_is_not_read_through(tmp_path) -> None:
    """The target's directory `d` is a link to a copy elsewhere holding the very same file: the
    plan does not take it for the set's file (it would read outside the target), and the delta
    replaces the link without writing through it."""
    data = b"same bytes"
    entries = [EntryMeta(path=b"d", kind="dir", mode=0o40755, mtime_ns=10**18), _file(b"d/f", data)]
    root = tmp_path / "t"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(data)
    os.utime(outside / "f", ns=(10**18, 10**18))
    os.chmod(outside / "f", 0o644)
    os.symlink(outside, root / "d")
    p = plan(str(root), entries)
    assert [m.path for m in p.remake] == [b"d"] and [f.meta.path for f in p.files if f.fresh] == [b"d/f"]
    _mend(str(root), entries, {entries[1].chunks[0]: data})
    assert not os.path.islink(root / "d") and (root / "d" / "f").read_bytes() == data
    assert sorted(os.listdir(outside)) == ["f"]


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_a_tree_deeper_than_path_max_is_planned_and_mended(tmp_path, monkeypatch, openat2: bool) -> None:
    if not openat2:
        monkeypatch.setattr(beneath, "_openat2_works", False)
    dirs = _dirs(25)
    deep = dirs[-1].path
    assert len(deep) > 5000
    a, b = b"deep file" * 1000, b"another"
    entries = [*dirs, _file(deep + b"/a", a), _file(deep + b"/b", b)]
    content = {entries[-2].chunks[0]: a, entries[-1].chunks[0]: b}
    root = str(tmp_path / "t")
    _mend(root, entries, content)
    p = plan(root, entries, extras_under=[b""])
    assert p.clean and p.checked_files == 2, p.changes()
    at = beneath.Beneath(os.fsencode(root))
    try:
        with at.parent(deep + b"/a") as (fd, name):  # damage: a byte of a, b gone, an extra
            f = os.open(name, os.O_WRONLY, dir_fd=fd)
            os.pwrite(f, b"X", 100)
            os.close(f)
            os.unlink(b"b", dir_fd=fd)
            os.close(os.open(b"extra", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        at.close()
    p = plan(root, entries, extras_under=[b""])
    assert sorted(f.meta.path for f in p.files) == [deep + b"/a", deep + b"/b"] and p.extras == [deep + b"/extra"]
    _mend(root, entries, content)
    assert not plan(root, entries).files
