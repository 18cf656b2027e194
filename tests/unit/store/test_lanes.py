"""Lanes: a restore stream that feeds large files' content between the other entries.

The producer (StreamBuilder.records with a LaneGauge) must keep the stream well formed: a lane
ends before a hardlink to its file and before the stream ends, a damaged chunk ends its lane as
failed, and content is interleaved only while the writer's backlog of that lane is low. Both
writers must lay down from such a stream exactly the tree a plain stream gives, and must never
count a file whose lane failed, never ended, or got content for no open lane.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest
from cairn.errors import CorruptionError
from cairn.fsio.records import Data, EntryMeta, LaneData, LaneEnd, LaneGauge
from cairn.fsio.writer import ParallelTreeWriter, TreeWriter
from cairn.store.snapshots import restore as restore_mod
from cairn.store.snapshots.restore import StreamBuilder
from cairn.store.snapshots.trees import Entry
from test_parallel_writer import snapshot

KIB = 1024
CHUNK = 16 * KIB


class Gauge(LaneGauge):
    """A writer's gauge, or one that reports a fixed backlog for every lane."""

    def __init__(self, fixed: int | None = None) -> None:
        super().__init__()
        self.fixed = fixed

    def backlog(self, path: bytes) -> int:
        return super().backlog(path) if self.fixed is None else self.fixed


class Tree:
    """A synthetic set: trees and chunks in dicts, read like a repository's."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = random.Random(seed)
        self.trees: dict[bytes, list[Entry]] = {}
        self.blobs: dict[bytes, bytes] = {}
        self.damaged: set[bytes] = set()

    def file(self, name: str, size: int, mode: int = 0o644, hardlink: str = "") -> Entry:
        data = self.rng.randbytes(size)
        chunks = []
        for o in range(0, size, CHUNK):
            piece = data[o:o + CHUNK]
            bid = blake3.blake3(piece).digest()
            self.blobs[bid] = piece
            chunks.append(bid)
        return Entry(name=name.encode(), kind="file", mode=0o100000 | mode, size=size, chunks=chunks,
                     mtime_ns=1_700_000_000_000_000_000 + size, hardlink=hardlink)

    def dir(self, name: str, entries: list[Entry]) -> Entry:
        tid = blake3.blake3(repr(sorted(e.name for e in entries)).encode() + name.encode()).digest()
        self.trees[tid] = sorted(entries, key=lambda e: e.name)
        return Entry(name=name.encode(), kind="dir", mode=0o40755, subtree=tid, mtime_ns=1_600_000_000_000_000_000)

    def root(self, entries: list[Entry]) -> bytes:
        return self.dir("", entries).subtree

    def read_blob(self, bid: bytes) -> bytes:
        if bid in self.damaged:
            raise CorruptionError(f"unable to read pack 'ab12..': checksum mismatch in blob '{bid.hex()[:12]}'")
        return self.blobs[bid]

    def records(self, root: bytes, lanes: LaneGauge | None) -> list:
        with ThreadPoolExecutor(3) as pool:
            return list(StreamBuilder(self.trees.__getitem__, self.read_blob, pool).records(root, None, lanes))


@pytest.fixture(autouse=True)
def small_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lanes from 64 KiB, fed 32 KiB ahead, in batches of 4 chunks: small trees exercise them."""
    monkeypatch.setattr(restore_mod, "LANE_FROM", 64 * KIB)
    monkeypatch.setattr(restore_mod, "LANE_AHEAD", 32 * KIB)
    monkeypatch.setattr(restore_mod, "BATCH_CHUNKS", 4)


def app_tree(t: Tree) -> bytes:
    """Three large files (two lanes at once, the third inline while both are open), a read-only
    one, many small files after them, and a hardlink to the first large file at the end."""
    small = [t.file(f"s{i:03d}", t.rng.randrange(0, 3 * KIB)) for i in range(60)]
    return t.root([
        t.file("a-big", 300 * KIB, hardlink="1:1"),
        t.file("b-big", 200 * KIB, mode=0o400),
        t.file("c-big", 100 * KIB),
        t.dir("m-small", small),
        t.file("z-link", 300 * KIB, hardlink="1:1"),
    ])


def plain_restore(target) -> tuple[Tree, bytes]:
    """The application tree, restored without lanes into `target` (what a laned restore must equal)."""
    t = Tree()
    root = app_tree(t)
    plain = TreeWriter(str(target))
    for r in t.records(root, None):
        plain.apply(r)
    assert not plain.finish().errors
    return t, root


def position(recs: list, pred) -> list[int]:
    return [i for i, r in enumerate(recs) if pred(r)]


