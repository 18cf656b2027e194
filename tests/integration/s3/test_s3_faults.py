"""Error paths of the S3 backend, fast, on moto behind a fault-injecting proxy: throttling and
500s are retried as whole operations within a bound, a PUT whose answer never came is never
reported as stored, and a store that ignores If-None-Match is detected at open."""

from __future__ import annotations

import time

import pytest
from cairn.store.errors import BackendError, NotFoundError

PACK = "ab" + "cd" * 31


def test_throttling_beyond_botocores_retries_is_retried_as_a_whole(faulty):
    proxy, make = faulty
    b = make(attempts=3, sdk_attempts=2)
    proxy.seen.clear()
    proxy.add("PUT", "status", times=3, status=503, code="SlowDown")  # botocore alone gives up after 2
    b.put("packs", PACK, b"data")
    assert proxy.seen["PUT"] == 4
    assert b.get("packs", PACK) == b"data"


def test_retries_are_bounded_and_the_last_error_is_one_clear_line(faulty):
    proxy, make = faulty
    b = make(attempts=2)
    proxy.add("GET", "status", times=100, status=500, code="InternalError")
    b.put("sets", "s1", b"x")
    proxy.seen.clear()
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        b.get("sets", "s1")
    assert time.monotonic() - started < 30
    assert proxy.seen["GET"] == 6  # 2 whole attempts x 3 botocore attempts
    msg = str(info.value)
    assert "\n" not in msg and "unable to read sets object 's1'" in msg and "InternalError" in msg
    assert "after 2 attempts" in msg


def test_client_errors_are_not_retried(faulty):
    proxy, make = faulty
    b = make(attempts=4)
    proxy.seen.clear()
    proxy.add("PUT", "status", times=1, status=403, code="AccessDenied")
    with pytest.raises(BackendError, match="AccessDenied"):
        b.put("sets", "s1", b"x")
    assert proxy.seen["PUT"] == 1


def test_a_put_that_fails_after_its_body_was_sent_is_never_reported_stored(faulty):
    proxy, make = faulty
    b = make(attempts=1)
    proxy.add("PUT", "drop_before_store", times=10)
    with pytest.raises(BackendError, match="unable to write packs object"):
        b.put("packs", PACK, b"body" * 1000)
    proxy.faults.clear()
    with pytest.raises(NotFoundError):
        b.get("packs", PACK)


def test_a_put_whose_body_was_lost_is_sent_again(faulty):
    proxy, make = faulty
    b = make(attempts=4)
    proxy.add("PUT", "drop_before_store", times=4)  # botocore retries 3, then Cairn once more
    b.put("packs", PACK, b"body" * 1000)
    assert b.get("packs", PACK) == b"body" * 1000


def test_put_if_absent_whose_answer_was_lost_still_knows_it_won(faulty):
    proxy, make = faulty
    b = make(attempts=4)
    assert b.conditional_writes is True
    proxy.add("PUT", "drop_after_store", times=3)  # stored, answer lost; retries then meet 412
    assert b.put_if_absent("locks", "l1", b"mine") is True
    assert b.get("locks", "l1") == b"mine"
    assert b.put_if_absent("locks", "l1", b"other") is False
    assert b.get("locks", "l1") == b"mine"


def test_put_if_absent_after_a_lost_answer_loses_to_different_content(faulty):
    proxy, make = faulty
    b = make(attempts=4)
    b.put_if_absent("locks", "l2", b"theirs")
    assert b.put_if_absent("locks", "l2", b"mine") is False
    assert b.get("locks", "l2") == b"theirs"


def test_a_store_that_ignores_if_none_match_is_detected_at_open(faulty):
    proxy, make = faulty
    assert make().conditional_writes is True
    proxy.strip_conditional = True
    b = make()
    assert b.conditional_writes is False
    # Within one process the fallback still creates once.
    assert b.put_if_absent("locks", "l3", b"first") is True
    assert b.put_if_absent("locks", "l3", b"second") is False
    assert b.get("locks", "l3") == b"first"


def test_the_probe_object_is_removed(faulty):
    proxy, make = faulty
    b = make()
    import boto3

    host, port = proxy.upstream
    c = boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="x", aws_secret_access_key="y",
                     region_name="us-east-1")
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=b.bucket).get("Contents", [])]
    assert not [k for k in keys if "/probe/" in k]


def test_probe_objects_left_where_deletes_were_denied_are_swept_by_a_later_open(faulty, monkeypatch):
    """A write-only host's policy may deny the probe's delete: its probe objects stay, and the
    next open by a host that may delete removes those older than an hour."""
    import boto3
    from cairn.store.storage import s3

    proxy, make = faulty
    b = make()
    host, port = proxy.upstream
    c = boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="x", aws_secret_access_key="y",
                     region_name="us-east-1")
    base = f"{b.prefix}/probe/".lstrip("/")
    c.put_object(Bucket=b.bucket, Key=base + "conditional-left", Body=b"1")
    make()  # younger than an hour: kept
    assert [o["Key"] for o in c.list_objects_v2(Bucket=b.bucket, Prefix=base).get("Contents", [])] == \
        [base + "conditional-left"]
    monkeypatch.setattr(s3, "PROBE_MAX_AGE", -1.0)  # as if an hour had passed
    make()
    assert not c.list_objects_v2(Bucket=b.bucket, Prefix=base).get("Contents")


