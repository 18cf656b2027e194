"""Turning a set's tree into a restore stream (records of cairn.fsio.records).

Entries come in pre-order: a directory before its contents. File content is read ahead by a
thread pool (a bounded window of chunks, so memory stays bounded) and verified against its id;
a chunk that cannot be read turns into a `Failed` record for that file, naming the file and
the pack, and the stream goes on with the next entry; so does a directory whose tree cannot be
read, and an entry whose name could reach outside its directory ('..', '/' in it) is refused.
Hardlinked files are sent once and then as links to the first path restored. A directory's
entries are never held at once when its tree is large (trees.StreamedTree): it is decoded in
one pass that finds its unsafe names and any damage before anything of it is sent, and again
as its entries are sent.

A `RestoreFilter` (gitignore-style --include / --exclude patterns, matched like the store's
excludes against paths relative to the restore root) prunes the stream: an excluded directory
is never entered; with includes, a directory appears only when something below it (or itself)
is included, and always before its contents. In manifest mode no content is read: each file's
`EntryMeta` carries its chunk ids and sizes instead, which is what a delta restore or a
verification compares a tree on disk against; `read_chunks` then serves the chunks that differ,
only from among those the set references.

A file entry recorded larger than its chunks hold (sets taken by older code while the file
grew: they recorded its size after the read, not what was read) is restored with the content
its set holds, never padded with zeros to the recorded size: its record says the shorter size,
a `Notice` before it says so, and a manifest lists that size too.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from cairn.fsio.names import shown
from cairn.fsio.records import Data, EntryMeta, Failed, Hole, LaneData, LaneEnd, LaneGauge, Notice, Record

from ..errors import CairnError, InvalidArgumentError, NotFoundError, UnavailableError
from .excludes import Excluder
from .trees import Entry

BATCH_CHUNKS = 64  # chunks read by one pool task
BATCH_BYTES = 2 * 1024 * 1024  # or this much data
MAX_BATCHES = 4  # batches read ahead
MAX_ENTRIES = 8192  # records waiting in the window
LANE_FROM = 16 * 1024 * 1024  # files at least this large become lanes, for a consumer that takes them
MAX_LANES = 2  # lanes open at once (a large file met while both are open goes inline)
LANE_AHEAD = 16 * 1024 * 1024  # a lane's backlog below which more of it is fed
# A tree's entries by its id (Repository.tree_entries): a list, or a large tree decoded anew as
# each pass iterates it (trees.StreamedTree), so a directory's entries need not be held at once
TreeLoader = Callable[[bytes], Iterable[Entry]]


def short_file_notice(path: bytes, recorded: int, held: int) -> str:
    """What a restore says of a file whose entry records more bytes than its chunks hold."""
    return (f"'{shown(path)}' is restored with the {held} bytes its set holds, not the {recorded} its entry "
            "records: it grew while it was read (a set taken by an older Cairn), and what it grew by was never "
            "stored")


def entry_meta(path: bytes, e: Entry, chunk_size: Callable[[bytes], int] | None = None) -> EntryMeta:
    """The record of entry `e` at `path`; with `chunk_size`, a file's record lists its chunks."""
    if chunk_size is not None and e.kind == "file":
        return EntryMeta(path=path, kind=e.kind, mode=e.mode, uid=e.uid, gid=e.gid, mtime_ns=e.mtime_ns,
                         size=e.size, xattrs=dict(e.xattrs), target=e.target, rdev=e.rdev, sparse=e.sparse,
                         chunks=tuple(e.chunks), chunk_sizes=tuple(chunk_size(c) for c in e.chunks))
    return EntryMeta(path=path, kind=e.kind, mode=e.mode, uid=e.uid, gid=e.gid, mtime_ns=e.mtime_ns,
                     size=e.size, xattrs=dict(e.xattrs), target=e.target, rdev=e.rdev, sparse=e.sparse)


