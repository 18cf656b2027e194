"""wal-fetch with a prefetch spool: recovery is not bound by one daemon round trip per segment.

PostgreSQL runs `restore_command` once per WAL file, one at a time. When it asks for segment
S, `cairn wal-fetch` also makes sure a prefetcher runs: one background process per spool that
keeps the next `--prefetch` segments after the latest one asked for (same timeline) in
`pg_wal/cairn-prefetch/`, fetching several at once over one channel. A later `wal-fetch` whose
segment is in the spool moves it into place with a rename and never talks to the daemon (nor
imports grpc); the restore_command restore-db writes tries a plain `mv` from the spool even
before starting the client. The prefetcher notices segments taken from the spool either way.

What always holds:
- the spool is bounded: it holds at most `count` segments, those right after the latest one
  asked for; anything else in it is removed as the window moves;
- a spooled segment is complete: it is written under a temporary name, flushed, checked to be
  one segment long, and only then renamed into the spool; a partial file is never handed out;
- at most one prefetcher runs per spool (an flock on `.lock`); it stops at the first segment
  the archive does not hold yet (the next request starts it again), and after IDLE_SECONDS
  without a request it removes the spool and exits, so nothing stays behind after recovery;
- a segment not in the spool is fetched directly, as without prefetch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SPOOL_DIR = "cairn-prefetch"
DEFAULT_PREFETCH = 8
PARALLEL = 4
IDLE_SECONDS = 30.0
POLL_SECONDS = 0.02
LOCK = ".lock"
WANTED = ".wanted"
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


def is_segment(name: str) -> bool:
    return bool(_SEGMENT.match(name))


def spool_of(dest: str) -> str:
    """The spool beside the file restore_command writes (pg_wal/RECOVERYXLOG): pg_wal/cairn-prefetch."""
    return os.path.join(os.path.dirname(os.path.abspath(dest)), SPOOL_DIR)


def next_names(name: str, count: int, segment_size: int) -> list[str]:
    """The `count` segment names after `name` on its timeline."""
    per = 0x100000000 // segment_size
    tli, segno = name[:8], int(name[8:16], 16) * per + int(name[16:24], 16)
    return [f"{tli}{(segno + i) // per:08X}{(segno + i) % per:08X}" for i in range(1, count + 1)]


def _write_wanted(spool: str, name: str, segment_size: int) -> None:
    tmp = os.path.join(spool, f"{WANTED}.{os.getpid()}")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{name} {segment_size}\n")
    os.replace(tmp, os.path.join(spool, WANTED))


def _read_wanted(spool: str) -> tuple[str, int] | None:
    try:
        with open(os.path.join(spool, WANTED), encoding="ascii") as f:
            name, size = f.read().split()
        return (name, int(size)) if is_segment(name) and int(size) > 0 else None
    except (OSError, ValueError):
        return None


def take(name: str, dest: str, wait: float = 0.0) -> bool:
    """Move spooled segment `name` to `dest`; False when the spool does not hold it. With
    `wait`, a segment the prefetcher is fetching right now is waited for (up to that long)."""
    spool = spool_of(dest)
    src = os.path.join(spool, name)
    end = time.monotonic() + wait
    while True:
        try:
            size = os.stat(src).st_size
            break
        except FileNotFoundError:
            if time.monotonic() >= end or not os.path.exists(os.path.join(spool, f".{name}.tmp")) \
                    or not prefetcher_running(spool):  # a leftover of a killed prefetcher is no promise
                return False
            time.sleep(POLL_SECONDS)
    with contextlib.suppress(OSError):  # first, so the prefetcher never fetches `name` again
        _write_wanted(spool, name, size)
    try:
        os.replace(src, dest)
    except FileNotFoundError:
        return False
    return True


def note_request(name: str, dest: str, segment_size: int) -> None:
    """Record the segment recovery asked for (the prefetcher's window starts after it)."""
    spool = spool_of(dest)
    os.makedirs(spool, mode=0o700, exist_ok=True)
    _write_wanted(spool, name, segment_size)


def prefetcher_running(spool: str) -> bool:
    try:
        fd = os.open(os.path.join(spool, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return True  # cannot tell: do not start another
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def start_prefetcher(spool: str, count: int, global_args: list[str], namespace: str = "") -> None:
    """Start the spool's prefetcher in the background unless one runs; it fetches from WAL name
    space `namespace` (the cluster's system identifier; "" the flat one)."""
    if count <= 0 or prefetcher_running(spool):
        return
    argv = [sys.executable, "-m", "cairn.client.cli", *global_args, "wal-prefetch", spool, "--count", str(count)]
    if namespace:
        argv += ["--system-id", namespace]
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True, cwd="/")


def run_prefetcher(spool: str, count: int, fetch: Callable[[str, str], bool],
                   idle: float = IDLE_SECONDS) -> int:
    """The prefetcher's loop (see the module docstring). `fetch(name, path)` writes segment
    `name` to `path` and returns False when the archive does not hold it."""
    fd = os.open(os.path.join(spool, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return 0  # another one runs
    try:
        return _loop(spool, count, fetch, idle)
    finally:
        os.close(fd)


def _loop(spool: str, count: int, fetch: Callable[[str, str], bool], idle: float) -> int:
    last_change = time.monotonic()
    seen: tuple[str, int] | None = None
    exhausted: str | None = None  # the first name the archive lacked, for the current window
    placed: set[str] = set()  # segments this prefetcher put in the spool
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="wal-prefetch") as pool:
        while True:
            wanted = _read_wanted(spool)
            # a placed segment that is gone was taken (also by restore_command's own `mv`): the
            # window moves past the newest one taken
            taken = sorted(n for n in placed if not os.path.exists(os.path.join(spool, n)))
            placed.difference_update(taken)
            if taken and wanted is not None and taken[-1][:8] == wanted[0][:8] and taken[-1] > wanted[0]:
                wanted = (taken[-1], wanted[1])
                with contextlib.suppress(OSError):
                    _write_wanted(spool, *wanted)
            if wanted != seen:
                seen, last_change, exhausted = wanted, time.monotonic(), None
            if seen is None or time.monotonic() - last_change > idle:
                if seen is not None:  # recovery has moved on or ended: leave nothing behind
                    _remove_spool(spool)
                return 0
            window = next_names(seen[0], count, seen[1])
            _trim(spool, set(window))
            missing = [n for n in window if not os.path.exists(os.path.join(spool, n))]
            if exhausted is not None:
                missing = [n for n in missing if n < exhausted]
            if missing:
                size = seen[1]
                results = list(pool.map(lambda n, size=size: _fetch_one(spool, n, size, fetch), missing))
                placed.update(n for n, ok in zip(missing, results, strict=True) if ok)
                lacking = [n for n, ok in zip(missing, results, strict=True) if not ok]
                if lacking:
                    exhausted = min(lacking)
                    if exhausted <= window[0]:
                        return 0  # the very next segment is not archived yet: the next request retries
                continue
            time.sleep(POLL_SECONDS)


def _fetch_one(spool: str, name: str, size: int, fetch: Callable[[str, str], bool]) -> bool:
    tmp = os.path.join(spool, f".{name}.tmp")
    try:
        if not fetch(name, tmp):
            return False
        if os.path.getsize(tmp) != size:
            return False
        os.replace(tmp, os.path.join(spool, name))
        return True
    except Exception:  # noqa: BLE001 - a failed prefetch only means a direct fetch later
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _trim(spool: str, keep: set[str]) -> None:
    for entry in os.listdir(spool):
        if is_segment(entry) and entry not in keep:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(spool, entry))


def _remove_spool(spool: str) -> None:
    for entry in os.listdir(spool):
        if entry != LOCK:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(spool, entry))
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(spool, LOCK))
    with contextlib.suppress(OSError):
        os.rmdir(spool)


def grpc_fetcher(conn: Any, pb: Any, grpc: Any, namespace: str = "") -> Callable[[str, str], bool]:
    """fetch(name, path) over a connection from WAL name space `namespace`: False when the
    archive does not hold `name`."""

    def fetch(name: str, path: str) -> bool:
        try:
            with open(path, "wb") as f:
                for reply in conn.stub.WalFetch(pb.WalFetchRequest(name=name, wal_namespace=namespace)):
                    f.write(reply.data)
                f.flush()
                os.fsync(f.fileno())
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    return fetch
