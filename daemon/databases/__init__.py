"""Databases behind one boundary: the engines that capture a [[database]] into a set.

engine.py    the DatabaseEngine protocol and the typed records of what a set holds
physical.py  kind 'postgres': base backup of a local cluster + WAL (wraps daemon/databases/postgres/connection.py)
dump.py      kinds 'pg_dump' and 'command': a dump tool run inside the set's window
restore.py   restore-db of a dump into a target database (pg_restore, or the configured command)
tools.py     dump and restore tools that never outlive the daemon: a guard per run, a durable
             record, a fresh work directory per run, leftovers killed and removed at start

`engine_for(cfg, source, work_dir)` builds the engine of a configured database.
"""

from __future__ import annotations

from cairn.daemon.databases.engine import KIND_COMMAND, KIND_PG_DUMP, DatabaseEngine
from cairn.daemon.runtime.config import DatabaseConfig


def engine_for(cfg: DatabaseConfig, source: str, work_dir: str) -> DatabaseEngine:
    """The engine that captures `cfg` for a set of `source`; dumps use `work_dir` for scratch."""
    if cfg.kind == KIND_COMMAND:
        from cairn.daemon.databases.dump import CommandEngine

        return CommandEngine(cfg, source, work_dir)
    if cfg.kind == KIND_PG_DUMP:
        from cairn.daemon.databases.dump import PgDumpEngine

        return PgDumpEngine(cfg, source, work_dir)
    from cairn.daemon.databases.physical import PhysicalEngine

    return PhysicalEngine(cfg, source)
