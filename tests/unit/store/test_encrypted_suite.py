"""The delta, prune and WAL tests again, on an encrypted (format 2) repository: their `repo`
fixture is replaced by this module's, everything else is theirs."""

from __future__ import annotations

import pytest
from cairn.store.content import crypto
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from test_delta import *  # noqa: F403 - collected again here, on the encrypted repository
from test_prune import *  # noqa: F403
from test_wal import *  # noqa: F403

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}


@pytest.fixture
def repo(tmp_path):
    r = Repository.init(LocalBackend(str(tmp_path / "repo")), secret=crypto.Secret("passphrase", b"pw"),
                        argon2=FAST)
    assert r.encrypted
    yield r
    r.close()

# these two reopen the repository by path without a secret (covered in test_encryption.py)
del test_put_get_round_trip, test_damaged_wal_data_is_detected  # noqa: F821
# this one opens the repository again over a faulty backend, without a secret; what it tests
# (prune's clock) does not depend on encryption
del test_without_a_grace_period_a_run_collects_what_it_marked_whatever_the_clock_does  # noqa: F821
