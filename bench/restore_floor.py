"""What any restore written in Python can reach on this host, against `cp -a` of the same tree.

  .venv/bin/python bench/restore_floor.py [--rounds 3] [--workdir DIR] [--corpus-script PATH]

Not a benchmark of Cairn: a measure of the floor under issue 12's target (a full restore of the
standard corpus at >= 0.9 of `cp -a`'s speed). The corpus's files are read once, cut into 1 MiB
pieces and compressed with zstd level 1 (the repository's default), all held in memory: no
repository, no pack reads, no index, no metadata, no gRPC. Then, per round and on a new ext4 file
system made for the run (bench/common.py fresh_fs), alternating, each into its own directory:

  cp -a          the tree copied by coreutils (the kernel copies the data; no user-space copy);
  write          the decompressed pieces written (open, write, close per file): the kernel's
                 share of any restore, nothing else;
  restore-1      decompress, hash (blake3) and write each piece, one thread: what a restore must
                 do with its data, with a minimal loop around it;
  restore-2      the same over two threads (files taken in turn), as a restore with two writers;
  pipeline       one thread decompresses and hashes, another writes, a bounded queue between them;
  split-2        two threads, the small files taken in groups and a large file's pieces spread over
                 both (written with pwrite at their offsets), so that no one thread carries the
                 512 MiB file alone: the most parallel arrangement of the same work.

Printed: medians of seconds, each as a fraction of `cp -a`'s speed, and the CPU each way used
(this process's user + system time). The CPU is the bound that no arrangement escapes: on N
cores a way cannot finish sooner than its CPU / N, so `cp -a`'s time / (CPU / N) is the best
fraction of cp's speed that work could reach with perfect parallelism. If that is below 0.9,
no restore that decompresses and verifies its data in Python reaches 0.9 on this host.
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DEFAULT_CORPUS_SCRIPT, DEFAULT_WORKDIR, build_corpus, fresh_fs  # noqa: E402

PIECE = 1 << 20
Stored = list[tuple[str, list[tuple[bytes, bool]]]]  # (relative path, [(bytes, compressed)])
_local = threading.local()


def load(corpus: Path) -> tuple[list[str], Stored, Stored]:
    """(directories, compressed pieces per file, plain pieces per file) of the corpus."""
    cctx = zstandard.ZstdCompressor(level=1)
    dirs, packed, plain = [], [], []
    for dirpath, _, names in os.walk(corpus):
        dirs.append(os.path.relpath(dirpath, corpus))
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            data = Path(path).read_bytes()
            pieces = [data[o:o + PIECE] for o in range(0, len(data), PIECE)] or [b""]
            rel = os.path.relpath(path, corpus)
            stored = []
            for p in pieces:
                c = cctx.compress(p)
                stored.append((c, True) if len(c) < len(p) else (p, False))
            packed.append((rel, stored))
            plain.append((rel, [(p, False) for p in pieces]))
    return dirs, packed, plain


def _data(piece: bytes, compressed: bool) -> bytes:
    if compressed:
        d = getattr(_local, "dctx", None) or zstandard.ZstdDecompressor()
        _local.dctx = d
        piece = d.decompress(piece)
    blake3.blake3(piece).digest()
    return piece


def _write(root: str, rel: str, pieces: list[bytes]) -> None:
    fd = os.open(os.path.join(root, rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for p in pieces:
            os.write(fd, p)
    finally:
        os.close(fd)


def write_only(root: str, stored: Stored) -> None:
    for rel, pieces in stored:
        _write(root, rel, [p for p, _ in pieces])


def restore_one(root: str, stored: Stored) -> None:
    for rel, pieces in stored:
        _write(root, rel, [_data(p, c) for p, c in pieces])


def restore_two(root: str, stored: Stored) -> None:
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda item: _write(root, item[0], [_data(p, c) for p, c in item[1]]), stored, chunksize=16))


def pipeline(root: str, stored: Stored) -> None:
    q: queue.Queue = queue.Queue(64)

    def produce() -> None:
        for rel, pieces in stored:
            q.put((rel, [_data(p, c) for p, c in pieces]))
        q.put(None)

    t = threading.Thread(target=produce)
    t.start()
    while (item := q.get()) is not None:
        _write(root, *item)
    t.join()


def split_two(root: str, stored: Stored) -> None:
    big = [(rel, pieces) for rel, pieces in stored if len(pieces) > 8]
    small = [(rel, pieces) for rel, pieces in stored if len(pieces) <= 8]
    fds = {rel: os.open(os.path.join(root, rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
           for rel, _ in big}

    def run(task: tuple) -> None:
        if task[0] == "range":
            _, rel, first, pieces = task
            offset = first * PIECE
            for p, c in pieces:
                data = _data(p, c)
                os.pwrite(fds[rel], data, offset)
                offset += len(data)
        else:
            for rel, pieces in task[1]:
                _write(root, rel, [_data(p, c) for p, c in pieces])

    tasks: list[tuple] = [("range", rel, i, pieces[i:i + 4]) for rel, pieces in big for i in range(0, len(pieces), 4)]
    tasks += [("files", small[k:k + 16]) for k in range(0, len(small), 16)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run, tasks))
    finally:
        for fd in fds.values():
            os.close(fd)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--corpus-script", type=Path, default=DEFAULT_CORPUS_SCRIPT)
    args = ap.parse_args(argv)
    corpus = args.workdir / "corpus"
    if not corpus.is_dir():
        build_corpus(args.corpus_script, corpus)
    dirs, packed, plain = load(corpus)
    size = sum(len(p) for _, pieces in plain for p, _ in pieces)
    compressed = sum(len(p) for _, pieces in packed for p, _ in pieces)
    print(f"corpus: {len(packed)} files, {size / 1e6:.0f} MB, {compressed / 1e6:.0f} MB compressed; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    ways: dict[str, Callable[[str], None]] = {
        "write": lambda root: write_only(root, plain),
        "restore-1": lambda root: restore_one(root, packed),
        "restore-2": lambda root: restore_two(root, packed),
        "pipeline": lambda root: pipeline(root, packed),
        "split-2": lambda root: split_two(root, packed),
    }
    times: dict[str, list[float]] = {"cp -a": [], **{k: [] for k in ways}}
    cpus: dict[str, list[float]] = {k: [] for k in ways}
    with fresh_fs(args.workdir.resolve(), size * (len(ways) + 1) * args.rounds * 5 // 4 + (1 << 30)) as mnt:
        for r in range(args.rounds):
            subprocess.run(["sync"], check=True)
            t0 = time.perf_counter()
            subprocess.run(["cp", "-a", str(corpus), str(mnt / f"cp-{r}")], check=True)
            times["cp -a"].append(time.perf_counter() - t0)
            for name, way in ways.items():
                root = mnt / f"{name}-{r}"
                for d in dirs:
                    (root / d).mkdir(parents=True, exist_ok=True)
                subprocess.run(["sync"], check=True)
                c0, t0 = _cpu(), time.perf_counter()
                way(str(root))
                times[name].append(time.perf_counter() - t0)
                cpus[name].append(_cpu() - c0)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    cp = statistics.median(times["cp -a"])
    cores = os.cpu_count() or 1
    print(f"medians of {args.rounds} rounds (load average {os.getloadavg()[0]:.1f}; {cores} cores):")
    for name, v in times.items():
        m = statistics.median(v)
        line = f"  {name:10} {m:.3f} s   {cp / m:.2f} of cp -a's speed"
        if name in cpus:
            c = statistics.median(cpus[name])
            line += f"   CPU {c:.3f} s: at best {cp / (c / cores):.2f} of cp's speed on {cores} cores"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
