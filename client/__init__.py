"""cairn.client: the typed gRPC client of cairnd and the `cairn` command line.

Imports only cairn.proto, cairn.fsio, cairn.errors and grpc: a client never opens a
repository; data reaches it through the API (restores are streamed and written here by
cairn.fsio.writer), so a client on another host works the same as a local one.
"""
