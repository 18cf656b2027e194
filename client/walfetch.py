"""wal-fetch with a prefetch spool: recovery is not bound by one daemon round trip per segment.

PostgreSQL runs `restore_command` once per WAL file, one at a time. When it asks for segment
S, `cairn wal-fetch` also makes sure a prefetcher runs: one background process per spool that
keeps the next `--prefetch` segments after the latest one asked for (same timeline) in
`pg_wal/cairn-prefetch/`, fetching several at once over one channel. On the daemon's host,
when the prefetcher runs as root or the daemon's user (restore-db starts it so), the daemon
writes each segment into a claim file the prefetcher made (GrpcFetcher): no segment crosses
gRPC (over 1 GB of WAL the machine's busy CPU during recovery fell from 13-15 to 9.4
seconds); otherwise segments are streamed. A later `wal-fetch` whose
segment is in the spool moves it into place with a rename and never talks to the daemon (nor
imports grpc); the restore_command restore-db writes tries a plain `mv` from the spool even
before starting the client. The prefetcher notices segments taken from the spool either way.

What always holds:
- the spool is bounded: it holds at most `count` segments, those right after the latest one
  asked for (and that one while it is being taken); anything else is removed as the window moves;
- a spooled segment is complete: it is written under a temporary name, checked to be one
  segment long, and only then renamed into the spool; a partial file is never handed out;
- a spooled segment survives only the boot it was written in: the spool is
  `pg_wal/cairn-prefetch/<boot id>/` (the kernel's random boot id), so after a crash of the
  machine, content the kernel had not yet written back is never handed to recovery (the
  restore_command reads the boot id with a shell builtin). Segments are therefore not fsynced
  one by one, which kept the prefetcher behind recovery. Where no boot id can be read, the
  spool is `pg_wal/cairn-prefetch/` and every segment is fsynced before its rename. A
  prefetcher removes the spools of earlier boots when it starts;
- at most one prefetcher runs per spool (an flock on `.lock`); it stops at the first segment
  the archive does not hold yet (the next request starts it again), and after IDLE_SECONDS
  without a request it removes the spool and exits, so nothing stays behind after recovery;
- a segment not in the spool is fetched directly, as without prefetch;
- restore-db may start the prefetcher itself (`prime`) for a recovery past its set; the spool
  then belongs to the data directory's owner, and a prefetcher run by root gives every file it
  spools to that owner (PostgreSQL reuses restored segments as its own files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from cairn.fsio import claims
from cairn.walnames import OWN_POINT, WAL_MARKER

SPOOL_DIR = "cairn-prefetch"
DEFAULT_PREFETCH = 8
PARALLEL = 4
IDLE_SECONDS = 30.0
POLL_SECONDS = 0.02
LOCK = ".lock"
WANTED = ".wanted"
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_BOOT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_segment(name: str) -> bool:
    return bool(_SEGMENT.match(name))


def boot_id() -> str:
    """The kernel's boot id (changes at every boot), or '' where it cannot be read."""
    try:
        with open(BOOT_ID_FILE, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, ValueError):
        return ""
    return text if _BOOT_ID.match(text) else ""


def spool_of(dest: str) -> str:
    """The spool beside the file restore_command writes (pg_wal/RECOVERYXLOG):
    pg_wal/cairn-prefetch/<boot id> (pg_wal/cairn-prefetch where no boot id can be read)."""
    base = os.path.join(os.path.dirname(os.path.abspath(dest)), SPOOL_DIR)
    boot = boot_id()
    return os.path.join(base, boot) if boot else base


def boot_keyed(spool: str) -> bool:
    """Whether `spool` is discarded by a reboot (so its segments need no fsync)."""
    boot = boot_id()
    return bool(boot) and os.path.basename(spool) == boot and \
        os.path.basename(os.path.dirname(spool)) == SPOOL_DIR


def _remove_other_boots(spool: str) -> None:
    """Remove the spools earlier boots left in pg_wal/cairn-prefetch/ (never read again)."""
    if not boot_keyed(spool):
        return
    parent, mine = os.path.split(spool)
    with contextlib.suppress(OSError):
        for entry in os.listdir(parent):
            if entry != mine and _BOOT_ID.match(entry):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


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


