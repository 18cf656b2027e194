"""An index file lost from a bucket (real SeaweedFS, a real cairnd): the packs it named are
unindexed but hold what every set needs, and the daemon's cache still serves the trees. `cairn
prune` (with or without a policy, also --dry-run) refuses and deletes nothing; `cairn verify`
says the packs' index file was deleted or lost and sends to `cairn repair index`; after it, prune runs and every
set restores."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from s3daemons import Host, s3_repository
from storekit import assert_same_tree, make_tree


@pytest.fixture
def rundir():
    path = tempfile.mkdtemp(prefix="cairn-lost-", dir="/tmp")  # short: socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_prune_keeps_what_a_lost_index_file_named(weed, creds, rundir, rng):
    src = os.path.join(rundir, "src")
    make_tree(src, rng, files=12, max_size=256 * 1024)
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("lost index\n")
    prefix = f"lost-{os.path.basename(rundir)}"
    h = Host(rundir, "alpha", s3_repository(weed, creds, prefix, passphrase), {"app": src})
    h.init()
    h.start()
    try:
        first = h.ok("backup", "--level", "full").strip().splitlines()[-1]
        with open(os.path.join(src, "late.txt"), "w") as f:
            f.write("after the first set\n")
        second = h.ok("backup", "--level", "incremental").strip().splitlines()[-1]
        h.ok("ls", "-r", first)
        h.ok("ls", "-r", second)  # the daemon's cache holds every tree now: prune can walk each set
        client = weed.client()
        listed = client.list_objects_v2(Bucket=weed.bucket, Prefix=f"{prefix}/")["Contents"]
        packs = sorted(o["Key"] for o in listed if "/packs/" in o["Key"])
        for o in listed:
            if "/index/" in o["Key"]:
                client.delete_object(Bucket=weed.bucket, Key=o["Key"])

        for args in (("prune", "--dry-run"), ("prune",), ("prune", "--keep-last", "1")):
            r = h.cli(*args)
            assert r.returncode == 1 and "in no index file; nothing may be deleted" in r.stderr, (args, r.stderr)
            assert "cairn repair index" in r.stderr
        left = client.list_objects_v2(Bucket=weed.bucket, Prefix=f"{prefix}/packs/")["Contents"]
        assert sorted(o["Key"] for o in left) == packs
        r = h.cli("verify")
        said = r.stdout + r.stderr
        assert r.returncode == 1 and "its index file was deleted or lost; 'cairn repair index' indexes it again" in said

        h.ok("repair", "index")
        h.ok("prune", "--keep-last", "1")
        assert h.ok("verify", "--read-data")
        for set_id, want in ((second, src),):
            target = os.path.join(rundir, f"t-{set_id[:8]}")
            h.ok("restore", set_id, "--target", target)
            assert_same_tree(want, target)
    finally:
        h.stop()
