"""Restore fidelity on a repository in a bucket (SeaweedFS): the restore-fidelity campaign's tree
(tests/integration/daemon/fidelitykit.py: every kind of entry, hard links across directories,
xattrs, ACLs, capabilities, odd names, a path over PATH_MAX) backed up through the real daemon
into an encrypted s3:// repository, a full and an incremental set, and each restored written by
the daemon, streamed, and by `--delta --delete` onto the other set's tree. The S3 path differs
from a local repository in how packs and trees are read (ranged GETs, the local cache of trees,
a fresh host's empty cache); the result must not.

CAIRN_FIDELITY_SEED picks the tree (printed on failure: set it to replay a run)."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
from fidelitykit import Builder, differences, snapshot
from test_s3_daemon import CAIRND, cli, config, env, repository, start, stop

SEED = int(os.environ.get("CAIRN_FIDELITY_SEED", "4111"))


def _ok(rundir: str, *args: str) -> str:
    r = cli(rundir, *args)
    assert r.returncode == 0, f"cairn {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.campaign
@pytest.mark.skipif(os.geteuid() != 0, reason="owners, device nodes and trusted.* attributes need root")
def test_a_bucket_gives_back_every_kind_of_entry_and_its_metadata(weed, creds, rundir) -> None:
    tag = f"seed {SEED}: CAIRN_FIDELITY_SEED={SEED} replays it"
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    b = Builder(src, random.Random(SEED))
    b.build()
    passphrase = os.path.join(rundir, "repo.pass")
    with open(passphrase, "w") as f:
        f.write("fidelity on a bucket\n")
    repo = repository(weed, creds) + f'\npassphrase_file = "{passphrase}"'
    made = subprocess.run([CAIRND, "--config", config(rundir, repo, src), "--init"], capture_output=True, text=True,
                          env=env(), timeout=60)
    assert made.returncode == 0, made.stderr
    sets, snaps = [], []
    proc = start(rundir, config(rundir, repo, src))
    try:
        for level in ("full", "incremental"):
            if level != "full":
                b.mutate()
            snaps.append(snapshot(src))
            sets.append(json.loads(_ok(rundir, "--json", "backup", "--level", level))["id"])
    finally:
        stop(proc)
    # a fresh host: an empty state directory, so every tree comes from the bucket
    proc = start(rundir, config(rundir, repo, src, state="fresh-state", read_only=True))
    try:
        for i, set_id in enumerate(sets):
            for route in ((), ("--stream",)):
                target = os.path.join(rundir, f"t{i}{'s' if route else ''}")
                _ok(rundir, "restore", set_id, "--target", target, *route)
                diffs = differences(snaps[i], snapshot(target))
                assert not diffs, f"restore {' '.join(route)} of set {i} ({tag}):\n" + "\n".join(diffs)
        for i, onto in ((1, "t0"), (0, "t1s")):
            target = os.path.join(rundir, onto)
            _ok(rundir, "restore", sets[i], "--target", target, "--delta", "--delete")
            diffs = differences(snaps[i], snapshot(target))
            assert not diffs, f"--delta of set {i} onto {onto} ({tag}):\n" + "\n".join(diffs)
    finally:
        stop(proc)
