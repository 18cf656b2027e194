"""Fixtures of the store tests (helpers live in storekit.py)."""

from __future__ import annotations

import random

import pytest
from cairn.store.repository import Repository


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
def repo(tmp_path):
    r = Repository.open_local(str(tmp_path / "repo"), create=True)
    yield r
    r.close()


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "src"
    p.mkdir()
    return p
