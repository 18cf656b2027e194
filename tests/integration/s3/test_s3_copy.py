"""`cairn copy`'s store part into a bucket on a real object store (SeaweedFS on loopback): a
local repository's sets copied into a new encrypted repository under s3://bucket/prefix restore
identical from a fresh handle, and a rerun copies nothing."""

from __future__ import annotations

import uuid

from cairn.store.content import crypto
from cairn.store.copy import ORIGIN_KEY, copy_sets, open_destination
from cairn.store.locations import S3Options, open_repository
from cairn.store.repository import Repository
from storekit import assert_same_tree, backup, make_tree, write_random

KEY = crypto.Secret("keyfile", bytes(range(32)))


def test_copy_into_a_bucket_restores_identical_and_reruns_copy_nothing(weed, tmp_path, rng):
    src = tmp_path / "src"
    make_tree(str(src), rng, files=10, max_size=200_000)
    write_random(str(src / "big.bin"), 1_500_000, rng)
    local = Repository.open_local(str(tmp_path / "repo"), create=True)
    s1 = backup(local, str(src))
    write_random(str(src / "a" / "new.bin"), 100_000, rng)
    s2 = backup(local, str(src), level="incremental")
    location = f"s3://{weed.bucket}/copy-{uuid.uuid4().hex[:8]}"
    options = S3Options(endpoint=weed.endpoint, credentials_file=weed.credentials_file())

    dst = open_destination(location, KEY, options)
    try:
        report = copy_sets(local, dst)
    finally:
        dst.close()
    assert [a for a, _ in report.copied] == [s1.id, s2.id]

    again = open_repository(location, options, secret=KEY)
    try:
        assert copy_sets(local, again).copied == ()
        by_origin = {d.extra[ORIGIN_KEY]["set"]: d for d in again.list_sets()}
        for s in (s1, s2):
            a, b = tmp_path / f"a-{s.id[:6]}", tmp_path / f"b-{s.id[:6]}"
            local.restore(s, str(a))
            again.restore(by_origin[s.id], str(b))
            assert_same_tree(str(a), str(b))
        assert again.check(read_data=True).ok
    finally:
        again.close()