@pytest.mark.parametrize("writer", [TreeWriter, ParallelTreeWriter])
@pytest.mark.parametrize("backlog", [None, 0, 1 << 30])
def test_a_stream_with_lanes_restores_the_same_tree(tmp_path, writer, backlog: int | None) -> None:
    t, root = plain_restore(tmp_path / "plain")
    gauge = Gauge(backlog)
    recs = t.records(root, gauge)
    assert any(isinstance(r, LaneData) for r in recs)
    kw = {"lanes": gauge} if writer is ParallelTreeWriter else {}
    w = writer(str(tmp_path / "laned"), **kw)
    for r in recs:
        w.apply(r)
    st = w.finish()
    assert not st.errors
    want = snapshot(tmp_path / "plain")
    assert snapshot(tmp_path / "laned") == want and len(want) == 65
    assert st.bytes == sum(len(r.data) for r in recs if isinstance(r, (Data, LaneData)))
    assert os.stat(tmp_path / "laned" / "z-link").st_ino == os.stat(tmp_path / "laned" / "a-big").st_ino



@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_pending", [1 << 20, 64 << 20])
def test_one_writer_thread_takes_two_lanes_and_the_small_files_between(tmp_path, max_pending: int) -> None:
    """A writer of one thread: lanes and the groups of small files share it, with the memory bound
    reached or not, and nothing waits forever."""
    t, root = plain_restore(tmp_path / "plain")
    gauge = Gauge(None)
    recs = t.records(root, gauge)
    assert len({r.path for r in recs if isinstance(r, LaneData)}) == 2
    w = ParallelTreeWriter(str(tmp_path / "laned"), workers=1, max_pending=max_pending, lanes=gauge)
    for r in recs:
        w.apply(r)
    st = w.finish()
    assert not st.errors
    assert snapshot(tmp_path / "laned") == snapshot(tmp_path / "plain")

def test_lanes_are_well_formed_and_at_most_two_open() -> None:
    t = Tree()
    recs = t.records(app_tree(t), Gauge(1 << 30))
    laned = [r.path for r in recs if isinstance(r, EntryMeta) and r.lane]
    assert laned == [b"a-big", b"b-big"]  # c-big came while both were open: inline Data
    c = position(recs, lambda r: isinstance(r, EntryMeta) and r.path == b"c-big")[0]
    assert isinstance(recs[c + 1], Data)
    for path in laned:
        opened = position(recs, lambda r, p=path: isinstance(r, EntryMeta) and r.path == p)[0]
        ends = position(recs, lambda r, p=path: isinstance(r, LaneEnd) and r.path == p)
        data = position(recs, lambda r, p=path: isinstance(r, LaneData) and r.path == p)
        assert len(ends) == 1 and not recs[ends[0]].failed
        assert data and opened < min(data) and max(data) < ends[0]
    # a lane ends before the hardlink to its file
    link = position(recs, lambda r: isinstance(r, EntryMeta) and r.kind == "hardlink")[0]
    assert position(recs, lambda r: isinstance(r, LaneEnd) and r.path == b"a-big")[0] < link


def test_a_lane_is_fed_between_other_entries_only_while_its_backlog_is_low() -> None:
    t = Tree()
    root = app_tree(t)
    small = lambda r: isinstance(r, EntryMeta) and r.path.startswith(b"m-small/")  # noqa: E731
    for backlog, interleaved in ((0, True), (1 << 30, False)):
        recs = t.records(root, Gauge(backlog))
        first_small, last_small = position(recs, small)[0], position(recs, small)[-1]
        b_data = position(recs, lambda r: isinstance(r, LaneData) and r.path == b"b-big")
        between = [i for i in b_data if first_small < i < last_small]
        assert bool(between) is interleaved, backlog
        if not interleaved:  # a full backlog: the lane waits for the end of the tree
            assert min(b_data) > last_small


def test_a_damaged_chunk_ends_its_lane_failed_and_the_file_is_not_restored(tmp_path) -> None:
    t = Tree()
    big = t.file("a-big", 300 * KIB)
    root = t.root([big, t.dir("m", [t.file(f"s{i}", 100) for i in range(10)])])
    t.damaged.add(big.chunks[7])
    gauge = Gauge()
    recs = t.records(root, gauge)
    ends = [r for r in recs if isinstance(r, LaneEnd)]
    assert len(ends) == 1 and "checksum mismatch" in ends[0].failed
    end = recs.index(ends[0])
    assert not [r for r in recs[end:] if isinstance(r, LaneData)]
    w = ParallelTreeWriter(str(tmp_path / "t"), lanes=gauge)
    for r in recs:
        w.apply(r)
    st = w.finish()
    assert st.files == 10 and len(st.errors) == 1
    assert st.errors[0].startswith("unable to restore 'a-big': unable to read pack 'ab12..': checksum mismatch")
    assert sorted(os.listdir(tmp_path / "t")) == ["m"]


def lane_stream() -> list:
    return [EntryMeta(path=b"big", kind="file", size=8, lane=True), EntryMeta(path=b"x", kind="file", size=1),
            LaneData(b"big", b"1234"), Data(b"x")]


@pytest.mark.parametrize("writer", [TreeWriter, ParallelTreeWriter])
def test_a_lane_the_stream_never_ends_is_removed_and_reported(tmp_path, writer) -> None:
    w = writer(str(tmp_path / "t"))
    for r in lane_stream():
        w.apply(r)
    st = w.finish()
    assert st.files == 1 and st.errors == ["unable to restore 'big': the restore stream ended before the "
                                           "file's content"]
    assert os.listdir(tmp_path / "t") == ["x"]


