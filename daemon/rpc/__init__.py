"""cairn.daemon.rpc: the gRPC adapter of the daemon.

The only place of the daemon that imports grpc and the generated proto modules: `server`
binds the sockets, `servicer` converts between wire messages and domain types, and `errors`
maps domain errors to status codes.
"""
