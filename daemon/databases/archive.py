"""PostgreSQL's archive rules as the repository is given them (store/segments.py): the store
knows no engine's segment names, the daemon tells it.

`PostgresSegments` accepts the names the archiver hands over (cairn.walnames owns them),
orders segments, their .partial and .backup files by the segment they name (timelines apart
from the number: a segment's place is its number), keeps .history files out of the order
(never forgotten), tells a segment's content filed under another segment's name by its page
header (`content_problem`), and reads from a set's physical database records where each one's WAL
starts ("wal"."first"), in the name space of its system identifier (the flat name space ""
serves every record). What always holds: a name `walnames.is_wal_file_name` refuses is never
valid; records of dump engines need no WAL.
"""

from __future__ import annotations

from cairn import walnames
from cairn.daemon.databases.engine import DUMP_KINDS, record_dicts
from cairn.store.model import BackupSet
from cairn.store.segments import plain_name


class PostgresSegments:
    """The archive rules of PostgreSQL's WAL (see the module docstring)."""

    def valid(self, name: str) -> bool:
        return plain_name(name) and walnames.is_wal_file_name(name)

    def position(self, name: str) -> int | None:
        return walnames.segment_order(name)

    def needs(self, s: BackupSet, namespace: str) -> list[int]:
        out = []
        for rec in record_dicts(s.extra):
            if rec.get("kind") in DUMP_KINDS:
                continue
            if namespace and str(rec.get("system_identifier") or "") != namespace:
                continue
            wal = rec.get("wal") if isinstance(rec.get("wal"), dict) else {}
            first = self.position(str(wal.get("first") or ""))
            if first is not None:
                out.append(first)
        return out

    def content_problem(self, name: str, head: bytes) -> str | None:
        return walnames.segment_header_mismatch(name, head)
