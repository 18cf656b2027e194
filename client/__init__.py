"""cairn.client: the typed gRPC client of cairnd and the `cairn` command line.

Imports only cairn.proto, cairn.fsio, cairn.errors and grpc: a client never opens a
repository; data reaches it through the API (restores are streamed and written here by
cairn.fsio.writer), so a client on another host works the same as a local one.
"""

import os as _os

# gRPC's C core logs TLS handshake failures and the like on stderr itself, before the client
# can say what went wrong in one line; the client reports every failure it meets, so the
# library stays quiet unless the operator asks for its logs (GRPC_VERBOSITY=debug).
_os.environ.setdefault("GRPC_VERBOSITY", "NONE")
