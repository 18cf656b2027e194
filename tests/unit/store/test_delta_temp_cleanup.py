"""A delta restore (cairn.fsio.delta.mend) that stops anywhere leaves no `.cairn-delta-*`
temporary file: an interruption (KeyboardInterrupt) right after a temporary file is made, one
while finishing (`finish()`: empty files are made there), and a failed rename into place. And
one delta per target at a time (`target_lock`)."""

from __future__ import annotations

import os
import subprocess
import sys

import blake3
import pytest
from cairn.errors import BusyError
from cairn.fsio.delta import TEMP_PREFIX, mend, target_lock
from cairn.fsio.records import EntryMeta

FILES = 10


def manifest(with_empty: bool = False) -> tuple[list[EntryMeta], dict[bytes, bytes]]:
    """FILES one-chunk files under d/ (and as many empty ones under e/), none in the target yet."""
    entries = [EntryMeta(path=b"d", kind="dir", mode=0o40755, uid=0, gid=0, mtime_ns=10**18, size=0)]
    store: dict[bytes, bytes] = {}
    for i in range(FILES):
        data = os.urandom(500 + i)
        cid = blake3.blake3(data).digest()
        store[cid] = data
        entries.append(EntryMeta(path=b"d/f%02d" % i, kind="file", mode=0o100644, uid=0, gid=0, mtime_ns=10**18,
                                 size=len(data), chunks=(cid,), chunk_sizes=(len(data),)))
    if with_empty:
        entries.append(EntryMeta(path=b"e", kind="dir", mode=0o40755, uid=0, gid=0, mtime_ns=10**18, size=0))
        entries += [EntryMeta(path=b"e/z%02d" % i, kind="file", mode=0o100644, uid=0, gid=0, mtime_ns=10**18,
                              size=0) for i in range(FILES)]
    return entries, store


def source(store: dict[bytes, bytes]):
    return lambda ids: ((cid, store[cid]) for cid in ids)


def temps(root: str) -> list[str]:
    return [n for _, dirs, files in os.walk(root) for n in dirs + files if n.startswith(TEMP_PREFIX.decode())]


def test_an_interruption_right_after_a_temporary_file_is_made_removes_it(tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "t")
    entries, store = manifest()
    real_open = os.open
    made = []

    def open_then_interrupted(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if os.fsencode(path).startswith(TEMP_PREFIX) and flags & os.O_CREAT:
            if len(made) == 3:
                os.close(fd)
                raise KeyboardInterrupt  # as a signal would, once the open returned
            made.append(path)
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        mend(root, entries, source(store))
    monkeypatch.undo()
    assert not temps(root)
    assert sorted(os.listdir(os.path.join(root, "d"))) == ["f00", "f01", "f02"]  # complete ones stay
    assert mend(root, entries, source(store))[1].files_written == FILES - 3


def test_an_interruption_while_finishing_removes_the_temporary_files(tmp_path, monkeypatch) -> None:
    """Empty files are made in finish(): an interruption at the rename of one of them."""
    root = str(tmp_path / "t")
    entries, store = manifest(with_empty=True)
    real_rename = os.rename
    renamed = []

    def rename(src, dst, *args, **kwargs):
        if dst == b"z04":
            raise KeyboardInterrupt
        renamed.append(dst)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        mend(root, entries, source(store))
    monkeypatch.undo()
    assert b"z03" in renamed and not temps(root)
    assert sorted(os.listdir(os.path.join(root, "e"))) == ["z00", "z01", "z02", "z03"]
    p, st = mend(root, entries, source(store))
    assert st.files_written == FILES - 4 and not st.errors and not temps(root)


def test_a_failed_rename_reports_the_file_and_removes_its_temporary_file(tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "t")
    entries, store = manifest()
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if dst == b"f05":
            raise OSError(5, "Input/output error")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    p, st = mend(root, entries, source(store))
    monkeypatch.undo()
    assert st.errors == ["unable to restore 'd/f05': Input/output error"] and st.files_written == FILES - 1
    assert not temps(root) and not os.path.exists(os.path.join(root, "d", "f05"))


def test_one_delta_per_target_at_a_time(tmp_path) -> None:
    """The lock is refused to a second holder, in this process or another, naming the holder's
    pid; it is released when the block ends."""
    target = str(tmp_path)
    child = [sys.executable, "-c", "import sys\nfrom cairn.fsio.delta import target_lock\n"
                                   "with target_lock(sys.argv[1]): print('locked')", target]
    with target_lock(target):
        with pytest.raises(BusyError, match=rf"a delta restore of '{target}/.' is running already "
                                            rf"\(pid {os.getpid()}\): wait for it to end"):
            with target_lock(target + "/."):
                pass
        r = subprocess.run(child, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and f"(pid {os.getpid()})" in r.stderr, r.stderr
        with target_lock(str(tmp_path / "missing")):  # nothing to lock: the delta says what it cannot do
            pass
    with target_lock(target):  # released when the first ended
        pass
    assert subprocess.run(child, capture_output=True, text=True, timeout=60).stdout == "locked\n"
