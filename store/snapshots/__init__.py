"""Trees and sets: what a backup makes of content, and what a restore reads back.

Trees (trees.py), set objects (sets.py), walking and reading files into a set (backup.py,
filereader.py, stream.py, session.py, excludes.py), restore streams (restore.py) and the WAL
catalog (wal.py). Imports only content, storage and the store's base modules.
"""
