"""The S3 backend on a real object store (SeaweedFS on loopback): create-once writes under
contention, one clear line at open for each way a location can be wrong, a repository round
trip, and opening through the daemon's location helper."""

from __future__ import annotations

import os
import threading
import time

import pytest
from cairn.store.errors import BackendError, NotARepositoryError, NotFoundError
from cairn.store.locations import S3Options, open_repository
from cairn.store.repository import Repository
from cairn.store.storage.s3 import S3Backend
from s3server import ACCESS_KEY, SECRET_KEY, free_ports
from storekit import backup, make_tree, restore_and_compare


def test_seaweedfs_honours_conditional_writes(weed):
    assert weed.backend().conditional_writes is True


def test_sixteen_racers_put_if_absent_exactly_one_wins(weed):
    # One backend (client, connection pool) per racer, as on 16 hosts: nothing in-process orders them.
    racers = [weed.backend("racers") for _ in range(16)]
    b = racers[0]
    barrier = threading.Barrier(16)
    results: dict[int, bool] = {}

    def race(i: int) -> None:
        barrier.wait()
        results[i] = racers[i].put_if_absent("locks", "race", f"writer {i}".encode())

    threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [i for i, won in results.items() if won]
    assert len(results) == 16 and len(winners) == 1, results
    assert b.get("locks", "race") == f"writer {winners[0]}".encode()


def _one_line_error(exc_type, make, within: float = 60.0) -> str:
    started = time.monotonic()
    with pytest.raises(exc_type) as info:
        make()
    assert time.monotonic() - started < within
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_bucket_is_one_line_at_open(weed):
    msg = _one_line_error(NotFoundError, lambda: S3Backend(
        "no-such-bucket", "p", endpoint=weed.endpoint, credentials_file=weed.credentials_file()))
    assert msg == f"bucket 'no-such-bucket' does not exist at endpoint {weed.endpoint}"


def test_wrong_credentials_are_one_line_at_open(weed, tmp_path):
    creds = tmp_path / "creds"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = wrong\n")
    msg = _one_line_error(BackendError, lambda: S3Backend(
        weed.bucket, "p", endpoint=weed.endpoint, credentials_file=str(creds)))
    assert msg.startswith(f"S3 credentials were refused by {weed.endpoint} for bucket '{weed.bucket}'")


def test_unknown_access_key_is_one_line_at_open(weed, tmp_path):
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n")
    msg = _one_line_error(BackendError, lambda: S3Backend(
        weed.bucket, "p", endpoint=weed.endpoint, credentials_file=str(creds)))
    assert "S3 credentials were refused" in msg or "access denied" in msg


def test_unreachable_endpoint_is_one_line_at_open(weed):
    port = free_ports(1)[0]  # nothing listens there
    msg = _one_line_error(BackendError, lambda: S3Backend(
        weed.bucket, "p", endpoint=f"http://127.0.0.1:{port}", credentials_file=weed.credentials_file(),
        connect_timeout=2))
    assert msg == f"S3 endpoint 'http://127.0.0.1:{port}' is unreachable"


