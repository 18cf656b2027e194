"""global/pg_control, the last file of a restore-db stream: written only once every other file is.

A restore-db stream (daemon/databases/postgres/restoredb.py) carries recovery.signal before
global/pg_control, and pg_control last of all. PostgreSQL refuses to start without pg_control,
so a data directory that lacks a file must lack pg_control too. `ControlLast` stands between
such a stream and the writer that applies it (the daemon's ParallelTreeWriter, the client's
TreeWriter): when pg_control's entry comes after recovery.signal, it settles the writer (every
earlier file is complete, or removed and named in its errors); if any failed, it leaves out
pg_control's entry and content and adds NOT_WRITTEN to the writer's errors.

What always holds: a stream without recovery.signal before pg_control (a files restore, a
dump) passes unchanged; lane records (fsio.records) name their own file and always pass.
Imports only this package.
"""

from __future__ import annotations

from .records import EntryMeta, LaneData, LaneEnd, Record
from .writer import TreeWriter

PG_CONTROL = b"global/pg_control"
RECOVERY_SIGNAL = b"recovery.signal"
NOT_WRITTEN = (f"{PG_CONTROL.decode()} was not written, so PostgreSQL cannot start on this incomplete directory: "
               "restore it again (--delta writes only what is missing)")


class ControlLast:
    """Call `admit(rec)` for each record before `writer.apply(rec)`; apply only what it admits."""

    def __init__(self, writer: TreeWriter) -> None:
        self.writer = writer
        self.recovery = False  # recovery.signal seen: a restore-db stream
        self.skipped = False  # pg_control left out: another file failed

    def admit(self, rec: Record) -> bool:
        if isinstance(rec, EntryMeta):
            self.recovery = self.recovery or rec.path == RECOVERY_SIGNAL
            if self.recovery and rec.path == PG_CONTROL:
                self.writer.settle()  # every earlier file complete (or failed) before pg_control
                self.skipped = bool(self.writer.stats.errors)
                if self.skipped:
                    self.writer.stats.errors.append(NOT_WRITTEN)
        return not self.skipped or isinstance(rec, (LaneData, LaneEnd))
