"""What the daemon does on request (backups, restores, databases, maintenance, status), behind the
gRPC adapter in `cairn.daemon.rpc`."""
