"""The prefetch spool's loop (cairn.client.walfetch) with a fetch function standing in for the
daemon: window, bound, stop at the end of the archive, cleanup when recovery stops asking."""

from __future__ import annotations

import os
import threading
import time

from cairn.client import walfetch

SIZE = 4096


def name(n: int) -> str:
    return f"00000002{0:08X}{n:08X}"


def test_next_names_cross_the_log_boundary() -> None:
    per = 0x100000000 // (16 << 20)
    last = f"00000001{0:08X}{per - 1:08X}"
    assert walfetch.next_names(last, 2, 16 << 20) == [f"00000001{1:08X}{0:08X}", f"00000001{1:08X}{1:08X}"]


def test_loop_keeps_the_window_stops_at_the_end_and_cleans_up(tmp_path) -> None:
    archive = {name(n): os.urandom(SIZE) for n in range(1, 8)}
    fetched: list[str] = []

    def fetch(n: str, path: str) -> bool:
        if n not in archive:
            return False
        fetched.append(n)
        with open(path, "wb") as f:
            f.write(archive[n][: SIZE // 2])  # a partial write first: never visible under its name
            assert not os.path.exists(os.path.join(spool, n))
            f.write(archive[n][SIZE // 2:])
        return True

    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    dest = str(pg_wal / "RECOVERYXLOG")
    spool = walfetch.spool_of(dest)
    walfetch.note_request(name(1), dest, SIZE)
    done = threading.Event()
    t = threading.Thread(target=lambda: (walfetch.run_prefetcher(spool, 3, fetch, idle=2.0), done.set()))
    t.start()
    end = time.monotonic() + 10
    while sorted(e for e in os.listdir(spool) if not e.startswith(".")) != [name(2), name(3), name(4)]:
        assert time.monotonic() < end
        time.sleep(0.01)
    assert walfetch.prefetcher_running(spool)
    for n in (2, 3, 4, 5):
        if n == 3:  # taken by restore_command's plain `mv`, which tells nobody: the window moves anyway
            os.replace(os.path.join(spool, name(n)), dest)
        else:
            assert walfetch.take(name(n), dest)
        assert open(dest, "rb").read() == archive[name(n)]
        end = time.monotonic() + 10
        while True:
            held = sorted(e for e in os.listdir(spool) if not e.startswith("."))
            assert len(held) <= 3
            if held == [x for x in (name(n + 1), name(n + 2), name(n + 3)) if x in archive]:
                break
            assert time.monotonic() < end, held
            time.sleep(0.01)
    assert not walfetch.take(name(9), dest)
    t.join(10)
    assert done.is_set() and not os.path.exists(spool)  # idle: the spool is gone
    assert len(fetched) == len(set(fetched))  # each segment fetched once


def test_a_leftover_partial_file_is_not_waited_for(tmp_path) -> None:
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    dest = str(pg_wal / "RECOVERYXLOG")
    walfetch.note_request(name(1), dest, SIZE)
    spool = walfetch.spool_of(dest)
    open(os.path.join(spool, f".{name(2)}.tmp"), "wb").close()  # a prefetcher killed mid-fetch
    t0 = time.monotonic()
    assert not walfetch.take(name(2), dest, wait=5.0)
    assert time.monotonic() - t0 < 2.0


def test_a_slow_fetch_does_not_hold_back_the_next_ones(tmp_path, monkeypatch) -> None:
    """Fetches run as a pipeline: while one segment is slow, the slots recovery frees are refilled."""
    monkeypatch.setattr(walfetch, "PARALLEL", 2)
    archive = {name(n): os.urandom(SIZE) for n in range(1, 12)}
    slow, started = threading.Event(), threading.Event()

    def fetch(n: str, path: str) -> bool:
        if n == name(5):
            started.set()
            assert slow.wait(20)
        with open(path, "wb") as f:
            f.write(archive[n])
        return True

    dest = str(tmp_path / "RECOVERYXLOG")
    spool = walfetch.spool_of(dest)
    walfetch.note_request(name(1), dest, SIZE)
    t = threading.Thread(target=walfetch.run_prefetcher, args=(spool, 3, fetch, 2.0))
    t.start()
    try:
        def wait_spooled(n: int) -> None:
            end = time.monotonic() + 10
            while not os.path.exists(os.path.join(spool, name(n))):
                assert time.monotonic() < end, f"segment {n} never spooled"
                time.sleep(0.01)

        for n in (2, 3, 4):
            wait_spooled(n)
        assert walfetch.take(name(2), dest)  # frees a slot: segment 5 starts, and stays slow
        assert started.wait(10)
        assert walfetch.take(name(3), dest)  # frees another: 6 must not wait for 5
        wait_spooled(6)
        assert not os.path.exists(os.path.join(spool, name(5)))
    finally:
        slow.set()
        t.join(10)
    assert not t.is_alive()


def test_the_spool_is_named_after_the_boot_and_earlier_boots_are_removed(tmp_path) -> None:
    boot = walfetch.boot_id()
    assert boot, "the kernel's boot id is readable on Linux"
    dest = str(tmp_path / "RECOVERYXLOG")
    spool = walfetch.spool_of(dest)
    assert spool == os.path.join(str(tmp_path), "cairn-prefetch", boot) and walfetch.boot_keyed(spool)
    old = tmp_path / "cairn-prefetch" / "0123abcd-0000-4000-8000-000000000000"
    old.mkdir(parents=True)
    (old / name(2)).write_bytes(b"x" * SIZE)  # written before a crash: maybe never on disk
    assert not walfetch.take(name(2), dest)
    walfetch.note_request(name(1), dest, SIZE)
    walfetch.run_prefetcher(spool, 2, lambda n, p: False, idle=0.1)  # nothing archived: it stops at once
    assert not old.exists()


def test_fsync_only_where_a_reboot_does_not_discard_the_spool(tmp_path, monkeypatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(walfetch.os, "fsync", lambda fd: synced.append(fd))

    class Reply:
        data = b"abc"

    class Stub:
        def WalFetch(self, request):  # noqa: N802 - the gRPC method's name
            return iter([Reply()])

    class Conn:
        stub = Stub()

    class Pb:
        @staticmethod
        def WalFetchRequest(name, wal_namespace=""):  # noqa: N802
            return name

    walfetch.GrpcFetcher(Conn(), Pb, None, sync=False)(name(1), str(tmp_path / "a"))
    assert synced == []
    walfetch.GrpcFetcher(Conn(), Pb, None, sync=True)(name(1), str(tmp_path / "b"))
    assert len(synced) == 1 and (tmp_path / "b").read_bytes() == b"abc"
    assert not walfetch.boot_keyed(str(tmp_path / "cairn-prefetch"))  # the fallback spool: synced
