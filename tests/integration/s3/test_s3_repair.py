"""`repair index` on a repository in a bucket (moto's S3 server), encrypted: a lost pack and a
damaged blob are repaired, the next backup stores them again, and every set restores."""

from __future__ import annotations

import uuid

import pytest
from s3server import ACCESS_KEY, SECRET_KEY
from storekit import assert_same_tree, backup, make_tree


@pytest.fixture
def bucket(moto_endpoint):
    import boto3

    name = f"b-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return client, name


def test_repair_index_in_a_bucket(bucket, moto_endpoint, creds, tmp_path, rng):
    from cairn.store.content import crypto
    from cairn.store.content.chunker import ChunkerParams
    from cairn.store.content.packs import TYPE_DATA
    from cairn.store.content.repoconfig import RepoConfig
    from cairn.store.repository import Repository
    from cairn.store.storage.s3 import S3Backend

    client, name = bucket
    secret = crypto.Secret("passphrase", b"pw")

    def backend() -> S3Backend:
        return S3Backend(name, "repo", endpoint=moto_endpoint, region="us-east-1", credentials_file=creds,
                         backoff=0.01)

    config = RepoConfig.new(pack_size=96 * 1024, chunker=ChunkerParams(min_size=8 * 1024, avg_size=16 * 1024,
                                                                      max_size=64 * 1024))
    repo = Repository.init(backend(), config, secret=secret, argon2={"memory_kib": 1024, "iterations": 1, "lanes": 1})
    src = tmp_path / "src"
    make_tree(str(src), rng, files=10, max_size=100_000)
    s1 = backup(repo, src)
    loc = next(loc for _b, loc in sorted(repo.index.items()) if loc.type == TYPE_DATA)
    damaged = loc.pack  # the source does not change: the next backup stores all it loses again
    lost = next(p for p in sorted(repo.index.packs()) if p != damaged)
    repo.close()
    client.delete_object(Bucket=name, Key=f"repo/packs/{lost[:2]}/{lost}")
    key = f"repo/packs/{damaged[:2]}/{damaged}"
    data = bytearray(client.get_object(Bucket=name, Key=key)["Body"].read())
    data[loc.offset + loc.stored_len // 2] ^= 0x01
    client.put_object(Bucket=name, Key=key, Body=bytes(data))

    repo = Repository.open(backend(), secret=secret)
    assert not repo.check(read_data=True).ok
    r = repo.repair_index(read_data=True)
    assert r.missing_packs == (lost,) and r.damaged_packs == (damaged,) and r.entries_damaged == 1
    backup(repo, src, level="full")
    for s in repo.list_sets():
        target = str(tmp_path / f"r-{s.id[:8]}")
        assert repo.restore(s, target).errors == ()
        assert_same_tree(str(src), target)
    assert s1.id in {s.id for s in repo.list_sets()}
    assert repo.check(read_data=True).ok
    repo.close()
