"""An index file lost from a bucket (real SeaweedFS, a real cairnd): the packs it named are
unindexed but hold what every set needs, and the daemon's cache still serves the trees. `cairn
prune` (with or without a policy, also --dry-run) refuses and deletes nothing; `cairn verify`
says the packs' index file was deleted or lost and sends to `cairn repair index`; after it,
prune runs and every set restores. And one index file deleted while the daemon runs with the
base's trees in its cache: the incremental the change journal drives still restores whole."""

from __future__ import annotations

import json
import os
import shutil
import time

from s3daemons import Host, s3_repository
from storekit import assert_same_tree, make_tree


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


def _wait_journal(h: Host, what: str) -> None:
    """Until the journal of the one source is complete and names a changed path."""
    end = time.monotonic() + 15
    while True:
        j = json.loads(h.ok("--json", "status"))["sources"][0]
        if j["journal_state"] == "complete" and j["pending_paths"] >= 1:
            return
        assert time.monotonic() < end, f"timed out waiting for the journal to name {what}"
        time.sleep(0.1)


def test_an_incremental_after_one_index_file_was_deleted_restores_whole(weed, creds, rundir, rng):
    """One index object deleted from the bucket (the full's), while the daemon runs with every
    tree of its base in its cache: the incremental the journal drives (it names c.txt only)
    reads again what no index file names and restores whole; verify names the pack as one whose
    index file is gone; `repair index` makes the repository clean and every set restores."""
    src = os.path.join(rundir, "src")
    make_tree(src, rng, files=12, max_size=128 * 1024, dirs=("a", "a/b", "c"))
    past = time.time() - 3600  # older than the sets: not read again by the racy-timestamp rule
    for d, _dirs, files in os.walk(src):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("one index gone\n")
    prefix = f"gone-{os.path.basename(rundir)}"
    h = Host(rundir, "alpha", s3_repository(weed, creds, prefix, passphrase), {"app": src}, watch=True)
    h.init()
    h.start()
    client = weed.client()

    def index_keys() -> set[str]:
        listed = client.list_objects_v2(Bucket=weed.bucket, Prefix=f"{prefix}/index/").get("Contents", [])
        return {o["Key"] for o in listed}

    try:
        full = json.loads(h.ok("--json", "backup", "--level", "full"))
        as_full = os.path.join(rundir, "as-full")
        shutil.copytree(src, as_full, symlinks=True)
        (first,) = index_keys()
        with open(os.path.join(src, "c", "late.txt"), "w") as f:
            f.write("after the full\n")
        _wait_journal(h, "c/late.txt")
        inc = json.loads(h.ok("--json", "backup", "--level", "incremental"))
        assert inc["extra"]["changes"] == "journal", inc["extra"]
        client.delete_object(Bucket=weed.bucket, Key=first)
        with open(os.path.join(src, "c", "later.txt"), "w") as f:
            f.write("after the index file went\n")
        _wait_journal(h, "c/later.txt")
        s = json.loads(h.ok("--json", "backup", "--level", "incremental"))
        assert s["level"] == "incremental" and s["extra"]["changes"] == "journal", s
        h.ok("restore", s["id"], "--target", os.path.join(rundir, "out"))
        assert_same_tree(src, os.path.join(rundir, "out"))

        r = h.cli("verify")
        assert r.returncode == 1 and "its index file was deleted or lost; 'cairn repair index' indexes it again" \
            in r.stdout, (r.stdout, r.stderr)
        h.ok("repair", "index")
        assert "repository ok" in h.ok("verify", "--read-data")
        target = os.path.join(rundir, "full-again")
        h.ok("restore", full["id"], "--target", target)
        assert_same_tree(as_full, target)
    finally:
        h.stop()


def test_a_data_pack_deleted_with_its_index_file_is_read_again(weed, creds, rundir):
    """A pack of file data and the index file naming it both deleted from the bucket (a lifecycle
    rule expiring both) while the daemon runs, after it found the untouched directory wholly
    indexed: to it that looks like a collection's work. The incremental the journal drives must
    still walk that directory and read the lost file from the source again, so it restores whole
    (and so do the older sets, whose chunks it stores again)."""
    from cairn.store.content import crypto
    from cairn.store.content.index import decode_index
    from cairn.store.content.packs import TYPE_DATA
    from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
    from cairn.store.repository import Repository

    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "a"))
    with open(os.path.join(src, "a", "big.bin"), "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024))  # more than the 32 packs one index file names
    with open(os.path.join(src, "c.txt"), "w") as f:
        f.write("c\n")
    past = time.time() - 3600  # older than the sets: not read again by the racy-timestamp rule
    for path in (os.path.join(src, "a", "big.bin"), os.path.join(src, "c.txt")):
        os.utime(path, (past, past))
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("data pack gone\n")
    prefix = f"data-{os.path.basename(rundir)}"
    secret = crypto.Secret.from_passphrase_file(passphrase)
    config = RepoConfig.new(pack_size=64 * 1024,
                            chunker=ChunkerParams(min_size=8 * 1024, avg_size=16 * 1024, max_size=64 * 1024))
    Repository.init(weed.backend(prefix), config, secret=secret).close()
    h = Host(rundir, "alpha", s3_repository(weed, creds, prefix, passphrase), {"app": src}, watch=True)
    h.start()
    client = weed.client()
    try:
        h.ok("backup", "--level", "full")
        with open(os.path.join(src, "c.txt"), "w") as f:
            f.write("changed\n")
        _wait_journal(h, "c.txt")
        inc = json.loads(h.ok("--json", "backup", "--level", "incremental"))  # a/ found whole, carried
        assert inc["extra"]["changes"] == "journal", inc["extra"]

        repo = Repository.open(weed.backend(prefix), read_only=True, secret=secret)
        try:
            files = {name: decode_index(name, repo.backend.get("index", name)) for name in repo.backend.list("index")}
        finally:
            repo.close()
        name, packs = next((n, p) for n, p in sorted(files.items())
                           if all(e.type == TYPE_DATA for entries in p.values() for e in entries))
        client.delete_object(Bucket=weed.bucket, Key=f"{prefix}/index/{name}")
        for pack in packs:
            client.delete_object(Bucket=weed.bucket, Key=f"{prefix}/packs/{pack[:2]}/{pack}")
        with open(os.path.join(src, "c.txt"), "w") as f:
            f.write("changed again\n")
        _wait_journal(h, "c.txt")
        s = json.loads(h.ok("--json", "backup", "--level", "incremental"))
        assert s["level"] == "incremental" and s["base"] == inc["id"] and s["extra"]["changes"] == "journal", s
        assert s["stats"]["bytes_read"] >= 3 * 1024 * 1024, s["stats"]  # the lost file, read again
        h.ok("restore", s["id"], "--target", os.path.join(rundir, "out"))
        assert_same_tree(src, os.path.join(rundir, "out"))
        assert "repository ok: 3 sets" in h.ok("verify", "--read-data")
    finally:
        h.stop()