@pytest.mark.parametrize("writer", [TreeWriter, ParallelTreeWriter])
def test_content_for_no_open_lane_is_an_error(tmp_path, writer) -> None:
    w = writer(str(tmp_path / "t"))
    for r in [*lane_stream(), LaneData(b"big", b"5678"), LaneEnd(b"big"), LaneData(b"big", b"late"),
              LaneData(b"nowhere", b"?"), LaneData(b"nowhere", b"?"),
              EntryMeta(path=b"lost", kind="file", size=3), LaneData(b"lost", b"abc")]:
        w.apply(r)
    st = w.finish()
    assert (tmp_path / "t" / "big").read_bytes() == b"12345678"
    # a file opened without its lane flag whose content came as a lane is not left empty
    assert not (tmp_path / "t" / "lost").exists() and st.files == 2
    assert st.errors == ["unable to restore 'big': its content came for no open file",
                         "unable to restore 'nowhere': its content came for no open file",
                         "unable to restore 'lost': its content came for no open file"]


@pytest.mark.parametrize("writer", [TreeWriter, ParallelTreeWriter])
def test_a_hardlink_to_a_lane_still_open_is_refused_not_left_partial(tmp_path, writer) -> None:
    w = writer(str(tmp_path / "t"))
    for r in [*lane_stream(), EntryMeta(path=b"hl", kind="hardlink", link_to=b"big"), LaneData(b"big", b"5678"),
              LaneEnd(b"big")]:
        w.apply(r)
    st = w.finish()
    assert sorted(os.listdir(tmp_path / "t")) == ["x"]
    assert st.files == 1
    assert "unable to restore 'big': the restore stream linked to it before its content ended" in st.errors
    assert any(e.startswith("unable to restore 'hl'") for e in st.errors)


def test_abort_removes_open_lanes(tmp_path) -> None:
    w = ParallelTreeWriter(str(tmp_path / "t"), workers=2)
    for r in [*lane_stream(), EntryMeta(path=b"d", kind="dir")]:  # 'x' is complete, 'big' is not
        w.apply(r)
    w.abort()
    assert sorted(os.listdir(tmp_path / "t")) == ["d", "x"] and w.stats.files == 1


@pytest.mark.timeout(60)
def test_the_daemons_writer_lays_down_small_files_while_a_large_files_writes_are_held_up(tmp_path, monkeypatch):
    """With the daemon's number of writer threads (restoredb.LOCAL_WRITERS), a large file whose
    writes are slow (a disk that lags, or page-cache copies the kernel makes slowly) does not
    hold up the small files the stream carries around it: they are created, written and
    finalized by another thread meanwhile. (With one writer they queued behind the large file:
    a restore took the sum of both where it can take the longer.)"""
    import threading
    import time

    from cairn.daemon.databases.postgres import restoredb
    from cairn.fsio import writer as writer_mod

    gate = threading.Event()
    real = writer_mod._write_all

    def held_up(fd: int, view: memoryview, off: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/big"):
            assert gate.wait(30), "the large file's writes were never released"
        real(fd, view, off)

    monkeypatch.setattr(writer_mod, "_write_all", held_up)
    w = ParallelTreeWriter(str(tmp_path / "t"), workers=restoredb.LOCAL_WRITERS, lanes=LaneGauge())
    big = os.urandom(3 << 20)
    w.apply(EntryMeta(path=b"big", kind="file", mode=0o644, size=len(big), mtime_ns=1_700_000_000_000_000_000,
                      lane=True))
    w.apply(LaneData(b"big", big[: 1 << 20]))
    small = {f"s{i:03d}".encode(): os.urandom(100 + i) for i in range(2 * writer_mod.GROUP_FILES + 1)}
    when = 1_600_000_000_000_000_000
    for name, data in small.items():
        w.apply(EntryMeta(path=name, kind="file", mode=0o640, size=len(data), mtime_ns=when))
        w.apply(Data(data))
        w.apply(LaneData(b"big", b""))  # the lane is fed between them, as a producer does
    done = [n for n in small][: 2 * writer_mod.GROUP_FILES]  # the last one is still the open file
    deadline = time.monotonic() + 20
    try:
        while True:
            finished = [n for n in done if (tmp_path / "t" / n.decode()).exists()
                        and os.stat(tmp_path / "t" / n.decode()).st_mtime_ns == when]
            if len(finished) == len(done) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert len(finished) == len(done), (f"{len(finished)} of {len(done)} small files finished while the "
                                            "large file's writes were held up")
        for n in done:
            assert (tmp_path / "t" / n.decode()).read_bytes() == small[n]
    finally:
        gate.set()
    w.apply(LaneData(b"big", big[1 << 20:]))
    w.apply(LaneEnd(b"big"))
    st = w.finish()
    assert not st.errors and st.files == len(small) + 1
    assert (tmp_path / "t" / "big").read_bytes() == big
