"""`cairn copy` in the daemon: which sets, which WAL they need, and the destination's options.

The store copies (cairn.store.copy); this module decides what: the sets named (default every
set, or every set of one source), and for each physical PostgreSQL capture of a set the WAL
from its first segment to its last in its cluster's name space (and the timeline history
files up to its timeline), so the copy restores with restore-db and recovers on its own.
The destination is opened (or created, encrypted) with the key the client sent; an s3://
destination uses the daemon's own [repository] object-store options when the daemon's
repository is on object storage too, else boto3's usual sources (environment, files).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from cairn import walnames
from cairn.daemon.databases.postgres import walarchive
from cairn.daemon.runtime.config import RepositoryConfig
from cairn.store.content.crypto import Secret
from cairn.store.copy import CopyReport, copy_sets, open_destination
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.locations import is_s3
from cairn.store.model import BackupSet, Progress
from cairn.store.repository import Repository


def wal_needed(s: BackupSet) -> list[tuple[str, str]]:
    """(name space, file name) of every WAL file restoring set `s`'s databases needs."""
    out: list[tuple[str, str]] = []
    for rec in walarchive.database_records(s.extra):
        ns = walarchive.record_namespace(rec)
        names = walarchive.segments_needed(rec)
        size = int(rec.get("wal_segment_size") or walarchive.DEFAULT_SEGMENT_SIZE)
        first = walnames.parse_segment(names[0], size) if names else None
        if first is not None:
            out += [(ns, f"{t:08X}.history") for t in range(2, first[0] + 1)]
        out += [(ns, n) for n in names]
    return list(dict.fromkeys(out))


def choose_sets(repo: Repository, refs: list[str], source: str, host: str = "",
                own_host: str | None = None, own_machine: str = "") -> list[BackupSet]:
    """The sets named by `refs` (ids, prefixes, 'latest' as Repository.get_set resolves it), or
    every set of `source` and `host` (every set when both are empty). Unknown sets and sources
    are NotFoundError."""
    if refs:
        return [repo.get_set(ref, source or None, host or None, own_host, own_machine) for ref in refs]
    sets = [s for s in repo.list_sets(source or None) if not host or s.hostname == host]
    if (source or host) and not sets:
        where = " and".join(x for x in (f" of source '{source}'" if source else "",
                                         f" of host '{host}'" if host else "") if x)
        raise NotFoundError(f"no set{where} in the repository")
    return sets


def run_copy(repo: Repository, config: RepositoryConfig, to: str, secret: Secret, refs: list[str], source: str,
             progress: Callable[[Progress], None] | None = None,
             cancel: threading.Event | None = None, host: str = "", own_host: str | None = None,
             own_machine: str = "") -> CopyReport:
    """Copy the chosen sets of `repo` into the repository at `to` (see the module docstring)."""
    if not to:
        raise InvalidArgumentError("a copy needs a destination (--to)")
    if not is_s3(to) and not os.path.isabs(to):  # relative to what? the daemon's cwd is no caller's
        raise InvalidArgumentError(f"copy destination '{to}' is not an absolute path: name a directory on the "
                                   "daemon's host by its absolute path, or an s3:// URL")
    repo.require_full_key("to copy (a copy reads every set's data)", "cairn copy")  # before the destination is made
    sets = choose_sets(repo, refs, source, host, own_host, own_machine)
    options = config.s3_options() if is_s3(to) and is_s3(config.path) else None
    dst = open_destination(to, secret, options)
    try:
        return copy_sets(repo, dst, sets, wal_for=wal_needed, progress=progress, cancel=cancel)
    finally:
        dst.close()
