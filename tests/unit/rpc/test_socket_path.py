"""What may stand at the API socket's path (cairn.fsio.sockets): nothing or a stale socket is
taken over, a live socket, a regular file or an unreadable path refuse the start in one line;
the server's own preparation removes a stale socket and nothing else."""

from __future__ import annotations

import os
import socket

import pytest
from cairn.daemon.rpc.server import _prepare_socket_path
from cairn.errors import FailedPreconditionError
from cairn.fsio.sockets import check_socket_path


def test_absent_stale_and_live_sockets(tmp_path) -> None:
    path = str(tmp_path / "cairnd.sock")
    assert check_socket_path(path) == "absent"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a killed daemon leaves
    stale.close()
    assert check_socket_path(path) == "stale"
    _prepare_socket_path(path)
    assert not os.path.exists(path)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(path)
        live.listen(1)
        for check in (check_socket_path, _prepare_socket_path):
            with pytest.raises(FailedPreconditionError, match="another cairnd is serving it"):
                check(path)
        assert os.path.exists(path)  # a live socket is never removed
    finally:
        live.close()


def test_a_file_in_the_way_is_refused_and_kept(tmp_path) -> None:
    path = tmp_path / "cairnd.sock"
    path.write_text("not a socket\n")
    for check in (check_socket_path, _prepare_socket_path):
        with pytest.raises(FailedPreconditionError, match="a file that is not a socket is in the way"):
            check(str(path))
    assert path.read_text() == "not a socket\n"
