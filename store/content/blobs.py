"""Blob storage: writing new blobs into packs and reading blobs back, verified.

What always holds:
- a blob id is blake3 of its plaintext (keyed blake3 in an encrypted repository); a read
  returns bytes whose id equals the one asked for or raises CorruptionError naming the pack;
  a batch read (`read_many`) gives each blob exactly that, its own error failing only it;
- with a RepoKey, a blob is compressed, then sealed (AES-256-GCM, its id as associated data)
  before it enters a pack; `stored_len` counts the sealed bytes;
- a blob enters the shared index only after its pack AND an index file naming it are durably
  written (then it is handed to `publish`, which adds it to whatever index is current), so
  dedup never points at data that a restart would not find; within one write session
  (`BlobWriter`) its own blobs dedup from the moment they are accepted; the blobs it dedups
  against without writing them are remembered in `deduped`, the subtrees a walk carried
  over from its base unread in `carried`, and the packs of the files it carried over by
  reference or whose one chunk it found stored (`rely`) in `relied`, for the check before commit;
- a session that fails leaves packs (and perhaps index files) that nothing references, never
  a reference to a missing pack;
- at most `max_pending` packs are in memory waiting for upload (bounded memory), and at most
  `uploads` packs are being uploaded at once (several PUTs in flight for object stores);
- an index file names only packs whose upload the backend acknowledged (put returned and the
  size was checked), and `finish` returns only after every upload of the session was
  acknowledged; the first failed upload fails the session (every later `put` and `finish`
  raise it), so nothing is committed on top of a pack that may not be durable.
"""

from __future__ import annotations

import array
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Protocol

import blake3
import zstandard

from ..errors import (
    AbortedError,
    BackendError,
    CairnError,
    CorruptionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    UnindexedError,
    short,
)
from ..memory import release_free_memory
from ..storage.backend import Backend
from .index import Index, Location, encode_index
from .packs import CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_REF, HEADER, TYPE_TREE, PackBuilder, PackEntry

if TYPE_CHECKING:
    from .crypto import RepoKey, WriteOnlyKey

_tls = threading.local()
COMPRESS_THREADS = max(2, os.cpu_count() or 2)
RUN_BYTES = 1 << 20  # blobs of one pack near each other fetched with one read by read_many (below an S3 block)
RUN_GAP = 64 << 10  # ... when at most this many bytes of other blobs lie between them
# Blobs up to this size are decompressed together, one call for a batch's frames, then copied
# out of the shared buffer: for small ones a call each cost more (a hand-over of the interpreter
# lock per call). Larger ones (every chunk of a file above the chunker's minimum) are decoded
# alone, straight into their own bytes: that copy held the lock for as long as memcpy and page
# faults of a fresh buffer took, a quarter of a restore stream's locked time (py-spy --gil), and
# a stream of the bench corpus ran 15-25% faster without it.
MULTI_FRAME_MAX = 256 << 10


def blob_id(data: bytes | memoryview) -> bytes:
    """The id of a blob: blake3 of its plaintext."""
    return blake3.blake3(data).digest()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    c = getattr(_tls, "zc", None)
    if c is None or _tls.zl != level:
        c = _tls.zc = zstandard.ZstdCompressor(level=level)
        _tls.zl = level
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_tls, "zd", None)
    if d is None:
        d = _tls.zd = zstandard.ZstdDecompressor()
    return d


def encode_blob(data: bytes | memoryview, level: int) -> tuple[int, bytes]:
    """Compress with zstd, or store raw where compression does not save at least 3%."""
    if len(data) < 64:
        return CODEC_RAW, bytes(data)
    z = _compressor(level).compress(data)
    if len(z) < len(data) * 0.97:
        return CODEC_ZSTD, z
    return CODEC_RAW, bytes(data)


DELTA_LEVEL = 3  # level 1 hardly uses a dictionary; 3 does (measured on PostgreSQL relation files)