def start_prefetcher(spool: str, count: int, global_args: list[str], namespace: str = "",
                     env: dict[str, str] | None = None) -> None:
    """Start the spool's prefetcher in the background unless one runs; it fetches from WAL name
    space `namespace` (the cluster's system identifier; "" the flat one), with environment `env`
    (None: this one's; a token given on the command line goes there, never into argv)."""
    if count <= 0 or prefetcher_running(spool):
        return
    argv = [sys.executable, "-m", "cairn.client.cli", *global_args, "wal-prefetch", spool, "--count", str(count)]
    if namespace:
        argv += ["--system-id", namespace]
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True, cwd="/", env=env)


def spool_owner(spool: str) -> tuple[int, int] | None:
    """(uid, gid) the prefetcher gives what it spools: the spool's owner when root runs it and
    the spool is not root's (restore-db primed it for the data directory's owner), else None."""
    if os.geteuid() != 0:
        return None
    st = os.stat(spool)
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def prime(data_dir: str, count: int, global_args: list[str], namespace: str = "",
          env: dict[str, str] | None = None) -> bool:
    """Start the prefetcher of a data directory restore-db just wrote for a recovery past the
    set (a target time or LSN), at the last WAL segment restore-db placed in pg_wal/: the first
    segments recovery asks the archive for are then spooled as well, not fetched one by one
    while the prefetcher starts. The spool belongs to the data directory's owner: restore_command
    runs as that user and renames segments out of it, and PostgreSQL later reuses them as its
    own files, so a prefetcher run by root gives every file it spools to the spool's owner
    (spool_owner). False when there is nothing to prime (no placed WAL, or recovery stops
    inside it)."""
    pg_wal = os.path.join(data_dir, "pg_wal")
    if count <= 0 or os.path.exists(os.path.join(pg_wal, OWN_POINT)):
        return False
    try:
        with open(os.path.join(pg_wal, WAL_MARKER), encoding="ascii") as f:
            segments = [n for n in f.read().split() if is_segment(n)]
    except (OSError, ValueError):
        return False
    if not segments:
        return False
    last = segments[-1]
    size = os.path.getsize(os.path.join(pg_wal, last))
    st = os.stat(data_dir)
    owner = (st.st_uid, st.st_gid)
    dest = os.path.join(pg_wal, "RECOVERYXLOG")
    spool = spool_of(dest)
    os.makedirs(spool, mode=0o700, exist_ok=True)
    _write_wanted(spool, last, size)
    lock = os.path.join(spool, LOCK)
    os.close(os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    if os.geteuid() == 0 and owner[0] != 0:
        made = [os.path.dirname(spool)] if boot_keyed(spool) else []  # pg_wal/cairn-prefetch
        for path in (*made, spool, os.path.join(spool, WANTED), lock):
            os.chown(path, *owner)
    start_prefetcher(spool, count, global_args, namespace, env=env)
    return True


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
        _remove_other_boots(spool)
        return _loop(spool, count, fetch, idle, spool_owner(spool))
    finally:
        os.close(fd)


def _loop(spool: str, count: int, fetch: Callable[[str, str], bool], idle: float,
          owner: tuple[int, int] | None = None) -> int:
    last_change = time.monotonic()
    seen: tuple[str, int] | None = None
    exhausted: str | None = None  # the first name the archive lacked, for the current window
    placed: set[str] = set()  # segments this prefetcher put in the spool
    inflight: dict[str, Future[bool]] = {}  # fetches running now: a new one starts as soon as one ends
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="wal-prefetch") as pool:
        while True:
            for n in [n for n, f in inflight.items() if f.done()]:
                if inflight.pop(n).result():
                    placed.add(n)
                elif seen is not None and n > seen[0] and (exhausted is None or n < exhausted):
                    exhausted = n
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
                    wait(list(inflight.values()))
                    _remove_spool(spool)
                return 0
            window = next_names(seen[0], count, seen[1])
            # the segment asked for stays while it is being taken (take() names it first)
            placed.difference_update(_trim(spool, {seen[0], *window}))
            if exhausted is not None and exhausted <= window[0] and not inflight:
                return 0  # the very next segment is not archived yet: the next request retries
            # a name still in `placed` is not missing even if gone right now: it was just taken
            missing = [n for n in window if n not in inflight and n not in placed
                       and not os.path.exists(os.path.join(spool, n))]
            if exhausted is not None:
                missing = [n for n in missing if n < exhausted]
            for n in missing[:max(0, PARALLEL - len(inflight))]:
                inflight[n] = pool.submit(_fetch_one, spool, n, seen[1], fetch, owner)
            if inflight:
                wait(list(inflight.values()), timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            else:
                time.sleep(POLL_SECONDS)


def _fetch_one(spool: str, name: str, size: int, fetch: Callable[[str, str], bool],
               owner: tuple[int, int] | None = None) -> bool:
    tmp = os.path.join(spool, f".{name}.tmp")
    try:
        if not fetch(name, tmp):
            return False
        if os.path.getsize(tmp) != size:
            return False
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, os.path.join(spool, name))
        return True
    except Exception:  # noqa: BLE001 - a failed prefetch only means a direct fetch later
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _trim(spool: str, keep: set[str]) -> list[str]:
    removed = []
    for entry in os.listdir(spool):
        if is_segment(entry) and entry not in keep:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(spool, entry))
                removed.append(entry)
    return removed


