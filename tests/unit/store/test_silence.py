"""What counts as an object store's silence within one operation (store/storage/silence.py)."""

from __future__ import annotations

import threading

import pytest
from cairn.store.storage import silence as silence_module
from cairn.store.storage.silence import Silence


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(silence_module.time, "monotonic", c)
    return c


def test_timeouts_and_the_waits_between_them_add_up_to_the_bound(clock):
    s = Silence(10.0)
    with s.operation():
        s.attempt()
        clock.now += 4.0
        s.timed_out(TimeoutError(), 4.0)
        assert s.silent() == 4.0 and not s.exhausted()
        clock.now += 1.0  # backoff
        s.attempt()
        assert s.silent() == 5.0
        clock.now += 4.0
        s.timed_out(TimeoutError(), 4.0)
        assert s.silent() == 9.0 and not s.exhausted() and s.exhausted(ahead=1.0)
        s.attempt()
        clock.now += 4.0
        s.timed_out(TimeoutError(), 4.0)
        assert s.exhausted()


def test_a_moving_transfer_counts_only_its_last_silent_timeout(clock):
    s = Silence(10.0)
    with s.operation():
        s.attempt()
        clock.now += 600.0  # ten minutes of bytes, then one socket timeout of silence
        s.timed_out(TimeoutError(), 4.0)
        assert s.silent() == 4.0 and not s.exhausted()


def test_an_answer_starts_the_count_again(clock):
    s = Silence(10.0)
    with s.operation():
        s.attempt()
        clock.now += 8.0
        s.timed_out(TimeoutError(), 8.0)
        clock.now += 1.0
        s.attempt()
        s.answered()
        assert s.silent() == 0.0
        clock.now += 8.0
        s.timed_out(TimeoutError(), 8.0)
        assert not s.exhausted()


def test_one_timeout_seen_by_two_layers_counts_once(clock):
    s = Silence(10.0)
    error = TimeoutError()
    with s.operation():
        s.attempt()
        clock.now += 6.0
        s.timed_out(error, 6.0)
        s.timed_out(error, 6.0)
        assert s.silent() == 6.0


def test_a_nested_operation_shares_the_outer_count_and_a_new_one_starts_at_zero(clock):
    s = Silence(10.0)
    with s.operation():
        s.attempt()
        clock.now += 6.0
        s.timed_out(TimeoutError(), 6.0)
        with s.operation():
            assert s.silent() == 6.0
        assert s.silent() == 6.0
    with s.operation():
        assert s.silent() == 0.0


def test_threads_count_apart(clock):
    s = Silence(10.0)
    seen = []
    with s.operation():
        s.attempt()
        clock.now += 6.0
        s.timed_out(TimeoutError(), 6.0)

        def other() -> None:
            with s.operation():
                seen.append(s.silent())

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert seen == [0.0] and s.silent() == 6.0


def test_the_bound_must_be_above_zero():
    with pytest.raises(ValueError, match="expected above zero"):
        Silence(0)


def test_once_the_bound_is_reached_the_next_operation_ends_at_its_first_silence(clock):
    s = Silence(10.0)
    with s.operation():
        for _ in range(2):
            s.attempt()
            clock.now += 5.0
            s.timed_out(TimeoutError(), 5.0)
        assert s.exhausted()
    with s.operation():  # e.g. releasing a lock after the failed upload
        s.attempt()
        clock.now += 5.0
        s.timed_out(TimeoutError(), 5.0)
        assert s.exhausted()
    with s.operation():
        s.attempt()
        s.answered()  # the store is back
    with s.operation():
        s.attempt()
        clock.now += 5.0
        s.timed_out(TimeoutError(), 5.0)
        assert not s.exhausted()
