"""What a client is told for an error: one bounded line, and for a failing file system call
the file and the system's reason with a status that fits (daemon/rpc/errors.py)."""

from __future__ import annotations

import errno
import os

import grpc
from cairn.daemon.rpc.errors import MAX_DETAIL_BYTES, MAX_HINT_CHARS, bounded, hint_for, status_for
from cairn.store import errors as e


def test_a_message_that_fits_is_unchanged():
    message = "unable to write '/srv/repo/packs/ab/" + "c" * 200 + "': No space left on device"
    assert status_for(e.BackendError(message))[1] == message


def test_a_long_quoted_argument_is_shortened_around_an_ellipsis_and_the_rest_kept():
    code, message = status_for(e.NotFoundError(f"unknown set '{'a' * 30_000 + 'END'}': see 'cairn sets'"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert message.startswith("unknown set 'aaaa") and "…" in message and "END'" in message
    assert message.endswith(": see 'cairn sets'")
    assert len(message.encode()) <= MAX_DETAIL_BYTES


def test_a_long_message_without_quotes_is_cut_within_the_bound_on_a_character_boundary():
    message = status_for(e.CairnError("é" * 5000))[1]
    assert message.endswith("…") and len(message.encode()) <= MAX_DETAIL_BYTES
    message.encode("utf-8")  # no half character


def test_a_message_is_one_line_and_encodable():
    message = status_for(e.InvalidArgumentError("bad name 'a\nb\r\nc' \udcff"))[1]
    assert "\n" not in message and "\r" not in message
    assert message == "bad name 'a b c' \\xff"
    assert bounded("x" * 10, 8) == "xxxxx…"  # 8 bytes: the ellipsis takes 3


def test_a_hint_is_one_line_and_bounded():
    hint = hint_for(e.NotFoundError("x", hint="first\nsecond " + "h" * 5000))
    assert hint is not None and "\n" not in hint and hint.startswith("first second ")
    assert len(hint) == MAX_HINT_CHARS and hint.endswith("…")


def test_a_bare_full_disk_names_the_file_and_is_resource_exhausted():
    for number in (errno.ENOSPC, errno.EDQUOT):
        code, message = status_for(OSError(number, os.strerror(number), "/srv/repo/packs/ab/ab12"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert message == f"unable to write '/srv/repo/packs/ab/ab12': {os.strerror(number)}"
    assert status_for(OSError(errno.ENOSPC, "No space left on device"))[1] == \
        "unable to write: No space left on device"


def test_other_bare_os_errors_are_one_line_with_a_fitting_status():
    code, message = status_for(PermissionError(errno.EACCES, "Permission denied", "/srv/x"))
    assert (code, message) == (grpc.StatusCode.FAILED_PRECONDITION, "unable to use '/srv/x': Permission denied")
    code, message = status_for(OSError(errno.EIO, "Input/output error", b"/srv/\xff", None, "/srv/y"))
    assert code == grpc.StatusCode.INTERNAL
    assert message == "unable to use '/srv/\\xff' and '/srv/y': Input/output error"
    assert status_for(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")) == \
        (grpc.StatusCode.INTERNAL, "system error: Connection reset by peer")


def test_a_domain_error_caused_by_a_full_disk_keeps_its_message_and_is_resource_exhausted():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/srv/repo/locks/l1")
        except OSError as cause:
            raise e.BackendError("unable to write '/srv/repo/locks/l1': No space left on device") from cause
    except e.BackendError as exc:
        assert status_for(exc) == (grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as cause:
            raise e.BackendError("unable to read 'x': Input/output error") from cause
    except e.BackendError as exc:
        assert status_for(exc)[0] == grpc.StatusCode.INTERNAL
    # a class with a status of its own keeps it, whatever its cause
    full = e.NotFoundError("gone")
    full.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert status_for(full)[0] == grpc.StatusCode.NOT_FOUND
