"""Throughput parts of the S3 backend on a real object store (SeaweedFS on loopback, reached
through a counting proxy), and their error paths on moto: several pack PUTs in flight, the
local cache sparing GETs on a second `sets` / `ls` / incremental, and a failed pack upload
failing the set with nothing committed."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile

import pytest
from cairn.store.content.crypto import Secret
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.errors import BackendError
from cairn.store.locations import S3Options, open_backend, open_repository
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository
from s3faults import FaultProxy
from storekit import restore_and_compare
from test_s3_daemon import CAIRND, cli, config, env, start, stop

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}


def make_files(root, count: int = 24, size: int = 200_000) -> None:
    for i in range(count):
        d = root / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(size))


@pytest.fixture
def proxied(weed, tmp_path):
    """(proxy, location, options): SeaweedFS behind a counting FaultProxy, a fresh prefix."""
    proxy = FaultProxy(weed.endpoint)
    location = f"s3://{weed.bucket}/thr-{os.urandom(6).hex()}"
    options = S3Options(endpoint=proxy.endpoint, region="us-east-1", credentials_file=weed.credentials_file())
    yield proxy, location, options
    proxy.close()


def object_gets(proxy: FaultProxy, kind: str) -> int:
    """GETs of objects of `kind` (listings are GETs of the bucket with a query: not counted)."""
    return sum(1 for m, p in proxy.requests if m == "GET" and f"/{kind}/" in p and "list-type" not in p)


def test_pack_uploads_overlap_on_a_real_store(proxied, tmp_path):
    proxy, location, options = proxied
    src = tmp_path / "src"
    make_files(src, count=40, size=150_000)
    small = dataclasses.replace(RepoConfig.new(), pack_size=256 * 1024)  # one backup, many packs
    repo = Repository.init(open_backend(location, options), small, secret=Secret("passphrase", b"pw"), argon2=FAST)
    repo.uploads = 4
    proxy.peak.clear()
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    assert proxy.peak["PUT"] >= 2  # several PUTs were in flight at once
    assert proxy.peak["PUT"] <= 4 + 2  # the pool's bound (plus the index and lock writers)
    restore_and_compare(repo, s, src, tmp_path / "out")
    repo.close()


def test_second_sets_ls_and_incremental_do_not_fetch_again(proxied, tmp_path):
    proxy, location, options = proxied
    src = tmp_path / "src"
    make_files(src)
    cache = str(tmp_path / "state" / "cache")
    secret = Secret("passphrase", b"pw")
    repo = open_repository(location, options, create=True, secret=secret)
    repo.close()
    repo = open_repository(location, options, secret=secret, cache_dir=cache)
    first = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    for s in repo.list_sets():
        repo.list_tree(s, "", recursive=True)
    repo.close()

    proxy.requests.clear()
    repo = open_repository(location, options, secret=secret, cache_dir=cache)  # a restarted daemon
    sets = repo.list_sets()
    listing = repo.list_tree(sets[0], "", recursive=True)
    assert len([e for e in listing if e.kind == "file"]) == 24
    assert object_gets(proxy, "index") == 0 and object_gets(proxy, "sets") == 0
    assert object_gets(proxy, "packs") == 0  # trees from the cache

    (src / "d1" / "f1").write_bytes(b"changed")
    proxy.requests.clear()
    inc = repo.backup(BackupRequest(source="s", paths=(str(src),), level="incremental"))
    assert inc.base == first.id and inc.stats.modified == 1
    assert object_gets(proxy, "packs") == 0 and object_gets(proxy, "index") == 0
    repo.close()

    # the same steps without a cache go to the store
    proxy.requests.clear()
    bare = open_repository(location, options, secret=secret)
    for s in bare.list_sets():
        bare.list_tree(s, "", recursive=True)
    assert object_gets(proxy, "index") >= 1 and object_gets(proxy, "sets") >= 2
    assert object_gets(proxy, "packs") >= 1
    bare.close()


def test_a_failed_pack_upload_fails_the_set_and_commits_nothing(faulty, tmp_path):
    proxy, make = faulty
    src = tmp_path / "src"
    make_files(src, count=30, size=150_000)
    small = dataclasses.replace(RepoConfig.new(), pack_size=256 * 1024)
    repo = Repository.init(make(attempts=1, sdk_attempts=1), small)
    repo.uploads = 3
    proxy.add("PUT", "status", times=1, status=500, code="InternalError", path="/packs/")
    with pytest.raises(BackendError, match=r"unable to write packs object .*InternalError"):
        repo.backup(BackupRequest(source="s", paths=(str(src),)))
    assert repo.list_sets() == []
    assert list(repo.backend.list("sets")) == []
    # the store is fine again: the next set is complete
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    restore_and_compare(repo, s, src, tmp_path / "out")


def test_cairnd_restarted_serves_sets_and_ls_from_its_cache(weed, proxied):
    """Through the real daemon and client: after a restart on the same state directory,
    `cairn sets` and `cairn ls` fetch no index file, set object or tree from the bucket."""
    proxy, location, _options = proxied
    rundir = tempfile.mkdtemp(prefix="cairn-thr-", dir="/tmp")  # short: socket paths are limited
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    for i in range(12):
        os.makedirs(os.path.join(src, f"d{i % 3}"), exist_ok=True)
        with open(os.path.join(src, f"d{i % 3}", f"f{i}"), "wb") as f:
            f.write(os.urandom(50_000))
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("pw\n")
    repo = (f'path = "{location}"\nendpoint = "{proxy.endpoint}"\nregion = "us-east-1"\n'
            f'credentials_file = "{weed.credentials_file()}"\npassphrase_file = "{passphrase}"\n')
    cfg = config(rundir, repo, src)
    assert subprocess.run([CAIRND, "--config", cfg, "--init"], capture_output=True, env=env(),
                          timeout=60).returncode == 0
    proc = start(rundir, cfg)
    try:
        assert cli(rundir, "backup", "--level", "full").returncode == 0
        assert cli(rundir, "ls", "latest", "d1").returncode == 0
    finally:
        stop(proc)
    assert os.listdir(os.path.join(rundir, "state", "cache"))  # the cache lives in the state directory
    proxy.requests.clear()
    proc = start(rundir, cfg)  # start-up itself (the index load) reads through the cache too
    try:
        sets = cli(rundir, "sets")
        listing = cli(rundir, "ls", "latest", "d1")
        assert sets.returncode == 0 and listing.returncode == 0, sets.stderr + listing.stderr
        assert "f1" in listing.stdout
        assert object_gets(proxy, "index") == 0 and object_gets(proxy, "sets") == 0
        assert object_gets(proxy, "packs") == 0
    finally:
        stop(proc)
        shutil.rmtree(rundir, ignore_errors=True)


def test_a_pack_upload_copies_nothing_and_arrives_whole_also_when_retried(weed, faulty):
    """A pack's PUT sends the writer's buffer as it is: tracemalloc sees no allocation of the
    pack's size while it is uploaded (a copy per upload in flight was 16 MiB each), and the
    stored object is byte-identical, on SeaweedFS and, after a 503 made the SDK rewind the
    body and send it again, on moto behind the fault proxy."""
    import tracemalloc

    data = bytearray(os.urandom(8 * 2**20))
    b = open_backend(f"s3://{weed.bucket}/nocopy-{os.urandom(6).hex()}",
                     S3Options(endpoint=weed.endpoint, region="us-east-1",
                               credentials_file=weed.credentials_file()))
    b.put("packs", "ab" * 32, bytes(1))  # the client's connection and first-call set-up, untraced
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        b.put("packs", "cd" * 32, data)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < len(data) // 4, f"uploading 8 MiB allocated {peak} bytes at its peak"
    assert b.get("packs", "cd" * 32) == data
    proxy, make = faulty
    retried = make()
    proxy.add("PUT", "status", times=1, status=503, code="SlowDown", path="/packs/")
    proxy.requests.clear()
    retried.put("packs", "ef" * 32, data)
    assert sum(1 for m, p in proxy.requests if m == "PUT" and "/packs/" in p) == 2, proxy.requests
    assert retried.get("packs", "ef" * 32) == data
