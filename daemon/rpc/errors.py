"""The one mapping from Cairn's domain errors to gRPC status codes.

Every RPC failure leaves the daemon through `status_for`: a `CairnError` keeps its one-line
message and gets the status code of its `code` (or of the nearest base class with a known
code); a hint travels as trailing metadata `cairn-hint`. Anything else is INTERNAL.
"""

from __future__ import annotations

import grpc
from cairn import protocol
from cairn.store.errors import CairnError

HINT_KEY = protocol.HINT_KEY

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


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Return the status code and the message a client sees for `exc`."""
    if isinstance(exc, CairnError):
        return _code_of(exc), exc.message
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(exc) or "not implemented"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def hint_for(exc: BaseException) -> str | None:
    """The hint of a CairnError, if it has one."""
    return getattr(exc, "hint", None) if isinstance(exc, CairnError) else None


def _code_of(exc: CairnError) -> grpc.StatusCode:
    """The status of the most specific class in exc's hierarchy whose code is mapped."""
    for cls in type(exc).__mro__:
        code = getattr(cls, "code", None)
        if code in CODE_TO_STATUS:
            return CODE_TO_STATUS[code]
    return grpc.StatusCode.INTERNAL
