"""Whether a directory may be mended as an earlier copy of a PostgreSQL data directory.

Both the client (before it writes anything of a restore, on the daemon's host) and the daemon
(before it mends) ask `check_data_directory`, so a place that cannot be mended is refused before
a files delta of the same command touched its target. What always holds: only a directory that
holds PG_VERSION, no postmaster.pid and no pg_wal link passes. Imports only cairn.errors.
"""

from __future__ import annotations

import os

from cairn.errors import FailedPreconditionError


def check_data_directory(target: str) -> None:
    """Refuse a target that is not a data directory, or one a server may be running on."""
    version = os.path.join(target, "PG_VERSION")
    if not os.path.isfile(version) or os.path.islink(version):
        raise FailedPreconditionError(
            f"'{target}' is not a PostgreSQL data directory (it holds no PG_VERSION): --delta mends an earlier "
            "restore of one and removes what the set does not hold",
            hint="restore into an empty directory instead")
    if os.path.lexists(os.path.join(target, "postmaster.pid")):
        raise FailedPreconditionError(
            f"PostgreSQL may be running on '{target}' (it holds postmaster.pid): stop the server first",
            hint="if no server runs there, the file is stale: remove it and try again")
    wal = os.path.join(target, "pg_wal")
    if os.path.islink(wal):  # as a full restore-db: never write through it, it may be a live server's WAL
        raise FailedPreconditionError(
            f"'{wal}' is a symbolic link (to '{os.readlink(wal)}'): a restore never writes WAL through a link, "
            "which may lead to a live server's WAL",
            hint="remove the link (recovery fetches the WAL it needs from the repository) and run the delta again; "
                 "point pg_wal elsewhere after recovery if you want it on another disk")
