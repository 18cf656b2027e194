"""The one mapping from domain errors to gRPC status codes, and its hint channel."""

from __future__ import annotations

import grpc
import pytest
from cairn.daemon.rpc.errors import hint_for, status_for
from cairn.daemon.runtime.config import ConfigError
from cairn.store import errors as e

CASES = [
    (e.NotFoundError("unknown set 'ab12'"), grpc.StatusCode.NOT_FOUND),
    (e.InvalidArgumentError("unknown level 'weekly'"), grpc.StatusCode.INVALID_ARGUMENT),
    (e.AlreadyExistsError("WAL segment '0001' exists with other content"), grpc.StatusCode.ALREADY_EXISTS),
    (e.FailedPreconditionError("target not empty"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.BusyError("a backup of source 'app' is already running"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.LockedError("repository locked"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.AbortedError("cancelled"), grpc.StatusCode.ABORTED),
    (e.DeadlineError("window too long"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (e.CorruptionError("unable to read pack 'ab12..': checksum mismatch"), grpc.StatusCode.DATA_LOSS),
    (e.BackendError("disk on fire"), grpc.StatusCode.INTERNAL),
    (e.RepositoryError("no repo"), grpc.StatusCode.INTERNAL),
    (e.NotARepositoryError("'/x' is not a Cairn repository"), grpc.StatusCode.INTERNAL),
    (e.CairnError("plain"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("exc", "code"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_domain_error_gets_its_status_and_keeps_its_message(exc, code):
    got_code, message = status_for(exc)
    assert got_code == code
    assert message == exc.message


def test_subclass_with_an_unmapped_code_inherits_the_status_of_its_base():
    # ConfigError has its own code ('invalid_config') but is an InvalidArgumentError.
    exc = ConfigError("cairn.toml", "source[0].rpo", "expected a duration like '5m', got 'soon'")
    assert status_for(exc)[0] == grpc.StatusCode.INVALID_ARGUMENT

    class Odd(e.NotFoundError):
        code = "odd"

    assert status_for(Odd("x"))[0] == grpc.StatusCode.NOT_FOUND


def test_unexpected_exceptions_are_internal_and_say_what_they_were():
    code, message = status_for(KeyError("boom"))
    assert code == grpc.StatusCode.INTERNAL
    assert "KeyError" in message and "boom" in message
    assert status_for(NotImplementedError("database restore is not available"))[0] == grpc.StatusCode.UNIMPLEMENTED


def test_hint_travels_only_for_domain_errors():
    assert hint_for(e.BusyError("busy", hint="wait for it")) == "wait for it"
    assert hint_for(e.NotFoundError("x")) is None
    assert hint_for(ValueError("x")) is None
