"""cairn.proto: the gRPC API of Cairn.

`cairn/v1/cairn.proto` (package cairn.v1) is the source of truth; the generated modules next
to it are committed and kept fresh by a test (regenerate with `python -m cairn.proto.generate`).
Only the daemon's rpc package and the client import them.
"""
