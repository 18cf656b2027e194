"""What stands at the path of a Unix socket a daemon is about to listen on.

`check_socket_path` tells a path that may be taken ('absent', or 'stale': a socket nobody
answers on, left by a process that died) from one that must not be: a live socket (another
daemon serves it), a file that is not a socket, or a path that cannot be looked at. The start
checks and the server's bind share it, so both refuse the same things with the same words.
It never removes anything itself.
"""

from __future__ import annotations

import os
import socket
import stat

from cairn.errors import FailedPreconditionError


def check_socket_path(path: str) -> str:
    """'absent' or 'stale' (a socket nobody answers on): what is at the API socket's path may be
    replaced. A live socket (another cairnd), a file that is not a socket, or a path that cannot
    be looked at raise FailedPreconditionError."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        raise FailedPreconditionError(f"unable to listen on '{path}': {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPreconditionError(f"unable to listen on '{path}': a file that is not a socket is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return "stale"
    finally:
        probe.close()
    raise FailedPreconditionError(f"unable to listen on '{path}': another cairnd is serving it")
