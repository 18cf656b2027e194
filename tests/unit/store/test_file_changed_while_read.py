"""A file that changes while it is read (store/snapshots/filereader.py): read again until it
holds still, at most `retries` more times and only while it is at most `reread_max` bytes;
otherwise stored as read and flagged fuzzy, with the stat data of the end of that read.

The writer below is where the reader hands over each new chunk: appending to the file there is
a write that lands while the file is being read, at a known point, every time."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
from cairn.store.content.repoconfig import ChunkerParams
from cairn.store.snapshots.filereader import REREAD_MAX, FileReader

PARAMS = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536)


class _Writer:
    """A BlobWriter stand-in that keeps chunks and appends to `path` on the first `writes` reads
    (`grow` bytes each time, a line by default)."""

    def __init__(self, path: Path, writes: int, grow: int = 0) -> None:
        self.path, self.writes, self.grow = path, writes, grow
        self.blobs: dict[bytes, bytes] = {}
        self.reads = 0
        self._last: bytes | None = None

    def blob_id(self, view: memoryview) -> bytes:
        return blake3.blake3(view).digest()

    def has(self, bid: bytes) -> bool:
        return bid in self.blobs

    def rely(self, chunks: list[bytes]) -> bool:
        return all(c in self.blobs for c in chunks)

    def put_many(self, kind, pieces, bases=None) -> None:  # type: ignore[no-untyped-def]
        for bid, view in pieces:
            self.blobs[bid] = bytes(view)
        self.reads += 1
        if self.reads <= self.writes:
            with open(self.path, "ab") as f:
                f.write(b"written while read %d\n" % self.reads if not self.grow else b"z" * self.grow)


def _content(w: _Writer, chunks: list[bytes]) -> bytes:
    return b"".join(w.blobs[c] for c in chunks)


def test_a_file_changed_once_is_read_again_and_stored_as_it_then_is(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3000))
    w = _Writer(path, writes=1)
    res = FileReader(w, PARAMS, None, retries=3).read(os.fsencode(path))
    assert not res.fuzzy
    assert _content(w, res.chunks) == path.read_bytes() and res.st.st_size == path.stat().st_size
    assert res.bytes_read == 3000 + path.stat().st_size  # two reads


def test_a_file_that_never_holds_still_is_read_retries_plus_one_times_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3000))
    w = _Writer(path, writes=100)
    res = FileReader(w, PARAMS, None, retries=3).read(os.fsencode(path))
    assert res.fuzzy and w.reads == 4
    # the stat data of the end of the last read: the next set's racy rule reads it again
    assert res.st.st_size == path.stat().st_size and res.st.st_mtime_ns == path.stat().st_mtime_ns
    # but the size of what it read, which the file outgrew meanwhile: a restore adds nothing to it
    assert res.size == len(_content(w, res.chunks)) < path.stat().st_size


def test_a_file_larger_than_reread_max_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(200_000))
    w = _Writer(path, writes=100)
    res = FileReader(w, PARAMS, None, retries=3, reread_max=100_000).read(os.fsencode(path))
    assert res.fuzzy
    assert res.bytes_read == 200_000  # one read, however many retries are allowed
    assert _content(w, res.chunks) == path.read_bytes()[:200_000]
    small = tmp_path / "small"  # the same reader still reads a small file again
    small.write_bytes(os.urandom(3000))
    w2 = _Writer(small, writes=1)
    res2 = FileReader(w2, PARAMS, None, retries=3, reread_max=100_000).read(os.fsencode(small))
    assert not res2.fuzzy and _content(w2, res2.chunks) == small.read_bytes()


def test_the_default_limit_is_what_a_backup_uses() -> None:
    assert FileReader(_Writer(Path("/nonexistent"), 0), PARAMS, None).reread_max == REREAD_MAX == 64 << 20


def test_a_file_stored_fuzzy_is_read_again_by_the_next_set_though_it_held_still_since(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """The torn copy does not live on: the next set reads the file again (its recorded times lie
    within the set that read it) and stores it whole."""
    from cairn.store.model import BackupRequest
    from cairn.store.repository import Repository
    from cairn.store.snapshots import filereader

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"a" * 1000)
    repo = Repository.init_local(str(tmp_path / "repo"))
    plain = filereader.FileReader._read_fd

    def written_while_read(self, fd, size, base):  # type: ignore[no-untyped-def]
        got = plain(self, fd, size, base)
        with open(src / "f", "ab") as f:
            f.write(b"Z")
        return got

    monkeypatch.setattr(filereader.FileReader, "_read_fd", written_while_read)
    first = repo.backup(BackupRequest(source="app", paths=(str(src),), level="full"))
    assert first.stats.fuzzy_paths == ("f",)
    monkeypatch.setattr(filereader.FileReader, "_read_fd", plain)
    second = repo.backup(BackupRequest(source="app", paths=(str(src),), level="incremental"))
    assert second.stats.fuzzy_paths == () and second.stats.bytes_read == 1004
    repo.restore(second, str(tmp_path / "out"))
    restored = next(p for p in (tmp_path / "out").rglob("f"))
    assert restored.read_bytes() == (src / "f").read_bytes() == b"a" * 1000 + b"Z" * 4
    repo.close()



def test_a_file_appended_faster_than_it_is_read_is_read_up_to_its_size_at_open(tmp_path: Path, monkeypatch) -> None:
    """Each segment stored appends more than a segment: read to its end, the file was chased as
    long as the writer went on (a log appended faster than the daemon reads kept a backup
    reading, and storing, for ever). A read takes the size the file had at open; what came later
    is the next read's, and the file is flagged fuzzy."""
    from cairn.store.snapshots import filereader

    monkeypatch.setattr(filereader, "SEGMENT", 256 << 10)
    path = tmp_path / "log"
    first = os.urandom(300_000)
    path.write_bytes(first)
    w = _Writer(path, writes=40, grow=512 << 10)
    res = FileReader(w, PARAMS, None, retries=0).read(os.fsencode(path))
    assert res.fuzzy
    assert res.bytes_read == len(first) and _content(w, res.chunks) == first
    w2 = _Writer(path, writes=40, grow=512 << 10)
    res2 = FileReader(w2, PARAMS, None, retries=1).read(os.fsencode(path))
    assert res2.fuzzy and len(_content(w2, res2.chunks)) < path.stat().st_size
    assert _content(w2, res2.chunks) == path.read_bytes()[: len(_content(w2, res2.chunks))]
    assert w2.reads < 40  # each read ended at the size it began with, while the writer still went on


def test_a_file_replaced_by_a_fifo_before_it_is_opened_is_refused_at_once(tmp_path: Path) -> None:
    """The walk lists a regular file; by the time a reader opens it, it is a FIFO. Opening a FIFO
    for reading waits for a writer: the backup hung there for ever, holding its lock."""
    import threading

    fifo = tmp_path / "was-a-file"
    os.mkfifo(fifo)
    outcome: list[Exception | None] = []

    def read() -> None:
        try:
            FileReader(_Writer(fifo, 0), PARAMS, None).read(os.fsencode(fifo))
            outcome.append(None)
        except Exception as e:  # handed to the test thread
            outcome.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # let the stuck open go (a writer comes), so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        raise AssertionError("the read of a FIFO waited for a writer")
    assert isinstance(outcome[0], OSError) and "no longer a regular file" in str(outcome[0])