def test_small_pack_reads_share_block_gets_and_stay_exact(faulty):
    import random

    proxy, make = faulty
    b = make(read_block=4096, cached_blocks=4)
    data = random.Random(7).randbytes(5 * 4096 + 123)
    b.put("packs", PACK, data)
    proxy.seen.clear()
    # A restore reads a pack's chunks in order: one GET per block, not per chunk.
    pos = 0
    while pos < len(data):
        assert b.get_range("packs", PACK, pos, 100) == data[pos:pos + 100]
        pos += 100
    assert proxy.seen["GET"] == 6
    # Reads across block boundaries, at the end and past it are exact.
    rng = random.Random(8)
    for _ in range(60):
        off, n = rng.randrange(0, len(data) + 50), rng.randrange(1, 9000)
        assert b.get_range("packs", PACK, off, n) == data[off:off + n]
    # Rewriting or deleting a pack drops its blocks.
    b.put("packs", PACK, data[::-1])
    assert b.get_range("packs", PACK, 10, 20) == data[::-1][10:30]
    b.delete("packs", PACK)
    with pytest.raises(NotFoundError):
        b.get_range("packs", PACK, 10, 20)


def test_a_failed_block_read_is_not_kept(faulty):
    proxy, make = faulty
    b = make(read_block=4096, attempts=1, sdk_attempts=1)
    b.put("packs", PACK, b"x" * 5000)
    proxy.add("GET", "status", times=1, status=500, code="InternalError")
    with pytest.raises(BackendError):
        b.get_range("packs", PACK, 0, 10)
    assert b.get_range("packs", PACK, 0, 10) == b"x" * 10


def test_the_next_block_is_read_ahead(faulty):
    proxy, make = faulty
    b = make(read_block=4096, cached_blocks=8)
    data = bytes(range(256)) * 40  # 10240 bytes: blocks 0, 1 full, 2 partial
    b.put("packs", PACK, data)
    proxy.seen.clear()
    assert b.get_range("packs", PACK, 0, 10) == data[:10]
    deadline = time.monotonic() + 30
    while proxy.seen["GET"] < 2:  # block 1 comes without being asked for
        assert time.monotonic() < deadline, "block 1 was not read ahead"
        time.sleep(0.01)
    while not b._blocks.has((PACK, 2)):  # reading ahead goes on only as blocks are used
        assert proxy.seen["GET"] == 2 and time.monotonic() < deadline
        b.get_range("packs", PACK, 4096, 10)
        time.sleep(0.01)
    assert b.get_range("packs", PACK, 8192, 100) == data[8192:8292]
    assert proxy.seen["GET"] == 3  # block 2 is short: the pack ends there, nothing more is read
    b.close()


def test_no_read_ahead_when_turned_off(faulty):
    proxy, make = faulty
    b = make(read_block=4096, readahead=False)
    b.put("packs", PACK, bytes(10240))
    proxy.seen.clear()
    b.get_range("packs", PACK, 0, 10)
    b.close()
    assert proxy.seen["GET"] == 1


def test_a_store_that_stops_answering_stops_a_restore_instead_of_failing_each_file(faulty, tmp_path):
    """Every GET of a pack fails with 503 past every retry (the store is down): the restore
    stops with one UnavailableError after a bounded number of requests; it does not go on
    failing file after file, each after its own retries (hours for a large tree)."""
    import os

    from cairn.store.content.chunker import ChunkerParams
    from cairn.store.content.repoconfig import RepoConfig
    from cairn.store.errors import UnavailableError
    from cairn.store.model import BackupRequest
    from cairn.store.repository import Repository

    proxy, make = faulty
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        (src / f"f{i:02d}").write_bytes(os.urandom(40_000))
    config = RepoConfig.new(pack_size=64 * 1024, chunker=ChunkerParams(min_size=8192, avg_size=16384,
                                                                      max_size=65536))
    Repository.init(make(), config).close()
    repo = Repository.open(make(attempts=2, sdk_attempts=1, read_block=4096, cached_blocks=1),
                           cache_dir=str(tmp_path / "cache"))
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    assert len(repo.list_tree(s, "", recursive=True)) == 60  # the trees are in the local cache now
    tree = s.tree
    end = time.monotonic() + 10
    while repo.cache.get("trees", tree) is None:  # written in the background
        assert time.monotonic() < end, "the tree never reached the cache"
        time.sleep(0.01)
    proxy.add("GET", "status", times=100_000, status=503, code="SlowDown", path="/packs/")
    proxy.seen.clear()
    with pytest.raises(UnavailableError, match="after 2 attempts"):
        repo.restore(s, str(tmp_path / "out"))
    assert proxy.seen["GET"] < 200, proxy.seen  # 60 files of several chunks would be far more
    repo.close()
