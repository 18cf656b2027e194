"""restore-db --delta: an earlier copy of a data directory mended in place, ready for recovery.

`mend_data_directory` compares the target with what a restore-db of the set would write
(restoredb.restore_db_records in manifest mode: the set's files as chunk ids, and the files
recovery needs — postgresql.auto.conf with the recovery settings, backup_label, tablespace_map,
recovery.signal — with their content; the WAL the set needs to reach its consistent point, as a
full restore-db places it in pg_wal/, by content hash) and writes only what differs
(cairn.fsio.delta.mend, as `cairn restore --delta` does for a files tree). A second delta of an
unchanged directory writes nothing. One delta per directory runs at a time (on this host: the
lock of cairn.fsio.delta.target_lock).

What always holds:
- The target is refused before anything changes unless the client claimed it
  (claims.check_delta_claim), it holds PG_VERSION (it is a data directory: a delta removes
  what the set does not hold, so a wrong directory must never be taken for one), it holds
  no postmaster.pid (no server runs on it; a stale file is the operator's to remove), and its
  pg_wal is not a link (a full restore-db never writes through one either: it may lead to a
  live server's WAL; the operator removes it, and the link's directory is left alone).
- Everything the set does not hold is removed (relation files of tables created after the
  set, old WAL in pg_wal/, logs), as pgBackRest's delta restore does: the server must see the
  set's data directory and nothing else.
- global/pg_control is removed first and written last, after every other file and the placed
  WAL: a delta cut short (a kill, a damaged chunk) leaves a directory PostgreSQL refuses to
  start, never one it would start on half-mended data. Running the delta again finishes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cairn.daemon.databases.engine import PhysicalRecord
from cairn.daemon.databases.postgres.restoredb import (
    consistency_wal,
    database_of,
    placed_wal,
    restore_db_records,
)
from cairn.daemon.databases.postgres.walarchive import fetch_wal, record_namespace
from cairn.fsio import claims
from cairn.fsio.datadir import check_data_directory
from cairn.fsio.delta import DeltaPlan, DeltaStats, chunk_id, mend, target_lock
from cairn.fsio.records import Data, EntryMeta, Failed, Hole, Record
from cairn.store.errors import CairnError, FailedPreconditionError
from cairn.store.model import BackupSet
from cairn.store.repository import Repository

PG_CONTROL = b"global/pg_control"
INLINE_MAX = 1 << 20  # placed files up to this size are kept in memory; WAL segments are fetched again


def manifest_entries(records: Iterable[Record], id_key: bytes | None = None
                     ) -> tuple[list[EntryMeta], dict[bytes, bytes], list[str]]:
    """(entries, inline content by chunk id, problems) of a manifest stream in which some files
    carry their content: each such file becomes one chunk named by the hash of its content (as
    `chunk_id` makes them), so mend compares and writes it like any other."""
    entries: list[EntryMeta] = []
    inline: dict[bytes, bytes] = {}
    problems: list[str] = []
    open_file: EntryMeta | None = None
    content = bytearray()

    def close() -> None:
        if open_file is None:
            return
        data = bytes(content)
        if data:
            cid = chunk_id(data, id_key)
            inline[cid] = data
            entries.append(dataclasses.replace(open_file, chunks=(cid,), chunk_sizes=(len(data),), size=len(data)))
        else:
            entries.append(dataclasses.replace(open_file, size=0))

    for rec in records:
        if isinstance(rec, EntryMeta):
            close()
            open_file, content = None, bytearray()
            if rec.kind == "file" and not rec.chunks:
                open_file = rec  # its content follows (or it is empty)
            else:
                entries.append(rec)
        elif isinstance(rec, Data):
            content += rec.data
        elif isinstance(rec, Hole):
            content += bytes(rec.length)
        elif isinstance(rec, Failed):
            problems.append(rec.message)
    close()
    return entries, inline, problems


def placed_entries(records: Iterable[Record], mtime_ns: int, id_key: bytes | None = None
                   ) -> tuple[list[EntryMeta], dict[bytes, bytes], dict[bytes, str]]:
    """(entries, inline content by id, WAL name by id) of restoredb.placed_wal's records: a WAL
    segment is named by the blake3 of its content and fetched again only if the target lacks
    it (one segment in memory at a time); the small marker files are kept inline. Every entry
    gets `mtime_ns` (the set's), so an unchanged placed file is not even touched again."""
    entries, inline, names = [], {}, {}
    meta: EntryMeta | None = None
    content = bytearray()

    def close() -> None:
        if meta is None:
            return
        data = bytes(content)
        cid = chunk_id(data, id_key)
        if len(data) > INLINE_MAX:
            names[cid] = os.path.basename(os.fsdecode(meta.path))
        elif data:
            inline[cid] = data
        entries.append(dataclasses.replace(meta, mtime_ns=mtime_ns, size=len(data),
                                           chunks=(cid,) if data else (), chunk_sizes=(len(data),) if data else ()))

    for rec in records:
        if isinstance(rec, EntryMeta):
            close()
            meta, content = rec, bytearray()
        elif isinstance(rec, Data):
            content += rec.data
    close()
    return entries, inline, names


def _only_one(target: str) -> contextlib.AbstractContextManager[None]:
    """One delta per data directory at a time: a second one would write pg_control back while
    the first still mends. The lock every delta restore takes (cairn.fsio.delta.target_lock), so
    a files delta into the same directory, of this daemon or of a client, is refused too."""
    return target_lock(target)


def mend_data_directory(repo: Repository, s: BackupSet, database: str, target_time: str, target_lsn: str,
                        socket_path: str, target_path: str, nonce: str, command: str = "",
                        target_timeline: str = "current", fetch_with: str = "", quick: bool = False,
                        cancelled: Callable[[], bool] | None = None, target_end: bool = False,
                        accept_wal_gap: bool = False) -> tuple[DeltaPlan, DeltaStats, list[str]]:
    """Mend the claimed data directory `target_path` into `database` of set `s`, recovering to
    the target (with `target_end`: the end of the WAL archive) as restore-db would (module
    docstring). Returns (plan, what changed, problems)."""
    claim = claims.check_delta_claim(target_path, nonce, any_owner=True)  # it belongs to the database's user
    check_data_directory(target_path)
    with _only_one(target_path):
        return _mend(repo, s, database, target_time, target_lsn, socket_path, target_path, claim, command,
                     target_timeline, fetch_with, quick, cancelled, target_end, accept_wal_gap)


def _mend(repo: Repository, s: BackupSet, database: str, target_time: str, target_lsn: str, socket_path: str,
          target_path: str, claim: str, command: str, target_timeline: str, fetch_with: str, quick: bool,
          cancelled: Callable[[], bool] | None, target_end: bool = False,
          accept_wal_gap: bool = False) -> tuple[DeltaPlan, DeltaStats, list[str]]:
    rec = database_of(s, database)
    records = restore_db_records(repo, s, database, target_time, target_lsn, socket_path, target_path, command,
                                 target_timeline=target_timeline, fetch_with=fetch_with, manifest=True,
                                 target_end=target_end, accept_wal_gap=accept_wal_gap)
    key = repo.chunk_id_key
    entries, inline, problems = manifest_entries(records, key)
    control = [m for m in entries if m.path == PG_CONTROL]
    entries = [m for m in entries if m.path != PG_CONTROL]
    owner = next(((m.uid, m.gid) for m in entries if m.path == b"PG_VERSION"), (0, 0))
    namespace = record_namespace(rec)
    wal_records = placed_wal(repo, consistency_wal(repo, rec), owner, not (target_time or target_lsn or target_end),
                             namespace)
    placed, placed_inline, wal_names = placed_entries(wal_records, int(s.time_end * 1e9), key)
    entries += placed
    inline.update(placed_inline)
    typed = PhysicalRecord.from_dict(rec)
    attachments = (typed.attachment, *(t.attachment for t in typed.tablespaces))
    try:
        claims.drop_claim(claim)  # not the set's: the delta would remove it; a daemon that may not write stops here
    except OSError as exc:
        raise FailedPreconditionError(
            f"local write to '{target_path}' refused: the daemon cannot write there: {exc.strerror}") from None
    try:
        os.unlink(os.path.join(target_path, os.fsdecode(PG_CONTROL)))  # written last (module docstring)
    except FileNotFoundError:
        pass

    def chunks(ids: list[bytes]) -> Iterator[tuple[bytes, bytes | CairnError]]:
        stored = [i for i in ids if i not in inline and i not in wal_names]
        yield from ((i, inline[i]) for i in ids if i in inline)
        if stored:
            data = repo.read_chunks(s, stored, errors=True, attachments=attachments)
            try:
                yield from zip(stored, data, strict=True)
            finally:
                data.close()  # type: ignore[attr-defined]
        for i in ids:
            if i in wal_names:
                try:
                    yield i, fetch_wal(repo, wal_names[i], namespace)
                except CairnError as exc:
                    yield i, exc

    p, st = mend(target_path, entries, chunks, quick=quick, delete=True, extras_under=[b""], cancelled=cancelled,
                 id_key=key)
    problems += p.errors + st.errors
    if problems:  # pg_control stays away: this directory must not start until a delta completes
        return p, st, problems
    last, done = mend(target_path, control, chunks, delete=False, extras_under=None, cancelled=cancelled,
                      id_key=key)
    problems += last.errors + done.errors
    _add(st, files_written=done.files_written, bytes_written=done.bytes_written)
    if not control:
        problems.append(f"set '{s.id[:8]}' holds no {PG_CONTROL.decode()} for database '{database}'")
    return p, st, problems


def _add(st: Any, **counts: int) -> None:
    for name, n in counts.items():
        setattr(st, name, getattr(st, name) + n)
