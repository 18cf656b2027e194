"""A delta restore (cairn.fsio.delta.mend) stops when it is told its caller went away: while
reading the target and while writing it, with AbortedError; the chunk source is closed; every
chunk written is the set's, and running the delta again finishes the work."""

from __future__ import annotations

import os
from collections.abc import Iterator

import blake3
import pytest
from cairn.errors import AbortedError
from cairn.fsio.delta import mend
from cairn.fsio.records import EntryMeta

FILES = 40


def manifest(root: str) -> tuple[list[EntryMeta], dict[bytes, bytes]]:
    """A set of FILES one-chunk files under d/, written to `root`; (entries, chunk store)."""
    os.makedirs(os.path.join(root, "d"))
    entries = [EntryMeta(path=b"d", kind="dir", mode=0o40755, uid=0, gid=0, mtime_ns=10**18, size=0)]
    store: dict[bytes, bytes] = {}
    for i in range(FILES):
        data = os.urandom(1000 + i)
        cid = blake3.blake3(data).digest()
        store[cid] = data
        with open(os.path.join(root, "d", f"f{i:02d}"), "wb") as f:
            f.write(data)
        entries.append(EntryMeta(path=b"d/f%02d" % i, kind="file", mode=0o100644, uid=0, gid=0, mtime_ns=10**18,
                                 size=len(data), chunks=(cid,), chunk_sizes=(len(data),)))
    return entries, store


def damaged(root: str) -> None:
    for i in range(FILES):
        with open(os.path.join(root, "d", f"f{i:02d}"), "r+b") as f:
            head = f.read(2)  # XX, unless the random content began with it: then something else
            f.seek(0)
            f.write(b"XX" if head != b"XX" else b"YY")


def intact(root: str, store: dict[bytes, bytes]) -> int:
    good = set(store.values())
    n = 0
    for name in os.listdir(os.path.join(root, "d")):
        with open(os.path.join(root, "d", name), "rb") as f:
            n += f.read() in good
    return n


class Source:
    """Serves chunks from `store`; counts what it served and whether it was closed."""

    def __init__(self, store: dict[bytes, bytes]) -> None:
        self.store, self.served, self.closed = store, 0, False

    def __call__(self, ids: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        try:
            for cid in ids:
                self.served += 1
                yield cid, self.store[cid]
        finally:
            self.closed = True


def test_a_delta_told_to_stop_while_writing_stops_and_a_second_run_finishes(tmp_path) -> None:
    root = str(tmp_path / "t")
    entries, store = manifest(root)
    damaged(root)
    src = Source(store)
    asked = 0

    def cancelled() -> bool:
        nonlocal asked
        asked += 1
        return src.served >= 5  # the client goes away after the fifth chunk

    with pytest.raises(AbortedError, match="cancelled while writing"):
        mend(root, entries, src, cancelled=cancelled)
    assert src.served == 5 and src.closed, "the chunk source is left at once, and closed"
    assert intact(root, store) == 5, "what was written is the set's; the rest is left as it was"
    p, st = mend(root, entries, Source(store))
    assert st.files_written == FILES - 5 and not st.errors
    assert intact(root, store) == FILES


def test_a_delta_told_to_stop_while_reading_the_target_writes_nothing(tmp_path) -> None:
    root = str(tmp_path / "t")
    entries, store = manifest(root)
    damaged(root)
    src = Source(store)
    answers = iter([False, False, True])  # gone after two files were read

    with pytest.raises(AbortedError, match="cancelled while reading"):
        mend(root, entries, src, cancelled=lambda: next(answers, True))
    assert src.served == 0 and intact(root, store) == 0
    assert mend(root, entries, Source(store))[1].files_written == FILES
    assert intact(root, store) == FILES
