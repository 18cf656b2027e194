"""Reading a batch of blobs at once (BlobReader.read_many, Repository.read_blobs, as a restore
reads its chunks): the same bytes and the same per-blob errors as one `read` per blob, with one
backend read per run of adjacent blobs and one decompression call per batch."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from cairn.store.content import blobs, crypto
from cairn.store.content.packs import CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_REF
from cairn.store.errors import CairnError, CorruptionError, UnavailableError, UnindexedError, short
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import backup, write_random

SECRET = crypto.Secret("passphrase", b"read many")
FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}


def _small_files(root, rng: random.Random, n: int = 40, noise: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):  # compressible text of a few KiB each: zstd blobs, adjacent in their pack
        (root / f"f{i:03d}.txt").write_bytes((b"line %d of file %d " % (rng.randrange(9), i)) * rng.randrange(50, 400))
    if noise:  # incompressible: stored raw (its chunks land among the others as threads finish)
        write_random(root / "noise", 300_000, rng)


def _repo(tmp_path, encrypted: bool, noise: bool = True) -> tuple[Repository, FaultyBackend, MemoryBackend]:
    inner = MemoryBackend()
    counted = FaultyBackend(inner, ops=("get_range",), kind="packs")
    Repository.init(inner, secret=SECRET if encrypted else None, argon2=FAST).close()
    repo = Repository.open(counted, secret=SECRET if encrypted else None)
    src = tmp_path / "src"
    _small_files(src, random.Random(5), noise=noise)
    backup(repo, src, "full")
    return repo, counted, inner


def _in_pack_order(repo: Repository, codec: int | None = None) -> list[bytes]:
    items = [(loc.pack, loc.offset, bid) for bid, loc in repo.index.items() if codec is None or loc.codec == codec]
    return [bid for _, _, bid in sorted(items)]


class _CountingDecompressor:
    def __init__(self, inner) -> None:
        self.inner, self.single, self.multi = inner, 0, 0

    def decompress(self, *a, **k):
        self.single += 1
        return self.inner.decompress(*a, **k)

    def multi_decompress_to_buffer(self, *a, **k):
        self.multi += 1
        return self.inner.multi_decompress_to_buffer(*a, **k)


@pytest.fixture
def counting_zstd(monkeypatch):
    counter = _CountingDecompressor(blobs._decompressor())
    monkeypatch.setattr(blobs, "_decompressor", lambda: counter)
    return counter


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plaintext"])
def test_a_batch_reads_what_single_reads_read(tmp_path, encrypted):
    repo, _counted, _inner = _repo(tmp_path, encrypted)
    ids = _in_pack_order(repo)
    codecs = {repo.index.get(b).codec for b in ids}
    assert {CODEC_ZSTD, CODEC_RAW} <= codecs, codecs
    rng = random.Random(9)
    mixed = ids[:10] + rng.sample(ids, len(ids) // 2) + [ids[3], ids[3]] + [b"\x07" * 32] + ids[-5:]
    got = repo.reader.read_many(mixed)
    assert len(got) == len(mixed)
    for bid, data in zip(mixed, got, strict=True):
        if bid == b"\x07" * 32:
            assert isinstance(data, UnindexedError) and "is not in the index" in data.message
        else:
            assert data == repo.reader.read(bid), bid.hex()


def _adjacent_runs(repo: Repository, ids: list[bytes]) -> list[list[bytes]]:
    """`ids` (in pack order) cut where the next blob does not start where the last one ends."""
    runs: list[list[bytes]] = []
    for a, b in itertools.pairwise([None, *ids]):
        la, lb = (repo.index.get(a) if a else None), repo.index.get(b)
        if la is not None and la.pack == lb.pack and la.offset + la.stored_len == lb.offset:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def test_adjacent_blobs_cost_one_read_and_one_decompression(tmp_path, counting_zstd):
    repo, counted, _inner = _repo(tmp_path, True, noise=False)
    run = max(_adjacent_runs(repo, _in_pack_order(repo, CODEC_ZSTD)), key=len)[:16]
    assert len(run) == 16, "the test needs 16 adjacent blobs"
    before = len(counted.calls)
    out = repo.reader.read_many(run)
    assert len(counted.calls) - before == 1, counted.calls[before:]  # one read for 16 adjacent blobs
    assert (counting_zstd.multi, counting_zstd.single) == (1, 0)
    assert out == [repo.reader.read(b) for b in run]


def test_a_damaged_blob_fails_alone_and_is_named(tmp_path, counting_zstd):
    repo, _counted, inner = _repo(tmp_path, False)
    ids = _in_pack_order(repo, CODEC_ZSTD)[:12]
    bad = ids[5]
    loc = repo.index.get(bad)
    data = bytearray(inner.objects[("packs", loc.pack)])
    data[loc.offset:loc.offset + 4] = b"\0\0\0\0"  # no zstd frame any more: the batch's one call fails
    inner.objects[("packs", loc.pack)] = bytes(data)
    out = repo.reader.read_many(ids)
    assert counting_zstd.multi == 1 and counting_zstd.single == len(ids)  # then each frame alone
    for bid, got in zip(ids, out, strict=True):
        if bid == bad:
            assert isinstance(got, CorruptionError), got
            assert got.message == (f"unable to read pack '{short(loc.pack)}': "
                                   f"blob '{short(bad.hex())}' does not decompress")
        else:
            assert isinstance(got, bytes) and blobs.blob_id(got) == bid


def test_a_tampered_sealed_blob_fails_alone(tmp_path):
    repo, _counted, inner = _repo(tmp_path, True)
    ids = _in_pack_order(repo, CODEC_ZSTD)[:12]
    bad = ids[7]
    loc = repo.index.get(bad)
    data = bytearray(inner.objects[("packs", loc.pack)])
    data[loc.offset + loc.stored_len // 2] ^= 0x40
    inner.objects[("packs", loc.pack)] = bytes(data)
    out = repo.reader.read_many(ids)
    assert [i for i, got in enumerate(out) if isinstance(got, CairnError)] == [7]
    assert "authentication failed for blob" in out[7].message


def test_a_missing_pack_fails_its_blobs_only(tmp_path):
    repo, _counted, inner = _repo(tmp_path, True)
    more = tmp_path / "more"
    _small_files(more, random.Random(8), 10)
    backup(repo, more, "full")  # a second session: a second pack
    by_pack: dict[str, list[bytes]] = {}
    for bid in _in_pack_order(repo):
        by_pack.setdefault(repo.index.get(bid).pack, []).append(bid)
    assert len(by_pack) >= 2, "the test needs blobs in two packs"
    gone, kept = list(by_pack)[:2]
    del inner.objects[("packs", gone)]
    ids = by_pack[gone][:3] + by_pack[kept][:3]
    out = repo.reader.read_many(ids)
    for got in out[:3]:
        assert isinstance(got, CorruptionError)
        assert got.message == f"unable to read pack '{short(gone)}': pack is missing"
    assert out[3:] == [repo.reader.read(b) for b in by_pack[kept][:3]]


def test_a_store_that_does_not_answer_fails_the_batch(tmp_path):
    repo, counted, _inner = _repo(tmp_path, True)
    ids = _in_pack_order(repo)[:8]

    def refuse(op, kind, name):
        if op == "get_range":
            raise UnavailableError(f"unable to read packs object '{name}': the store does not answer")

    counted.hook = refuse
    with pytest.raises(UnavailableError):
        repo.reader.read_many(ids)


def test_a_handle_whose_index_is_stale_reads_blobs_where_a_prune_moved_them(tmp_path):
    """Repository.read_blobs refreshes its index as read_blob does: another handle's prune
    repacked the blobs this handle still places in a deleted pack."""
    inner = MemoryBackend()
    repo = Repository.init(inner)
    src = tmp_path / "src"
    rng = random.Random(4)
    src.mkdir()
    write_random(src / "keep", 200_000, rng)
    for i in range(8):
        write_random(src / f"drop{i}", 400_000, rng)
    old = repo.backup(BackupRequest(source="app", paths=(str(src),), level="full"))
    for i in range(8):
        (src / f"drop{i}").unlink()
    repo.backup(BackupRequest(source="app", paths=(str(src),), level="full"))
    stale = Repository.open(inner, read_only=True)
    keep_ids = _file_chunks(stale, old, b"keep")
    before = [stale.index.get(b) for b in keep_ids]
    for _ in range(2):  # mark (the live blobs of mostly dead packs copied), then collect
        Repository.open(inner).prune(PrunePolicy(keep_last=1), grace=0)
    fresh = Repository.open(inner, read_only=True)
    after = [fresh.index.get(x) for x in keep_ids]
    moved = [(a.pack, a.offset) != (b.pack, b.offset) for a, b in zip(before, after, strict=True)]
    assert all(moved) and ("packs", before[0].pack) not in inner.objects, "the prune was expected to repack"
    assert stale.read_blobs(keep_ids) == [fresh.read_blob(b) for b in keep_ids]


def _file_chunks(repo: Repository, s, name: bytes) -> list[bytes]:
    root = repo.load_tree(bytes.fromhex(s.tree))
    entries = root
    while True:
        hit = [e for e in entries if e.name == name]
        if hit:
            return list(hit[0].chunks)
        dirs = [e for e in entries if e.kind == "dir" and e.subtree]
        assert dirs, f"no file {name!r} in the set"
        entries = [x for d in dirs for x in repo.load_tree(d.subtree)]


def test_a_restore_of_a_delta_set_reads_deltas_in_batches(tmp_path):
    """Delta blobs (compressed against a reference) go through a batch too: decoded one by one,
    their reference read and checked."""
    inner = MemoryBackend()
    repo = Repository.init(inner, secret=SECRET, argon2=FAST)
    files, db = tmp_path / "files", tmp_path / "db"
    files.mkdir()
    db.mkdir()
    (files / "a").write_text("a")
    rel = db / "rel"
    rng = random.Random(6)
    rel.write_bytes(b"".join((b"%06d " % p + rng.randbytes(20).hex().encode()) * 200 for p in range(400)))
    for level in ("full", "incremental"):
        with repo.session(BackupRequest(source="app", paths=(str(files),), level=level)) as sess:
            sess.attach("db:main", str(db))
            sess.commit()
        data = bytearray(rel.read_bytes())
        for at in range(5000, len(data), 300_000):
            data[at:at + 50] = rng.randbytes(50)
        rel.write_bytes(bytes(data))
        st = rel.stat()
        os.utime(rel, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    deltas = [bid for bid, loc in repo.index.items() if loc.codec == CODEC_ZSTD_REF]
    assert deltas, "the incremental was expected to store deltas"
    ids = _in_pack_order(repo)
    assert repo.read_blobs(ids) == [repo.read_blob(b) for b in ids]


def test_a_restore_reads_adjacent_chunks_together(tmp_path):
    """A restore's chunk reads go through read_blobs: 40 small files in one pack cost a few
    reads of the pack, not one per file."""
    repo, counted, _inner = _repo(tmp_path, True)
    s = repo.get_set("latest")
    reads = len(counted.calls)
    stats = repo.restore(s, str(tmp_path / "out"))
    assert stats.errors == () and stats.files == 41
    chunk_reads = [c for c in counted.calls[reads:] if c[0] == "get_range"]
    assert 1 <= len(chunk_reads) <= 6, len(chunk_reads)
    for i in range(40):
        name = f"f{i:03d}.txt"
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "src" / name).read_bytes()


def test_a_blob_larger_than_the_batch_limit_is_decompressed_alone(tmp_path, counting_zstd, monkeypatch):
    """The batch's one call gets one output buffer for all its frames: a blob whose index entry
    gives a larger size than MULTI_FRAME_MAX is kept out of it and decoded in its own call."""
    repo, _counted, _inner = _repo(tmp_path, True)
    run = _in_pack_order(repo, CODEC_ZSTD)[:16]
    sizes = sorted(repo.index.get(b).raw_len for b in run)
    limit = sizes[len(sizes) // 2]
    monkeypatch.setattr(blobs, "MULTI_FRAME_MAX", limit)
    out = repo.reader.read_many(run)
    over = sum(1 for b in run if repo.index.get(b).raw_len > limit)
    assert over >= 2 and (counting_zstd.multi, counting_zstd.single) == (1, over)
    assert out == [repo.reader.read(b) for b in run]


def test_chunks_of_large_files_are_decoded_alone_and_small_ones_together(tmp_path, counting_zstd):
    """With the default limit: small files' blobs share one decompression call, while the
    chunks of a large compressible file (each at least the chunker's minimum) are each decoded
    in their own call, straight into their own bytes (no copy out of a shared buffer)."""
    repo, _counted, _inner = _repo(tmp_path, False)
    rng = random.Random(3)
    words = [bytes(rng.choices(b"abcdefgh ", k=rng.randrange(3, 9))) for _ in range(500)]
    big = tmp_path / "src" / "big.txt"
    big.write_bytes(b" ".join(rng.choice(words) for _ in range(700_000)))  # ~4 MB of text: zstd chunks
    backup(repo, tmp_path / "src", "incremental")
    s = repo.get_set("latest")
    chunks = next(e.chunks for e in repo.load_tree(bytes.fromhex(s.tree)) if e.name == b"big.txt")
    assert all(repo.index.get(c).codec == CODEC_ZSTD for c in chunks)
    alone = [c for c in chunks if repo.index.get(c).raw_len > blobs.MULTI_FRAME_MAX]  # all but a short tail
    assert len(alone) >= max(2, len(chunks) - 1)
    small = [b for b in _in_pack_order(repo, CODEC_ZSTD) if repo.index.get(b).raw_len <= blobs.MULTI_FRAME_MAX][:8]
    assert len(small) == 8
    counting_zstd.single = counting_zstd.multi = 0  # the trees read above are not counted
    out = repo.reader.read_many(small + list(chunks))
    assert (counting_zstd.multi, counting_zstd.single) == (1, len(alone))
    assert b"".join(out[len(small):]) == big.read_bytes()


def _set_chunks(repo: Repository) -> list[bytes]:
    s = repo.get_set("latest")
    out: list[bytes] = []
    todo = [bytes.fromhex(s.tree)]
    while todo:
        for e in repo.load_tree(todo.pop()):
            out.extend(e.chunks)
            if e.kind == "dir" and e.subtree:
                todo.append(e.subtree)
    return out


def test_read_chunks_of_a_delta_restore_come_in_order_in_batches(tmp_path):
    """Repository.read_chunks (what a delta restore reads) goes through read_blobs too: the
    chunks come in the order asked, repeats included, with a few reads of the pack."""
    repo, counted, _inner = _repo(tmp_path, True)
    ids = _set_chunks(repo)
    ids = ids + ids[:5]
    before = len(counted.calls)
    got = list(repo.read_chunks(repo.get_set("latest"), ids))
    reads = len(counted.calls) - before  # of the pack, and of the set's trees
    assert reads <= 4, counted.calls[before:]
    assert got == [repo.reader.read(b) for b in ids]


def test_read_chunks_give_a_damaged_chunk_in_its_place_or_raise_it(tmp_path):
    repo, _counted, inner = _repo(tmp_path, True)
    ids = _set_chunks(repo)
    bad = ids[len(ids) // 2]
    loc = repo.index.get(bad)
    data = bytearray(inner.objects[("packs", loc.pack)])
    data[loc.offset + 20] ^= 1
    inner.objects[("packs", loc.pack)] = bytes(data)
    s = repo.get_set("latest")
    got = list(repo.read_chunks(s, ids, errors=True))
    assert [i for i, g in enumerate(got) if isinstance(g, CairnError)] == [ids.index(bad)]
    assert "authentication failed" in got[ids.index(bad)].message
    stream = repo.read_chunks(s, ids)
    came = []
    with pytest.raises(CorruptionError, match="authentication failed"):
        for chunk in stream:
            came.append(chunk)
    assert len(came) == ids.index(bad)  # everything before it came, in order