class RestoreFilter:
    """--include / --exclude patterns (gitignore-style) over paths relative to the restore root."""

    def __init__(self, include: list[str] | tuple[str, ...] = (), exclude: list[str] | tuple[str, ...] = ()) -> None:
        for p in (*include, *exclude):
            if not p.strip() or "\0" in p:
                raise InvalidArgumentError(f"invalid restore pattern '{p}'")
        self.includes = tuple(include)
        self._include = Excluder(self.includes)
        self._exclude = Excluder(tuple(exclude))
        self.matched = False  # an include pattern selected something (set by `included`)

    def __bool__(self) -> bool:
        return bool(self._include) or bool(self._exclude)

    def excluded(self, rel: bytes, is_dir: bool) -> bool:
        return self._exclude.excluded(rel, is_dir)

    def included(self, rel: bytes, is_dir: bool) -> bool:
        """True when `rel` is selected by itself (no includes: everything is)."""
        if not self._include:
            return True
        if self._include.excluded(rel, is_dir):
            self.matched = True
            return True
        return False

    def nothing_included(self) -> str | None:
        """After a walk: why nothing was selected when include patterns were given and none
        matched (a typo restores nothing, and says so), else None."""
        if not self.includes or self.matched:
            return None
        return "no path matches --include " + ", ".join(f"'{p}'" for p in self.includes)


def split_path(path: str) -> list[bytes]:
    return [p for p in os.fsencode(path).split(b"/") if p and p != b"."]


def distinct_paths(paths: list[str]) -> list[str]:
    """`paths` without repeats and without those inside another of them (each entry is restored
    once: a second copy of it met the first, 'File exists'), in the order given."""
    split = []
    for p in paths:
        parts = tuple(split_path(p))
        if all(parts != other for other, _ in split):
            split.append((parts, p))
    return [p for parts, p in split
            if not any(len(other) < len(parts) and parts[:len(other)] == other for other, _ in split)]


def safe_name(name: bytes) -> bool:
    """A directory entry name that cannot reach outside its directory."""
    return name not in (b"", b".", b"..") and b"/" not in name and b"\0" not in name


def _unsafe(entries: Iterable[Entry]) -> list[Entry]:
    """The entries of a directory whose names could reach outside it. One pass over `entries`:
    for a large tree (decoded as it is iterated) that pass also finds any error in it, so the
    pass that restores the directory afterwards meets none part way."""
    return [e for e in entries if not safe_name(e.name)]


def find_entry(load_tree: TreeLoader, root: bytes, path: str) -> tuple[list[Entry], Entry | None]:
    """Walk `path` from tree `root`: returns (ancestor dir entries, entry); entry None for the root."""
    parts = split_path(path)
    missing = f"path '{shown(os.fsencode(path))}' is not in the set"  # escaped: it is the caller's input
    tree, chain = root, []
    entry: Entry | None = None
    for i, part in enumerate(parts):
        if not tree:
            raise NotFoundError(missing)
        found = next((e for e in load_tree(tree) if e.name == part), None)
        if found is None:
            raise NotFoundError(missing)
        if i < len(parts) - 1:
            if found.kind != "dir":
                raise NotFoundError(missing)
            chain.append(found)
        entry, tree = found, found.subtree
    return chain, entry


