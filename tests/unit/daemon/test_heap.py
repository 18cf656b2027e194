"""The daemon's allocator settings apply on glibc and never fail elsewhere."""

from __future__ import annotations

import ctypes

from cairn.daemon.runtime import heap


def test_glibc_takes_both_thresholds() -> None:
    assert heap.tune() is True


def test_a_c_library_without_mallopt_is_a_no_op(monkeypatch) -> None:
    def no_libc(*args: object, **kwargs: object) -> object:
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert heap.tune() is False
