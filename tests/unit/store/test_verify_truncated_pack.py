"""A truncated pack is one finding of check, as truncated (never also as a checksum mismatch),
with and without read-data, whole or for one set, plaintext or encrypted; a blob damaged in the
part of it that is still there is counted in that finding and found through its sets. (The same
on object storage: tests/integration/s3/test_s3_verify_truncated.py.)"""

from __future__ import annotations

import os

import pytest
from cairn.store.content import crypto
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from storekit import assert_truncated_once, backup, make_tree, truncated_pack

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
SMALL_PACKS = 256 * 1024  # several packs of file data alone (see storekit.truncated_pack)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
@pytest.mark.parametrize("damage_blob", [False, True], ids=["truncated", "truncated-and-damaged"])
def test_a_truncated_pack_is_one_finding(tmp_path, src, rng, encrypted, damage_blob) -> None:
    root = str(tmp_path / "repo")
    secret = crypto.Secret("passphrase", b"pw") if encrypted else None
    Repository.init(LocalBackend(root), RepoConfig.new(pack_size=SMALL_PACKS), secret=secret,
                    argon2=FAST if secret else None).close()
    repo = Repository.open_local(root, secret=secret)
    try:
        make_tree(str(src), rng, files=24)
        s = backup(repo, src)
        pack, data, flipped = truncated_pack(repo, damage_blob=damage_blob)
    finally:
        repo.close()
    with open(os.path.join(root, "packs", pack[:2], pack), "wb") as f:
        f.write(data)
    repo = Repository.open_local(root, secret=secret)
    try:
        for kw in ({"read_data": True}, {"read_data": True, "set_ref": s.id}):
            report = repo.check(**kw)
            assert_truncated_once(report, pack, flipped)
            assert "'cairn repair index" in report.advice
        report = repo.check()  # without reading: the listing's sizes tell, the flipped byte cannot be seen
        assert_truncated_once(report, pack, None)
    finally:
        repo.close()