class StreamBuilder:
    """Produces the record stream of one restore."""

    def __init__(self, load_tree: TreeLoader, read_blob: Callable[[bytes], bytes],
                 pool: ThreadPoolExecutor, *, select: RestoreFilter | None = None,
                 chunk_size: Callable[[bytes], int] | None = None,
                 read_blobs: Callable[[list[bytes]], list[bytes | CairnError]] | None = None,
                 content_len: Callable[[bytes], int | None] | None = None) -> None:
        """`select` prunes the stream; with `chunk_size` the stream is a manifest (no content).
        `read_blobs`, when given, reads a batch's chunks at once: each its content or its error,
        an UnavailableError raised (as Repository.read_blobs); else `read_blob` reads each.
        `content_len` gives a chunk's length as the index records it (None: not indexed); with
        it a file recorded larger than its chunks hold is restored at their length."""
        self.load_tree = load_tree
        self.read_blob = read_blob
        self.read_blobs = read_blobs
        self.pool = pool
        self.select = select if select else None
        self.chunk_size = chunk_size
        self.content_len = content_len
        self._links: dict[str, bytes] = {}
        self._pending: list[tuple[bytes, Entry]] = []  # directories not emitted yet (includes)

    def items(self, root: bytes, paths: list[str] | None) -> Iterator[tuple]:
        """Yield ('meta', EntryMeta | Failed) and ('chunk', id, sparse, path) in stream order."""
        if not paths or any(not split_path(p) for p in paths):
            yield from self._tree(root, b"")
            return
        made: set[bytes] = set()
        for path in distinct_paths(paths):
            chain, entry = find_entry(self.load_tree, root, path)
            rel = b""
            for d in chain:
                rel = rel + b"/" + d.name if rel else d.name
                if rel not in made:
                    made.add(rel)
                    yield "meta", entry_meta(rel, d, self.chunk_size)
            if entry is None:
                yield from self._tree(root, b"")
            else:
                yield from self._entry(rel + b"/" + entry.name if rel else entry.name, entry)

    def _tree(self, tree: bytes, rel: bytes) -> Iterator[tuple]:
        entries = self.load_tree(tree)
        yield from self._children(entries, _unsafe(entries), rel)

    def _children(self, entries: Iterable[Entry], bad: list[Entry], rel: bytes) -> Iterator[tuple]:
        """Entries of one directory. Unsafe names (`bad`) are refused first, while no file is
        open, because a Failed record otherwise applies to the file being written."""
        for e in bad:
            yield "meta", Failed(f"refusing unsafe entry name '{shown(e.name)}' in "
                                 f"'{shown(rel) or '.'}'")
        for e in entries:
            if safe_name(e.name):
                yield from self._entry(rel + b"/" + e.name if rel else e.name, e)

    def _entry(self, path: bytes, e: Entry, selected: bool = False) -> Iterator[tuple]:
        """One entry and what it holds. `selected`: an ancestor matched an include pattern."""
        is_dir = e.kind == "dir"
        if self.select is not None:
            if self.select.excluded(path, is_dir):
                return
            selected = selected or self.select.included(path, is_dir)
            if not selected and not is_dir:
                return
            if not selected:  # a directory shown only if something below it is selected
                self._pending.append((path, e))
                try:
                    yield from self._subtree(path, e, selected)
                finally:
                    if self._pending and self._pending[-1][0] == path:
                        self._pending.pop()
                return
            yield from self._flush_pending()
        if e.kind == "file" and e.hardlink:
            first = self._links.get(e.hardlink)
            if first is not None:
                yield "meta", EntryMeta(path=path, kind="hardlink", link_to=first)
                return
            self._links[e.hardlink] = path
        meta = entry_meta(path, e, self.chunk_size)
        held = self._held(e)
        if held is not None:
            yield "meta", Notice(short_file_notice(path, e.size, held))
            meta = dataclasses.replace(meta, size=held)
        yield "meta", meta
        if is_dir:
            yield from self._subtree(path, e, selected)
        elif e.kind == "file" and self.chunk_size is None:
            each = meta.size // len(e.chunks) if e.chunks else 0
            for c in e.chunks:
                yield "chunk", c, e.sparse, path, each

    def _held(self, e: Entry) -> int | None:
        """The bytes file entry `e`'s chunks hold when that is less than its recorded size (a
        file that grew while older code read it), else None (also when a chunk is not indexed:
        reading it fails the file)."""
        if e.kind != "file" or self.content_len is None or not e.size:
            return None
        total = 0
        for c in e.chunks:
            n = self.content_len(c)
            if n is None:
                return None
            total += n
        return total if total < e.size else None

    def _flush_pending(self) -> Iterator[tuple]:
        for p, d in self._pending:
            yield "meta", entry_meta(p, d)
        self._pending.clear()

    def _subtree(self, path: bytes, e: Entry, selected: bool) -> Iterator[tuple]:
        if not e.subtree:
            return
        try:
            entries = self.load_tree(e.subtree)
            bad = _unsafe(entries)  # a whole pass: a large tree is decoded to its end before any of it is sent
        except CairnError as err:  # a damaged directory: report it, restore everything else
            yield from self._flush_pending()
            yield "meta", Failed(f"unable to restore the contents of '{shown(path)}/': {err.message}")
            return
        if bad:
            yield from self._flush_pending()
        for x in bad:
            yield "meta", Failed(f"refusing unsafe entry name '{shown(x.name)}' in '{shown(path)}'")
        for x in entries:
            if safe_name(x.name):
                yield from self._entry(path + b"/" + x.name, x, selected)

    def records(self, root: bytes, paths: list[str] | None, lanes: LaneGauge | None = None) -> Iterator[Record]:
        """The restore stream. Chunk reads run ahead in the pool in batches (many small files'
        chunks in one task, so threads hand over work rarely), at most MAX_BATCHES at once.

        With `lanes` (a consumer that takes lanes, fsio.records) up to MAX_LANES regular files of
        at least LANE_FROM bytes become lanes: their content is fed between the other entries
        whenever the lane's backlog (held by the writer, per `lanes`, or read ahead here) is
        below LANE_AHEAD, and all of it once the rest of the tree is out."""
        window: deque = deque()
        inflight: deque = deque()
        open_lanes: dict[bytes, _Lane] = {}
        collecting: _Lane | None = None
        state = {"batch": _Batch(), "failed": None}

        def over() -> Iterator[Record]:  # hand records on while too much is read ahead
            while len(inflight) > MAX_BATCHES or len(window) > MAX_ENTRIES:
                head = window[0]
                rec, state["failed"] = self._pop(window, state["failed"])
                if (head[0] in ("chunk", "lchunk") and head[2] == len(head[1].ids) - 1 and inflight
                        and inflight[0] is head[1]):
                    inflight.popleft()  # the last chunk of the oldest batch was handed on
                if state["batch"].future is not None:  # the open batch was read early: start another
                    state["batch"] = _Batch()
                if rec is not None:
                    yield rec

        def feed(lane: _Lane, everything: bool) -> Iterator[Record]:
            """Add batches of `lane` to the window (all of them with `everything`); its end too."""
            while lane.chunks and (everything or lane.ahead + lanes.backlog(lane.path) < LANE_AHEAD):
                if state["batch"].ids:  # the window's order stays the order batches are read in
                    inflight.append(self._submit(state["batch"]))
                    state["batch"] = _Batch()
                lb = _Batch()
                while lane.chunks and not lb.full():
                    bid, size = lane.chunks.popleft()
                    window.append(("lchunk", lb, lb.add(bid, size), lane, size))
                    lane.ahead += size
                inflight.append(self._submit(lb))
                yield from over()
            if not lane.chunks:
                window.append(("lend", lane))
                del open_lanes[lane.path]

        for item in self.items(root, paths):
            if collecting is not None:
                if item[0] == "chunk" and item[3] == collecting.path:
                    collecting.chunks.append((item[1], item[4]))
                    continue
                collecting = None
            if item[0] == "meta":
                rec = item[1]
                if isinstance(rec, EntryMeta):
                    if (lanes is not None and rec.kind == "file" and not rec.sparse and rec.size >= LANE_FROM
                            and len(open_lanes) < MAX_LANES and rec.path not in open_lanes):
                        item = ("meta", dataclasses.replace(rec, lane=True))
                        collecting = open_lanes[rec.path] = _Lane(rec.path)
                    elif rec.kind == "hardlink" and rec.link_to in open_lanes:
                        yield from feed(open_lanes[rec.link_to], True)  # a lane ends before a link to it
                window.append(item)
            else:
                _, bid, sparse, path, size = item
                batch = state["batch"]
                window.append(("chunk", batch, batch.add(bid, size), sparse, path))
                if batch.full():
                    inflight.append(self._submit(batch))
                    state["batch"] = _Batch()
            if open_lanes:
                for lane in list(open_lanes.values()):
                    if lane is not collecting:
                        yield from feed(lane, False)
            yield from over()
        for lane in list(open_lanes.values()):
            yield from feed(lane, True)
        while window:
            rec, state["failed"] = self._pop(window, state["failed"])
            if rec is not None:
                yield rec

    def _submit(self, batch: _Batch) -> _Batch:
        batch.future = self.pool.submit(self._read_batch, batch.ids)
        return batch

    def _read_batch(self, ids: list[bytes]) -> list[bytes | CairnError]:
        if self.read_blobs is not None:
            return self.read_blobs(ids)
        out: list[bytes | CairnError] = []
        for bid in ids:
            try:
                out.append(self.read_blob(bid))
            except UnavailableError:
                raise  # the store does not answer: the restore stops, not each file in turn
            except CairnError as e:
                out.append(e)
        return out

    def _pop(self, window: deque, failed: bytes | None) -> tuple[Record | None, bytes | None]:
        item = window.popleft()
        kind = item[0]
        if kind == "meta":
            return item[1], None
        if kind == "lend":
            lane = item[1]
            return (None if lane.failed else LaneEnd(lane.path)), failed
        if kind == "lchunk":
            _, batch, i, lane, size = item
            lane.ahead -= size
            if lane.failed:
                return None, failed
            if batch.future is None:
                self._submit(batch)
            data = batch.future.result()[i]
            if isinstance(data, CairnError):
                lane.failed = True
                return LaneEnd(lane.path, failed=data.message), failed
            return LaneData(lane.path, data), failed
        _, batch, i, sparse, path = item
        if failed == path:
            return None, failed
        if batch.future is None:  # a batch not submitted yet (the last one, or read early)
            self._submit(batch)
        data = batch.future.result()[i]
        if isinstance(data, CairnError):
            return Failed(f"{data.message}"), path
        if sparse and data and not (data[0] or data[-1]) and data.count(0) == len(data):
            return Hole(len(data)), None
        return Data(data), None


