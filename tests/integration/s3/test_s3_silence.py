"""A silent object store (requests taken, nothing answered) fails each operation once it has
waited `stall_timeout` seconds, all attempts together, with one line naming the endpoint and the
wait; a store silent for less than that is asked again; a transfer that keeps moving is never
cut however long it takes (FaultProxy in front of moto)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cairn.store.errors import UnavailableError

STALL = 4.0  # the bound the backends below are given (each request: 1 s)
DEADLINE = 15.0  # what a bounded operation must finish within (the S3 client's own: minutes)


def bounded(fn: Callable[[], Any], deadline: float = DEADLINE) -> tuple[Any, BaseException | None, float]:
    """Run `fn` in a thread: (result, error, seconds). An AssertionError if it is still running
    after `deadline` (left to end on its own: the proxy's close releases it)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    started = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(deadline)
    if t.is_alive():
        raise AssertionError(f"the operation was still waiting on a silent store after {deadline:.0f}s")
    return out.get("result"), out.get("error"), time.monotonic() - started


def test_a_read_from_a_silent_store_fails_within_the_bound_naming_the_endpoint(faulty):
    proxy, make = faulty
    b = make(stall_timeout=STALL)
    b.put("packs", "ab" * 32, b"x" * 100)
    proxy.stall()
    _, error, took = bounded(lambda: b.get("packs", "ab" * 32))
    assert isinstance(error, UnavailableError), error
    assert str(error) == (f"unable to read packs object '{'ab' * 4}..' at {b.location()}: the object store at "
                          f"{proxy.endpoint} did not answer within 4 s"), str(error)
    assert STALL <= took < STALL + 3, took
    proxy.resume()
    assert b.get("packs", "ab" * 32) == b"x" * 100  # the store is back: the same backend works again


@pytest.mark.parametrize("op", ["list", "put", "stat"])
def test_every_kind_of_operation_is_bounded(faulty, op):
    proxy, make = faulty
    b = make(stall_timeout=STALL)
    proxy.stall()
    call = {"list": lambda: list(b.list("sets")), "put": lambda: b.put("sets", "s1", b"set"),
            "stat": lambda: b.stat("sets", "s1")}[op]
    _, error, took = bounded(call)
    assert isinstance(error, UnavailableError) and "did not answer within 4 s" in str(error), error
    assert took < STALL + 3, took
    proxy.resume()


def test_opening_a_silent_store_fails_within_the_bound(faulty):
    proxy, make = faulty
    proxy.stall()
    _, error, took = bounded(lambda: make(stall_timeout=STALL))
    assert isinstance(error, UnavailableError), error
    assert str(error).startswith("unable to open the repository at s3://") and str(error).endswith(
        f"the object store at {proxy.endpoint} did not answer within 4 s"), str(error)
    assert STALL <= took < STALL + 3, took
    proxy.resume()


def test_a_store_silent_for_less_than_the_bound_is_asked_again(faulty):
    proxy, make = faulty
    b = make(stall_timeout=8.0)  # each request waits 2 s for an answer
    b.put("packs", "cd" * 32, b"y" * 100)
    proxy.add("GET", "stall", times=1, path="/packs/")
    proxy.requests.clear()
    result, error, _ = bounded(lambda: b.get("packs", "cd" * 32))
    assert error is None and result == b"y" * 100, error
    assert len(proxy.requests) == 2, proxy.requests  # the silent GET, then the one answered


def test_a_slow_transfer_that_keeps_moving_is_not_cut(faulty):
    """Its body takes over twice the bound to arrive, a piece every 0.4 s: never silent for as
    long as one request's timeout (1 s), so it completes."""
    proxy, make = faulty
    b = make(stall_timeout=STALL)
    data = bytes(range(256)) * 128  # 32 KiB: 32 pieces of 1 KiB
    b.put("packs", "ef" * 32, data)
    proxy.add("GET", "trickle", times=1, path="/packs/", delay=0.4, piece=1024)
    proxy.requests.clear()
    result, error, took = bounded(lambda: b.get("packs", "ef" * 32), deadline=30)
    assert error is None and result == data, error
    assert took > 2 * STALL, took  # it really took longer than the bound
    assert len(proxy.requests) == 1, proxy.requests  # and was not cut and retried


def test_the_bound_is_validated():
    from cairn.store.errors import BackendError
    from cairn.store.storage.s3 import S3Backend

    with pytest.raises(BackendError, match="invalid S3 stall timeout 0: expected above zero"):
        S3Backend("b", stall_timeout=0)


def test_an_upload_the_store_stops_reading_fails_within_the_bound(faulty):
    """A pack larger than the socket buffers: sending it blocks when the store stops reading,
    which is silence too (botocore reports it as a closed connection, not a timeout)."""
    proxy, make = faulty
    b = make(stall_timeout=STALL)
    proxy.stall()
    _, error, took = bounded(lambda: b.put("packs", "12" * 32, b"p" * (32 * 2**20)))
    assert isinstance(error, UnavailableError), error
    assert str(error).endswith(f"the object store at {proxy.endpoint} did not answer within 4 s"), str(error)
    assert took < STALL + 3, took
    proxy.resume()
