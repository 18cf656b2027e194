"""cairn.fsio: the filesystem side of a restore, shared by the store and the client.

A restore is a stream of records (see `records`): an `EntryMeta` for each entry in
pre-order (a directory before what it holds), each regular file followed by its `Data` and
`Hole` records. `TreeWriter` applies such a stream to a target directory. The store feeds it
from local chunks; the client feeds it from the daemon's gRPC stream, so a restore on another
host writes files the same way. Imports only the standard library.
"""