class _Lane:
    """A large file whose content is fed between the other entries: its chunks not yet fed."""

    __slots__ = ("path", "chunks", "ahead", "failed")

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.chunks: deque[tuple[bytes, int]] = deque()  # (id, size) not yet in the window
        self.ahead = 0  # bytes in the window, read or being read, not yet handed on
        self.failed = False


class _Batch:
    """Chunk ids read by one pool task, in stream order."""

    __slots__ = ("ids", "size", "future")

    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self.size = 0
        self.future: Future | None = None

    def add(self, bid: bytes, size: int) -> int:
        self.ids.append(bid)
        self.size += size
        return len(self.ids) - 1

    def full(self) -> bool:
        return len(self.ids) >= BATCH_CHUNKS or self.size >= BATCH_BYTES


def drain(fut: Future) -> None:
    """Wait for a future, ignoring its outcome (used when a stream is abandoned)."""
    try:
        fut.result()
    except Exception:  # noqa: BLE001 - outcome irrelevant once abandoned
        pass


def set_chunks(load_tree: TreeLoader, roots: list[bytes]) -> set[bytes]:
    """Every chunk id the trees under `roots` reference (for read_chunks' membership check)."""
    out: set[bytes] = set()
    todo, seen = [r for r in roots if r], set()
    while todo:
        tree = todo.pop()
        if tree in seen:
            continue
        seen.add(tree)
        for e in load_tree(tree):
            if e.kind == "file":
                out.update(e.chunks)
            elif e.subtree:
                todo.append(e.subtree)
    return out


