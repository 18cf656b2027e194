"""The one mapping from Cairn's domain errors to gRPC status codes.

Every RPC failure leaves the daemon through `status_for`: a `CairnError` keeps its one-line
message and gets the status code of its `code` (or of the nearest base class with a known
code); a hint travels as trailing metadata `cairn-hint`. An OSError that escaped the layers
below becomes one line naming its file and the system's reason. A full disk or quota
(ENOSPC, EDQUOT), behind a bare OSError or behind a domain error with no status of its own,
is RESOURCE_EXHAUSTED. Anything else is INTERNAL.

What always holds: a message and a hint are one line and bounded (MAX_DETAIL_BYTES,
MAX_HINT_CHARS). gRPC sends both as metadata, which a client refuses beyond a few KiB (the
whole call then ends in "Stream removed"); so a message that would be too long has its long
quoted arguments shortened around an ellipsis, and is then cut if it still does not fit.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable

import grpc
from cairn import protocol
from cairn.fsio.names import text_safe
from cairn.store.errors import CairnError

HINT_KEY = protocol.HINT_KEY
# gRPC percent-encodes a status message (up to 3 bytes per UTF-8 byte) and escapes a hint
# (up to 10 characters per character): both together stay under the client's 8 KiB of metadata.
MAX_DETAIL_BYTES = 1024
MAX_HINT_CHARS = 256
QUOTED_HEAD, QUOTED_TAIL = 60, 40  # what is kept of a quoted argument that is shortened
ELLIPSIS = "…"
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

CODE_TO_STATUS: dict[str, grpc.StatusCode] = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "busy": grpc.StatusCode.FAILED_PRECONDITION,
    "locked": grpc.StatusCode.FAILED_PRECONDITION,
    "aborted": grpc.StatusCode.ABORTED,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "corruption": grpc.StatusCode.DATA_LOSS,
}

_QUOTED = re.compile(r"'([^'\r\n]*)'")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Return the status code and the (one-line, bounded) message a client sees for `exc`."""
    code, message = _status(exc)
    return code, bounded(message, MAX_DETAIL_BYTES)


def hint_for(exc: BaseException, reword: Callable[[str], str | None] | None = None) -> str | None:
    """The hint of a CairnError, if it has one (one line, at most MAX_HINT_CHARS), through
    `reword` first when given (what this daemon's host must read: a write-only host asks another)."""
    hint = getattr(exc, "hint", None) if isinstance(exc, CairnError) else None
    if hint and reword is not None:
        hint = reword(hint)
    if not hint:
        return hint
    hint = _LINE_BREAKS.sub(" ", text_safe(hint))
    return hint if len(hint) <= MAX_HINT_CHARS else hint[: MAX_HINT_CHARS - 1] + ELLIPSIS


def bounded(message: str, limit: int = MAX_DETAIL_BYTES) -> str:
    """`message` on one line and at most `limit` bytes of UTF-8: unchanged when it fits, else
    with each long quoted argument shortened to its head and tail, else cut."""
    message = _LINE_BREAKS.sub(" ", text_safe(message))
    if _size(message) <= limit:
        return message
    message = _QUOTED.sub(lambda m: f"'{_shorten(m[1])}'", message)
    if _size(message) <= limit:
        return message
    cut = message.encode("utf-8")[: limit - _size(ELLIPSIS)].decode("utf-8", "ignore")
    return cut + ELLIPSIS


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, CairnError):
        code = _code_of(exc)
        if code == grpc.StatusCode.INTERNAL and _no_space(exc):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        return code, exc.message
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(exc) or "not implemented"
    if isinstance(exc, OSError):
        return _os_status(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _os_status(exc: OSError) -> tuple[grpc.StatusCode, str]:
    """'unable to write 'PATH': No space left on device' and the like, from the OSError's parts."""
    why = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    where = " and ".join(f"'{_name(n)}'" for n in names)
    if exc.errno in NO_SPACE:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"unable to write {where}: {why}" if where \
            else f"unable to write: {why}"
    code = grpc.StatusCode.FAILED_PRECONDITION if exc.errno in REFUSED else grpc.StatusCode.INTERNAL
    return code, f"unable to use {where}: {why}" if where else f"system error: {why}"


def _no_space(exc: BaseException) -> bool:
    """An ENOSPC or EDQUOT among the causes of `exc` (raise ... from e)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in NO_SPACE:
            return True
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return False


def _name(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, str | bytes) else str(name)


def _shorten(text: str) -> str:
    if len(text) <= QUOTED_HEAD + QUOTED_TAIL + 1:
        return text
    return text[:QUOTED_HEAD] + ELLIPSIS + text[-QUOTED_TAIL:]


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _code_of(exc: CairnError) -> grpc.StatusCode:
    """The status of the most specific class in exc's hierarchy whose code is mapped."""
    for cls in type(exc).__mro__:
        code = getattr(cls, "code", None)
        if code in CODE_TO_STATUS:
            return CODE_TO_STATUS[code]
    return grpc.StatusCode.INTERNAL
