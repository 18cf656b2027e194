"""Fixtures for the end-to-end PostgreSQL tests: real server, real cairnd, real client (pgstack.py).

Skipped only when the PostgreSQL 15 binaries, the postgres OS user or root are missing.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pgstack import pg_available  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    reason = pg_available()
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.postgres)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