def read_chunks(ids: list[bytes], allowed: set[bytes],
                read_blobs: Callable[[list[bytes]], list[bytes | CairnError]], chunk_size: Callable[[bytes], int],
                pool: ThreadPoolExecutor, errors: bool = False) -> Iterator[bytes | CairnError]:
    """The plaintext of each of `ids`, in order. A chunk that cannot be read raises its
    CairnError, or with `errors` is yielded as that error in its place (a delta restore then
    mends every file but the ones that need it); an UnavailableError always raises.

    The chunks are read with `read_blobs` (Repository.read_blobs) in batches of up to
    BATCH_CHUNKS or BATCH_BYTES (`chunk_size`: the size a chunk's index entry gives), at most
    MAX_BATCHES ahead in `pool`, as a restore's stream reads them.

    Every id must be one of `allowed` (the set's chunks), checked before anything is read."""
    for bid in ids:
        if bid not in allowed:
            raise NotFoundError(f"chunk '{bid.hex()[:12]}' is not part of the set")
    yield from _read_chunk_batches(ids, read_blobs, chunk_size, pool, errors)


def _read_chunk_batches(ids: list[bytes], read_blobs: Callable[[list[bytes]], list[bytes | CairnError]],
                        chunk_size: Callable[[bytes], int], pool: ThreadPoolExecutor,
                        errors: bool) -> Iterator[bytes | CairnError]:
    def batches() -> Iterator[list[bytes]]:
        batch = _Batch()
        for bid in ids:
            try:
                size = chunk_size(bid)
            except CairnError:
                size = 0  # not indexed: read_blobs names the error in its place
            batch.add(bid, size)
            if batch.full():
                yield batch.ids
                batch = _Batch()
        if batch.ids:
            yield batch.ids

    def results(f: Future) -> Iterator[bytes | CairnError]:
        for got in f.result():
            if isinstance(got, CairnError) and (not errors or isinstance(got, UnavailableError)):
                raise got
            yield got

    futures: deque[Future] = deque()
    try:
        for batch in batches():
            futures.append(pool.submit(read_blobs, batch))
            if len(futures) > MAX_BATCHES:
                yield from results(futures.popleft())
        while futures:
            yield from results(futures.popleft())
    finally:
        for f in futures:
            f.cancel()