def encode_blob_ref(data: bytes | memoryview, ref_id: bytes, ref_data: bytes, level: int) -> tuple[int, bytes]:
    """Compress `data` with zstd using the plaintext of blob `ref_id` as a raw-content dictionary.

    For a chunk that is a modified version of the reference (a database page range rewritten
    in place) only the differences cost space. Falls back to raw where nothing is saved."""
    if len(data) < 64:
        return CODEC_RAW, bytes(data)
    d = zstandard.ZstdCompressionDict(ref_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    z = zstandard.ZstdCompressor(level=max(level, DELTA_LEVEL), dict_data=d).compress(data)
    if len(z) + len(ref_id) < len(data) * 0.97:
        return CODEC_ZSTD_REF, ref_id + z
    return CODEC_RAW, bytes(data)


def decode_blob(stored: bytes, codec: int, raw_len: int, ref_data: bytes | None = None) -> bytes:
    if codec == CODEC_RAW:
        return stored
    if codec == CODEC_ZSTD:
        return _decompressor().decompress(stored, max_output_size=raw_len)
    if codec == CODEC_ZSTD_REF and ref_data is not None:
        d = zstandard.ZstdCompressionDict(ref_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdDecompressor(dict_data=d).decompress(stored[32:], max_output_size=raw_len)
    raise CorruptionError(f"unknown codec {codec}")


class BlobReader:
    """Reads blobs by id through the index, verifying each against its id."""

    def __init__(self, backend: Backend, index: Index, key: RepoKey | WriteOnlyKey | None = None) -> None:
        self.backend = backend
        self.index = index
        self.key = key
        self.blob_id = key.blob_id if key is not None else blob_id

    def unseal(self, pack: str, bid: bytes, stored: bytes) -> bytes:
        """The stored (compressed) bytes of a blob as read from its pack, opened when sealed."""
        if self.key is None:
            return stored
        return self.key.open_blob(pack, bid, stored, header=lambda: self._header(pack))

    def _header(self, pack: str) -> bytes:
        """The first bytes of a pack: a pack sealed to the public key holds its data key there."""
        from .crypto import PK_HEADER_LEN

        return self.backend.get_range("packs", pack, 0, PK_HEADER_LEN)

    def read(self, bid: bytes, *, verify: bool = True) -> bytes:
        """The plaintext of blob `bid`, checked against its id (unless `verify` is off, which
        only delta references use: the delta's own check covers its reference)."""
        loc, stored = self.read_stored(bid)
        return self.decode_stored(bid, loc.pack, loc.codec, loc.raw_len, stored, verify=verify)

    def read_stored(self, bid: bytes) -> tuple[Location, bytes]:
        """(location, stored bytes as the pack holds them: compressed, sealed when encrypted)."""
        loc = self.index.get(bid)
        if loc is None:
            raise UnindexedError(f"blob '{short(bid.hex())}' is not in the index")
        try:
            stored = self.backend.get_range("packs", loc.pack, loc.offset, loc.stored_len)
        except NotFoundError:
            raise CorruptionError(f"unable to read pack '{short(loc.pack)}': pack is missing") from None
        if len(stored) != loc.stored_len:
            raise CorruptionError(f"unable to read pack '{short(loc.pack)}': truncated")
        return loc, stored

    def decode_stored(self, bid: bytes, pack: str, codec: int, raw_len: int, stored: bytes, *,
                      verify: bool = True) -> bytes:
        """The plaintext of blob `bid` from its stored bytes: opened, decompressed and checked
        against its id (CorruptionError naming `pack` when any step fails)."""
        return self._decode_opened(bid, pack, codec, raw_len, self.unseal(pack, bid, stored), verify)

    def _decode_opened(self, bid: bytes, pack: str, codec: int, raw_len: int, opened: bytes,
                       verify: bool = True) -> bytes:
        ref_data = self.reference_data(pack, bid, opened) if codec == CODEC_ZSTD_REF else None
        try:
            data = decode_blob(opened, codec, raw_len, ref_data)
        except zstandard.ZstdError:
            raise CorruptionError(f"unable to read pack '{short(pack)}': blob "
                                  f"'{short(bid.hex())}' does not decompress") from None
        return self._checked(bid, pack, raw_len, data, verify)

    def _checked(self, bid: bytes, pack: str, raw_len: int, data: bytes, verify: bool = True) -> bytes:
        if len(data) != raw_len or (verify and self.blob_id(data) != bid):
            raise CorruptionError(f"unable to read pack '{short(pack)}': checksum mismatch "
                                  f"in blob '{short(bid.hex())}'")
        return data

    def read_many(self, ids: Sequence[bytes]) -> list[bytes | CairnError]:
        """For each blob of `ids`, in order: its plaintext, checked against its id as `read`
        checks it, or the CairnError reading it met (only that blob fails). An UnavailableError
        (the store does not answer) is raised, not returned.

        What differs from calling `read` per blob is the cost, not the result: blobs of one pack
        at most RUN_GAP apart are fetched with one read of up to RUN_BYTES, and the small zstd
        frames of the batch (up to MULTI_FRAME_MAX) decompressed in one call. Each call into a
        native library lets go of the interpreter's lock, and with other threads waiting that is
        a hand-over between threads; a restore of small files made four of them per chunk."""
        n = len(ids)
        locs = [self.index.get(bid) for bid in ids]
        out: list[bytes | CairnError | None] = [None] * n
        opened: list[bytes | None] = [None] * n
        found: list[tuple[str, int, int, int]] = []  # (pack, offset, end, index in ids)
        for i, loc in enumerate(locs):
            if loc is None:
                out[i] = UnindexedError(f"blob '{short(ids[i].hex())}' is not in the index")
            else:
                found.append((loc.pack, loc.offset, loc.offset + loc.stored_len, i))
        found.sort()
        run: list[int] = []
        pack, start, end = "", 0, 0
        for p, offset, stop, i in found:  # blobs of one pack near each other: one read
            if run and p == pack and offset <= end + RUN_GAP and stop - start <= RUN_BYTES:
                run.append(i)
                end = max(end, stop)
                continue
            if run:
                self._open_run(ids, locs, run, start, end, out, opened)
            run, pack, start, end = [i], p, offset, stop
        if run:
            self._open_run(ids, locs, run, start, end, out, opened)
        frames = [i for i in range(n) if opened[i] is not None and locs[i].codec == CODEC_ZSTD  # type: ignore[union-attr]
                  and locs[i].raw_len <= MULTI_FRAME_MAX]  # type: ignore[union-attr]
        plain: dict[int, bytes] = {}
        if len(frames) > 1:
            sizes = array.array("Q", (locs[i].raw_len for i in frames))  # type: ignore[union-attr]
            try:
                done = _decompressor().multi_decompress_to_buffer([opened[i] for i in frames],
                                                                  decompressed_sizes=sizes)
                plain = {i: done[j].tobytes() for j, i in enumerate(frames)}
            except zstandard.ZstdError:
                pass  # one bad frame fails the call: each blob is decoded alone below, naming its own
        for i in range(n):
            data = opened[i]
            if data is None:
                continue
            loc = locs[i]
            assert loc is not None
            try:
                got = plain.get(i)
                out[i] = (self._checked(ids[i], loc.pack, loc.raw_len, got) if got is not None
                          else self._decode_opened(ids[i], loc.pack, loc.codec, loc.raw_len, data))
            except CairnError as e:
                if isinstance(e, UnavailableError):
                    raise
                out[i] = e
        return out  # type: ignore[return-value]

    def _open_run(self, ids: Sequence[bytes], locs: list, run: list[int], start: int, end: int,
                  out: list, opened: list) -> None:
        """Fetch bytes [start, end) of the pack holding the blobs `run` indexes in `ids` with one
        read and open each blob (sealed blobs); a blob that fails gets its error in `out`."""
        first = locs[run[0]]
        try:
            data = self.backend.get_range("packs", first.pack, start, end - start)
        except UnavailableError:
            raise
        except CairnError as e:
            err = (CorruptionError(f"unable to read pack '{short(first.pack)}': pack is missing")
                   if isinstance(e, NotFoundError) else e)
            for i in run:
                out[i] = err
            return
        for i in run:
            loc = locs[i]
            at = loc.offset - start
            stored = data[at:at + loc.stored_len]
            if len(stored) != loc.stored_len:
                out[i] = CorruptionError(f"unable to read pack '{short(loc.pack)}': truncated")
                continue
            try:
                opened[i] = self.unseal(loc.pack, ids[i], stored)
            except CairnError as e:
                if isinstance(e, UnavailableError):
                    raise
                out[i] = e

    def reference_data(self, pack: str, bid: bytes, stored: bytes) -> bytes:
        """The plaintext of the blob a delta blob was compressed against (never itself a delta)."""
        ref = stored[:32]
        loc = self.index.get(ref)
        if loc is None or loc.codec == CODEC_ZSTD_REF:
            why = "is missing" if loc is None else "is itself a delta"
            raise CorruptionError(f"unable to read pack '{short(pack)}': reference blob '{short(ref.hex())}' "
                                  f"of blob '{short(bid.hex())}' {why}")
        return self.read(ref, verify=False)

    def reference_of(self, bid: bytes) -> bytes | None:
        """The reference blob id of a delta blob, None for any other blob."""
        loc = self.index.get(bid)
        if loc is None or loc.codec != CODEC_ZSTD_REF:
            return None
        return self.reference_in(loc.pack, bid, loc.offset, loc.stored_len)

    def reference_in(self, pack: str, bid: bytes, offset: int, stored_len: int) -> bytes:
        """The reference blob id of the delta-coded copy of `bid` stored in `pack` at `offset`
        (any copy an index file names, not only the one the loaded index chose)."""
        if self.key is not None:
            stored = self.backend.get_range("packs", pack, offset, stored_len)
            return self.unseal(pack, bid, stored)[:32]
        return self.backend.get_range("packs", pack, offset, 32)

    def delta_base(self, bid: bytes) -> tuple[bytes, bytes] | None:
        """(id, plaintext) of a committed blob usable as a delta reference for a new version of
        `bid`: `bid` itself, or the reference of `bid` when `bid` is a delta (depth stays 1)."""
        try:
            root = self.reference_of(bid) or bid
            if root not in self.index:
                return None
            return root, self.read(root)
        except (CorruptionError, NotFoundError, BackendError):
            return None


class KnownBlobs(Protocol):
    """What a writer dedups against: the blobs of the durable index as its owner sees it now."""

    def __contains__(self, bid: object) -> bool: ...


class BlobWriter:
    """One write session: dedups against the index, fills packs, uploads them from a bounded pool of threads.

    Call `put` from any number of threads, then `finish()` which flushes, waits for every
    upload and writes the index file naming the new packs. `abort()` stops without an index.
    Full packs are uploaded by `uploads` threads (a bounded pool), so the producers do not wait
    for each PUT.
    """

    def __init__(self, backend: Backend, index: Index | KnownBlobs, *, pack_size: int, level: int,
                 max_pending: int = 1, index_every: int = 32,
                 publish: Callable[[str, dict[str, list[PackEntry]]], None] | None = None,
                 key: RepoKey | WriteOnlyKey | None = None, uploads: int = 1) -> None:
        if uploads < 1:
            raise InvalidArgumentError(f"invalid uploads {uploads}: expected at least 1")
        self.backend = backend
        fork = getattr(key, "for_writer", None)
        key = fork() if fork is not None else key  # a write-only key: a data key for this session alone
        self.key = key
        self._header = getattr(key, "pack_header", HEADER) if key is not None else HEADER
        self.on_tree: Callable[[bytes, bytes], None] | None = None  # told every tree this session stores or reuses
        self.blob_id = key.blob_id if key is not None else blob_id
        self._trailer_seal = key.seal_trailer if key is not None else None
        self.index = index
        self.publish = publish
        self.deduped: set[bytes] = set()  # blobs this session uses but did not write: they must stay indexed
        # subtrees carried over from the base unread: their packs must exist, the index name all below
        self.carried: set[bytes] = set()
        # packs holding the chunks of files carried over by reference (unchanged, not read), and of
        # small files' chunks found stored: pack -> (one such chunk, the end of the furthest one in
        # it); per pack, not per chunk, to stay small
        self.relied: dict[str, tuple[bytes, int]] = {}
        self.pack_size = pack_size
        self.level = level
        self.index_every = index_every
        self._lock = threading.Lock()
        self._inflight: set[bytes] = set()
        self._builder = PackBuilder(seal=self._trailer_seal, header=self._header)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._unindexed: dict[str, list[PackEntry]] = {}
        self._error: BaseException | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._spare: list[bytearray] = []  # buffers of uploaded packs, reused by new builders
        self._spare_cv = threading.Condition()
        self._index_lock = threading.Lock()  # the uploader never takes _lock: it must always progress
        self.uploads = uploads
        self._closing = False  # abort: uploaders stop once the queue is empty
        self._buffers = 1  # pack buffers in existence: filling, queued, uploading
        self._max_buffers = max_pending + 1 + uploads
        self.bytes_added = 0
        self.blobs_added = 0
        self.packs_written = 0
        self.pack_bytes_written = 0
        self._uploaders = [threading.Thread(target=self._upload_loop, name=f"pack-upload-{i}", daemon=True)
                           for i in range(uploads)]
        for t in self._uploaders:
            t.start()

    def has(self, bid: bytes) -> bool:
        return bid in self.index or bid in self._inflight

    def rely(self, chunks: list[bytes]) -> bool:
        """Whether every one of `chunks` is known (indexed, or written by this session); if so
        the packs the indexed ones lie in are noted in `relied`, for the check before commit."""
        found: list[tuple[bytes, str, int]] = []
        for c in chunks:
            loc = self.index.get(c)
            if loc is None:
                with self._lock:
                    if c not in self._inflight:
                        return False
                continue
            found.append((c, loc.pack, loc.offset + loc.stored_len))
        with self._lock:
            for c, pack, end in found:
                had = self.relied.get(pack)
                if had is None or had[1] < end:
                    self.relied[pack] = (c, end)
        return True

    def put(self, bid: bytes, btype: int, data: bytes | memoryview) -> bool:
        """Store a blob unless known. Returns True if it was new."""
        with self._lock:
            if bid in self._inflight:
                return False
            if bid in self.index:
                self.deduped.add(bid)
                return False
            self._inflight.add(bid)
        self._add(bid, btype, data)
        return True

    def put_forced(self, bid: bytes, btype: int, data: bytes) -> None:
        """Store a blob even if the index knows it (prune copying live blobs out of a pack)."""
        with self._lock:
            if bid in self._inflight:
                return
            self._inflight.add(bid)
        self._add(bid, btype, data)

    def put_many(self, btype: int, items: list[tuple[bytes, memoryview]],
                 delta_base: Callable[[int], tuple[bytes, bytes] | None] | None = None) -> None:
        """Store each (id, data) unless known, compressing in parallel. Returns once every new
        blob is in a pack builder, so the caller may then reuse the memory behind `items`.
        `delta_base(i)` may name a committed (id, plaintext) to delta-compress item i against."""
        new = []
        with self._lock:
            for i, (bid, data) in enumerate(items):
                if bid in self._inflight:
                    continue
                if bid in self.index:
                    self.deduped.add(bid)
                    continue
                self._inflight.add(bid)
                new.append((i, bid, data))
        if not new:
            return

        def encode(i: int, bid: bytes, data: memoryview) -> tuple[int, bytes]:
            ref = delta_base(i) if delta_base is not None else None
            if ref is not None:
                codec, stored = encode_blob_ref(data, ref[0], ref[1], self.level)
            else:
                codec, stored = encode_blob(data, self.level)
            return codec, self._seal(bid, stored)

        futs = [self._compress_pool().submit(encode, i, bid, data) for i, bid, data in new[1:]]
        try:
            encoded = [encode(*new[0])] + [f.result() for f in futs]
        finally:
            wait(futs)  # nothing may still read the caller's buffer after we return
        for (_, bid, data), (codec, stored) in zip(new, encoded, strict=True):
            self._append(bid, btype, len(data), codec, stored)

    def _compress_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(COMPRESS_THREADS, thread_name_prefix="blob-compress")
            return self._pool

    def _stop_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _add(self, bid: bytes, btype: int, data: bytes | memoryview) -> None:
        codec, stored = encode_blob(data, self.level)
        self._append(bid, btype, len(data), codec, self._seal(bid, stored))

    def _seal(self, bid: bytes, stored: bytes) -> bytes:
        """Compress, then encrypt: the stored bytes of a blob sealed under the repository key."""
        return self.key.seal_blob(bid, stored) if self.key is not None else stored

    def _append(self, bid: bytes, btype: int, raw_len: int, codec: int, stored: bytes) -> None:
        full = None
        with self._lock:
            self._raise_if_failed()
            self._builder.add(bid, btype, codec, raw_len, stored)
            self.bytes_added += len(stored)
            self.blobs_added += 1
            if len(self._builder) >= self.pack_size:
                full, self._builder = self._builder, self._new_builder()
        if full is not None:
            self._enqueue(full)

    def put_data(self, btype: int, data: bytes | memoryview) -> bytes:
        bid = self.blob_id(data)
        if btype == TYPE_TREE and self.on_tree is not None:
            self.on_tree(bid, bytes(data))
        self.put(bid, btype, data)
        return bid

    def _enqueue(self, builder: PackBuilder | None) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(builder, timeout=0.2)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, BackendError | AbortedError):
                raise self._error
            raise BackendError(f"unable to write pack: {self._error}")

    def _upload_loop(self) -> None:
        while True:
            try:
                builder = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing:
                    return
                continue
            if builder is None:
                return
            if self._error is not None:
                continue
            try:
                self._upload(builder)
            except BaseException as e:  # recorded, re-raised in the producer threads
                if self._error is None:
                    self._error = e
            builder = None  # free the pack's memory while waiting for the next one

    def _new_builder(self) -> PackBuilder:
        """A builder on a recycled buffer; waits for an upload to free one when the limit is
        reached, so pack memory stays bounded however slow the backend (caller holds the lock;
        the uploader recycles without it)."""
        with self._spare_cv:
            while not self._spare and self._buffers >= self._max_buffers:
                self._raise_if_failed()
                self._spare_cv.wait(0.2)
            if self._spare:
                return PackBuilder(self._spare.pop(), self._trailer_seal, self._header)
            self._buffers += 1
            return PackBuilder(seal=self._trailer_seal, header=self._header)

    def _upload(self, builder: PackBuilder) -> None:
        name, data, entries = builder.finish()
        self.backend.put("packs", name, data)
        if self.backend.stat("packs", name) != len(data):
            raise BackendError(f"unable to write pack '{short(name)}': size mismatch after write")
        with self._spare_cv:
            self._spare.append(data)  # the backend is done with it: put has returned
            self._spare_cv.notify()
        with self._index_lock:
            self._unindexed[name] = entries
            self.packs_written += 1
            self.pack_bytes_written += len(data)
            flush = len(self._unindexed) >= self.index_every
        if flush:
            self._write_index()
        release_free_memory()

    def _write_index(self) -> None:
        with self._index_lock:
            packs, self._unindexed = self._unindexed, {}
        if packs:
            name, data = encode_index(packs)
            self.backend.put("index", name, data)
            if self.publish is not None:
                self.publish(name, packs)
            else:
                for pack, entries in packs.items():
                    self.index.add_pack(pack, entries)

    def finish(self) -> None:
        """Flush the last pack, wait for uploads, write the index. Raises the first failure."""
        self._stop_pool()
        with self._lock:
            last, self._builder = self._builder, PackBuilder(seal=self._trailer_seal, header=self._header)
        try:
            if last.entries:
                self._enqueue(last)
            for _ in self._uploaders:
                self._enqueue(None)  # one end mark per uploader, after every pack
        except BaseException:
            self.abort()
            raise
        for t in self._uploaders:
            t.join()  # every upload of the session has been answered (or failed) now
        self._raise_if_failed()
        self._write_index()

    def abort(self) -> None:
        """Stop uploading; blobs not yet durable are dropped (they were never indexed)."""
        if self._error is None:  # first, so a producer waiting for a pack buffer gives up
            self._error = AbortedError("write session aborted")
        self._stop_pool()
        self._closing = True
        while True:  # packs not started are dropped; uploads in progress end by themselves
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for t in self._uploaders:
            t.join(timeout=60)


ProgressHook = Callable[[int], None]
