"""Keeping resident memory low under glibc's allocator.

glibc gives busy threads their own malloc arenas and keeps freed memory in them; with the
store's reader, compressor and upload threads that adds tens of MB of resident memory for no
benefit. `limit_arenas` caps the arenas of this process (as MALLOC_ARENA_MAX=2 would) and
`release_free_memory` hands freed memory back to the OS. Both are no-ops off glibc.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

M_ARENA_MAX = -8  # mallopt parameter from glibc's malloc.h
ARENAS = 2


def _libc_fn(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


_TRIM = _libc_fn("malloc_trim")
_MALLOPT = _libc_fn("mallopt")
_limited = False


def limit_arenas() -> None:
    """Cap glibc malloc arenas for this process (once; arenas made before are kept)."""
    global _limited
    if _MALLOPT is not None and not _limited:
        _MALLOPT(M_ARENA_MAX, ARENAS)
        _limited = True


def release_free_memory() -> None:
    """Hand memory freed by finished chunks back to the OS."""
    if _TRIM is not None:
        _TRIM(0)
