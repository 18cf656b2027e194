"""Fixtures for tests against a real PostgreSQL 15 server (see tests/pgserver.py).

`pg` is one archiving server for the whole session; tests that need their own settings or a
disposable server build a `PgServer` themselves (cleanup always stops it). The tests are
skipped only when the PostgreSQL binaries are not installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pgserver import PG_BIN, PgServer  # noqa: E402

MISSING = [t for t in ("initdb", "postgres", "pg_ctl", "psql", "pg_isready") if not (PG_BIN / t).is_file()]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.postgres)
            if MISSING:
                item.add_marker(pytest.mark.skip(
                    reason=f"PostgreSQL 15 binaries not installed: {', '.join(MISSING)} missing in {PG_BIN}"))


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A running PostgreSQL 15 server archiving WAL into `pg.archive_dir`."""
    server = PgServer(archive=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def fresh_pg() -> Iterator[PgServer]:
    """A disposable archiving server for tests that crash, terminate or reconfigure it."""
    server = PgServer(archive=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