def _remove_spool(spool: str) -> None:
    for entry in os.listdir(spool):
        if entry != LOCK:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(spool, entry))
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(spool, LOCK))
    with contextlib.suppress(OSError):
        os.rmdir(spool)
    if boot_keyed(spool):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(spool))  # pg_wal/cairn-prefetch, once no spool is left in it


class GrpcFetcher:
    """fetch(name, path) over a connection from WAL name space `namespace`: False when the
    archive does not hold `name`. With `sync` the file is fsynced (a spool that a reboot does
    not discard needs that). With `local`, over a Unix socket, the daemon is first asked to
    write the segment itself into a claim file beside `path` (no data crosses gRPC; the daemon
    accepts only a claim of root or its own user); once it refuses, segments are streamed.
    `written_by_daemon` and `streamed` count the segments fetched either way."""

    def __init__(self, conn: Any, pb: Any, grpc: Any, namespace: str = "", sync: bool = True,
                 local: bool = True) -> None:
        self.conn, self.pb, self.grpc, self.namespace, self.sync = conn, pb, grpc, namespace, sync
        self.local = local and bool(getattr(getattr(conn, "endpoint", None), "socket", None))
        self.written_by_daemon = self.streamed = 0

    def __call__(self, name: str, path: str) -> bool:
        try:
            if not (self.local and self._by_daemon(name, path)):
                self._stream(name, path)
        except self.grpc.RpcError as exc:
            if exc.code() == self.grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def _stream(self, name: str, path: str) -> None:
        with open(path, "wb") as f:
            for reply in self.conn.stub.WalFetch(self.pb.WalFetchRequest(name=name, wal_namespace=self.namespace)):
                f.write(reply.data)
            f.flush()
            if self.sync:
                os.fsync(f.fileno())
        self.streamed += 1

    def _by_daemon(self, name: str, path: str) -> bool:
        """True: `path` holds the segment, written by the daemon; False: it refused (stream it)."""
        nonce = secrets.token_hex(16)
        claim = f"{os.path.abspath(path)}{claims.CLAIM_PREFIX}{nonce}"
        claims.make_claim(claim, nonce)
        try:
            request = self.pb.WalFetchRequest(name=name, wal_namespace=self.namespace, local_claim=nonce,
                                              target_path=os.fsencode(claim))
            try:
                replies = list(self.conn.stub.WalFetch(request))
            except self.grpc.RpcError as exc:
                if exc.code() == self.grpc.StatusCode.FAILED_PRECONDITION and "local write" in (exc.details() or ""):
                    self.local = False
                    return False
                raise
            if not replies or not replies[0].local_bytes:  # a daemon that streams anyway: take what it sent
                with open(claim, "r+b") as f:
                    f.truncate(0)
                    for reply in replies:
                        f.write(reply.data)
                self.local = False
                self.streamed += 1
            else:
                self.written_by_daemon += 1
            if self.sync:
                fsync_path(claim)
            os.replace(claim, path)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(claim)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
