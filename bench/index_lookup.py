"""The in-memory chunk index: lookup and load speed and memory, against the dict it replaced.

  python bench/index_lookup.py [--blobs 1000000] [--rounds 3]

Builds the index of `--blobs` random blob ids in packs of 2,000 (as loading index files
does), then times `in` (half hits, half misses) and `get` over 100,000 ids, for
store/content/index.py's `Index` (filled pack by pack with `add_pack`, and built at once with
`IndexBuilder`, as a repository loads its index files) and for a dict of 32-byte keys to one packed integer (the layout
before, kept here as the reference). Then loads the same blobs from index files of 16 packs,
the way a repository opens, the old way and the new. Prints the best of `--rounds` per figure,
the bytes per blob each holds (sizes of the objects it keeps) and the load average: the machine
may be shared.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cairn.store.content.index import Index, IndexBuilder, decode_index, encode_index, read_index  # noqa: E402
from cairn.store.content.packs import PackEntry  # noqa: E402


class DictIndex:
    """The previous layout: blob id -> one packed integer, in a dict."""

    def __init__(self) -> None:
        self.map: dict[bytes, int] = {}
        self.packs: list[str] = []

    def add_pack(self, pack: str, entries: list[PackEntry]) -> None:
        n = len(self.packs)
        self.packs.append(pack)
        for e in entries:
            self.map[e.id] = ((((n << 32 | e.offset) << 32 | e.stored_len) << 32 | e.raw_len) << 8) | e.codec

    def __contains__(self, bid: object) -> bool:
        return bid in self.map

    def get(self, bid: bytes) -> tuple | None:
        v = self.map.get(bid)
        return None if v is None else (self.packs[v >> 104], v >> 72 & 0xFFFFFFFF)

    def memory_bytes(self) -> int:
        k, v = next(iter(self.map.items()))
        return sys.getsizeof(self.map) + len(self.map) * (sys.getsizeof(k) + sys.getsizeof(v))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blobs", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rnd = random.Random(1)
    packs = [(rnd.randbytes(32).hex(), [PackEntry(rnd.randbytes(32), 0, 1, 1000, 900, 8 + i) for i in range(2000)])
             for _ in range(args.blobs // 2000)]
    hits = [e.id for _, es in packs[::7] for e in es[::13]][:100_000]
    misses = [rnd.randbytes(32) for _ in hits]
    best: dict[str, list[float]] = {}
    held: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, cls in (("dict (before)", DictIndex), ("Index", Index), ("IndexBuilder", IndexBuilder)):
            t = time.perf_counter()
            idx = cls()
            for p, es in packs:
                idx.add_pack(p, es)
            if isinstance(idx, IndexBuilder):
                idx = idx.finish()
            load = time.perf_counter() - t
            t = time.perf_counter()
            for b in hits:
                b in idx  # noqa: B015
            for b in misses:
                b in idx  # noqa: B015
            contains = (time.perf_counter() - t) / (2 * len(hits)) * 1e6
            t = time.perf_counter()
            for b in hits:
                idx.get(b)
            get = (time.perf_counter() - t) / len(hits) * 1e6
            now = [load, contains, get]
            old = best.get(name, now)
            best[name] = [min(a, b) for a, b in zip(old, now, strict=True)]
            held[name] = idx.memory_bytes() / args.blobs
            del idx
    print(f"{args.blobs} blobs, best of {args.rounds}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, (load, contains, get) in best.items():
        print(f"  {name:14} load {load:5.2f} s   in {contains:5.2f} us   get {get:5.2f} us   "
              f"{held[name]:6.1f} bytes/blob held")
    # What a repository does when it opens: verify and load index files of 16 packs each, as
    # before (decode_index, an object per entry, then Index.add_pack) and now (read_index and
    # IndexBuilder.add_file straight from the bytes, then finish).
    files = [encode_index(dict(packs[i:i + 16])) for i in range(0, len(packs), 16)]
    del packs
    paths: dict[str, float] = {}
    for _ in range(args.rounds):
        t = time.perf_counter()
        idx = Index()
        for name, data in files:
            for pack, entries in decode_index(name, data).items():
                idx.add_pack(pack, entries)
        paths["decode_index + Index.add_pack"] = min(paths.get("decode_index + Index.add_pack", 1e9),
                                                     time.perf_counter() - t)
        del idx
        t = time.perf_counter()
        builder = IndexBuilder()
        for name, data in files:
            builder.add_file(read_index(name, data))
        idx = builder.finish()
        paths["read_index + IndexBuilder.add_file"] = min(paths.get("read_index + IndexBuilder.add_file", 1e9),
                                                          time.perf_counter() - t)
        del idx
    print(f"  loading {len(files)} index files:")
    for name, secs in paths.items():
        print(f"    {name:36} {secs:5.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