def test_missing_credentials_are_one_line_at_open(weed, monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    msg = _one_line_error(BackendError, lambda: S3Backend(weed.bucket, "p", endpoint=weed.endpoint))
    assert msg.startswith("no S3 credentials found")


def test_bad_credentials_file_is_one_line(weed, tmp_path):
    bad = tmp_path / "creds"
    bad.write_text("[other]\naws_access_key_id = x\n")
    msg = _one_line_error(BackendError, lambda: S3Backend(
        weed.bucket, "p", endpoint=weed.endpoint, credentials_file=str(bad)))
    assert msg == f"credentials file '{bad}' has no [default] section"
    msg = _one_line_error(BackendError, lambda: S3Backend(
        weed.bucket, "p", endpoint=weed.endpoint, credentials_file=str(tmp_path / "missing")))
    assert msg.startswith(f"unable to read credentials file '{tmp_path / 'missing'}'")


def test_credentials_from_the_environment(weed, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    b = S3Backend(weed.bucket, "envcreds", endpoint=weed.endpoint, region="us-east-1")
    b.put("sets", "x", b"1")
    assert b.get("sets", "x") == b"1"


def test_keys_mirror_the_local_layout(weed):
    b = weed.backend("layout")
    pack = "ab" + "12" * 31
    b.put("packs", pack, b"p")
    b.put("sets", "s1", b"s")
    keys = sorted(o["Key"] for o in weed.client().list_objects_v2(
        Bucket=weed.bucket, Prefix="layout/").get("Contents", []))
    assert keys == [f"layout/packs/ab/{pack}", "layout/sets/s1"]


def test_list_paginates_past_one_page(weed):
    b = weed.backend()
    names = sorted(f"n{i:04d}" for i in range(1100))  # a page holds 1000 keys
    for n in names:
        b.put("index", n, b"")
    assert list(b.list("index")) == names


def test_repository_backup_and_restore_round_trip(weed, tmp_path, rng):
    src = tmp_path / "src"
    make_tree(str(src), rng, files=40, max_size=256 * 1024)
    repo = Repository.init(weed.backend("roundtrip"))
    s1 = backup(repo, str(src))
    (src / "a" / "f001.bin").write_bytes(b"changed")
    s2 = backup(repo, str(src), level="incremental")
    repo.close()
    reopened = Repository.open(weed.backend("roundtrip"), read_only=True)
    assert [s.id for s in reopened.list_sets()] == [s1.id, s2.id]
    restore_and_compare(reopened, reopened.get_set(s2.id), str(src), str(tmp_path / "restored"))
    report = reopened.check(read_data=True)
    assert report.ok, report.errors
    assert report.packs_checked > 0


def test_open_repository_creates_only_when_asked(weed, tmp_path):
    creds = tmp_path / "creds"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    location = f"s3://{weed.bucket}/opened"
    opts = S3Options(endpoint=weed.endpoint, region="us-east-1", credentials_file=str(creds))
    with pytest.raises(NotARepositoryError, match=f"'{location}' is not a Cairn repository"):
        open_repository(location, opts, read_only=True)
    repo = open_repository(location, opts, create=True)
    assert repo.backend.location() == location
    repo.close()
    again = open_repository(location, opts, create=True)  # opens, does not re-initialise
    assert again.config == repo.config
    again.close()


def _put_headers(backend: S3Backend, name: str) -> dict[str, str]:
    """The headers of one PUT of `backend`, as sent."""
    seen: dict[str, str] = {}

    def capture(request, **_):
        seen.update({k.lower(): v for k, v in request.headers.items()})

    backend._s3.meta.events.register("before-send.s3.PutObject", capture)
    backend.put("locks", name, b"checksums " * 100)
    assert seen, "no PUT was sent"
    return seen


def _sdk_checksum_headers(headers: dict[str, str]) -> list[str]:
    return [h for h in headers if h.startswith("x-amz-checksum-") or h == "x-amz-sdk-checksum-algorithm"]


def test_uploads_carry_the_sdks_checksums_only_when_the_operator_asks(weed, monkeypatch, tmp_path):
    for key in ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    b = weed.backend()
    assert _sdk_checksum_headers(_put_headers(b, "plain")) == []  # refused by several S3-compatible stores
    assert b.get("locks", "plain") == b"checksums " * 100

    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")  # the operator's choice stands
    assert "x-amz-checksum-crc32" in _sdk_checksum_headers(_put_headers(weed.backend(), "from-env"))

    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION")
    (tmp_path / "config").write_text("[default]\nrequest_checksum_calculation = when_supported\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    b = weed.backend()
    assert "x-amz-checksum-crc32" in _sdk_checksum_headers(_put_headers(b, "from-config"))
    assert b.get("locks", "from-config") == b"checksums " * 100
