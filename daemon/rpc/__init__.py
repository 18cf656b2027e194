"""cairn.daemon.rpc: the gRPC adapter of the daemon.

The only place of the daemon that imports grpc and the generated proto modules: `server`
binds the sockets, `servicer` converts between wire messages and domain types, `errors`
maps domain errors to status codes, and `health` serves health checks and reflection within
a few threads.
"""
