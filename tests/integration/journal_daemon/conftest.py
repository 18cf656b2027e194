"""Fixtures of the change journal end-to-end tests (the kit is in journal_daemon_kit.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from journal_daemon_kit import JournalDaemon


@pytest.fixture
def jd() -> Iterator[JournalDaemon]:
    base = tempfile.mkdtemp(prefix="cj-", dir="/tmp")
    src = os.path.join(base, "src")
    hooks = os.path.join(base, "hooks")
    os.makedirs(src)
    os.makedirs(hooks)
    j = JournalDaemon(base=base, src=src, repo=os.path.join(base, "repo"), config=os.path.join(base, "cairn.toml"),
                      hooks=hooks)
    j.write_config()
    yield j
    j.kill()
    shutil.rmtree(base, ignore_errors=True)
