"""What the client and the daemon agree on, in one place both import.

- The set levels (`LEVELS`) and the level a backup takes when none is named (`DEFAULT_LEVEL`).
- Where the daemon's socket is when its configuration names none (`default_socket`): the
  client finds the daemon by the same rule, so the two can never drift apart.
- The trailing metadata key an error's hint travels under (`HINT_KEY`).
- The start of the refusal of a streaming call beyond its pool's slots (`BUSY_PREFIX`, with
  RESOURCE_EXHAUSTED): a client that may wait for a slot knows it by this.
- The gRPC message size limits (`MAX_MESSAGE_BYTES` for the daemon, `CLIENT_MAX_MESSAGE_BYTES`
  for the client) and the size of the pieces a restore stream is cut into, which always fit.
- The restore-db markers come from `cairn.walnames` (the owner of WAL names) and are named
  here too, so a reader finds them beside the rest.

The mapping of restore records to and from the wire lives in `cairn.proto.wire`, beside the
generated messages it needs; this module stays standard library only, so the store may use
it too. What always holds: `BATCH_BYTES + DATA_PIECE` stays well under `MAX_MESSAGE_BYTES`,
and the client accepts at least what the daemon may send.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cairn.walnames import OWN_POINT, WAL_MARKER

__all__ = ["LEVELS", "DEFAULT_LEVEL", "SOCKET_NAME", "ROOT_RUNTIME_DIR", "MAX_MESSAGE_BYTES",
           "CLIENT_MAX_MESSAGE_BYTES", "DATA_PIECE", "BATCH_BYTES", "BATCH_RECORDS", "HINT_KEY", "WAL_MARKER",
           "OWN_POINT", "BUSY_PREFIX", "default_home", "default_socket"]

LEVELS = ("full", "differential", "incremental")
DEFAULT_LEVEL = "incremental"

SOCKET_NAME = "cairnd.sock"
ROOT_RUNTIME_DIR = "/run/cairn"

MAX_MESSAGE_BYTES = 4 << 20  # the largest message the daemon sends or accepts
CLIENT_MAX_MESSAGE_BYTES = 8 << 20  # the client's limit: what the daemon sends, with room to spare
DATA_PIECE = 1 << 20  # largest data record of a restore or WAL fetch
BATCH_BYTES = 1 << 20  # a restore batch is flushed once it holds about this much
BATCH_RECORDS = 2048
BUSY_PREFIX = "too many open "  # RESOURCE_EXHAUSTED: every slot of a stream pool is taken

HINT_KEY = "cairn-hint"  # the trailing metadata key of an error's hint for people


def default_home(env: Mapping[str, str] | None = None) -> str:
    """$CAIRN_HOME, else systemd's $STATE_DIRECTORY, else ~/.local/share/cairn."""
    environ = os.environ if env is None else env
    state_directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return (
        environ.get("CAIRN_HOME")
        or state_directory
        or os.path.join(os.path.expanduser("~"), ".local", "share", "cairn")
    )


def default_socket(home: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """$XDG_RUNTIME_DIR/cairn/cairnd.sock, /run/cairn/cairnd.sock for root, else cairnd.sock in
    `home` (default: default_home())."""
    environ = os.environ if env is None else env
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "cairn", SOCKET_NAME)
    if os.geteuid() == 0:
        return os.path.join(ROOT_RUNTIME_DIR, SOCKET_NAME)
    if home is None:
        home = os.path.abspath(os.path.expanduser(default_home(environ)))
    return os.path.join(home, SOCKET_NAME)
