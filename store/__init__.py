"""cairn.store: the content-addressed repository.

Chunking, packs, index, trees, backup sets, restore, check and garbage collection. This
package imports only the standard library, blake3, zstandard, pyfastcdc, pathspec,
cryptography (encryption at rest) and cairn.fsio; it knows nothing of watchdog, psycopg2, grpc or the daemon.
"""
