"""Content: what the stored bytes are, on top of storage only.

Packs (packs.py) and the index of the blobs in them (index.py), writing and reading blobs
through the codec chain, compress then encrypt (blobs.py), keyed chunk ids and sealed small
objects (crypto.py), content-defined chunking (chunker.py), the repository's config
(repoconfig.py) and locks (locks.py). Imports only storage and the store's base modules
(errors, model, memory).
"""
