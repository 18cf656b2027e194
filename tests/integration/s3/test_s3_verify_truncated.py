"""A truncated pack in a bucket (a real SeaweedFS) is one finding of check, as truncated, as in a
local repository (tests/unit/store/test_verify_truncated_pack.py): the object's size comes from
the bucket's listing, and its bytes are read the same way."""

from __future__ import annotations

import uuid

import pytest
from storekit import assert_truncated_once, backup, make_tree, truncated_pack


@pytest.mark.parametrize("damage_blob", [False, True], ids=["truncated", "truncated-and-damaged"])
def test_a_truncated_pack_in_a_bucket_is_one_finding(weed, tmp_path, rng, damage_blob) -> None:
    from cairn.store.content.repoconfig import RepoConfig
    from cairn.store.repository import Repository

    prefix = f"t-{uuid.uuid4().hex[:12]}"
    repo = Repository.init(weed.backend(prefix), RepoConfig.new(pack_size=256 * 1024))
    try:
        src = tmp_path / "src"
        make_tree(str(src), rng, files=24)
        s = backup(repo, src)
        pack, data, flipped = truncated_pack(repo, damage_blob=damage_blob)
    finally:
        repo.close()
    weed.client().put_object(Bucket=weed.bucket, Key=f"{prefix}/packs/{pack[:2]}/{pack}", Body=data)
    repo = Repository.open(weed.backend(prefix))
    try:
        for kw in ({"read_data": True}, {"read_data": True, "set_ref": s.id}):
            report = repo.check(**kw)
            assert_truncated_once(report, pack, flipped)
        assert_truncated_once(repo.check(), pack, None)
    finally:
        repo.close()
