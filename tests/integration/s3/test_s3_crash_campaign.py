"""Crash campaign on an object store: the real daemon on a SeaweedFS bucket SIGKILLed at random
points of backups, prunes and `repair index`, trial after trial on one repository.

Each trial starts cairnd again on the bucket (with at most one line about the kill in its
log), takes a backup that must succeed, changes the source, starts a backup, a prune or a
repair through the client and kills the daemon after a random delay. Then, with a new daemon:
verify --read-data is clean, every listed set restores identical to the tree it captured, and
no set vanished that no prune could have forgotten. The local campaign
(tests/integration/daemon/test_daemon_crash_campaign.py) does the same on a directory.

CAIRN_CRASH_SEED picks the random points, CAIRN_CRASH_TRIALS how many trials (4 by default,
sized for the suite: about 8 s a trial).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from cairnd_harness import snapshot
from s3daemons import CAIRN, Host, clean_env, restart_after_kill, s3_repository
from s3kit import file_facts

SEED = int(os.environ.get("CAIRN_CRASH_SEED", "5309"))
TRIALS = int(os.environ.get("CAIRN_CRASH_TRIALS", "4"))
FILE = 256 * 1024


def _mutate(src: str, rng: random.Random) -> None:
    for _ in range(rng.randint(4, 10)):
        name = os.path.join(src, f"d{rng.randrange(3)}", f"f{rng.randrange(24):02d}")
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "wb") as f:
            f.write(rng.randbytes(rng.randint(1, FILE)))
    if rng.random() < 0.3:
        victims = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
        if victims:
            os.unlink(rng.choice(victims))


def _check(host: Host, expected: dict[str, dict], rundir: str, tag: str, restored: set[str]) -> None:
    report = json.loads(host.cli("--json", "verify", "--read-data").stdout)
    # a pack a killed backup or prune left unindexed is a warning the next prune clears; nothing else is allowed
    odd = [w for w in report["warnings"] if not w["message"].endswith("prune removes it")]
    assert report["ok"] and not report["errors"] and not odd, f"{tag}: verify: {report}"
    for s in json.loads(host.ok("--json", "sets")):
        sid = s["id"]
        assert sid in expected, f"{tag}: set {sid[:8]} appeared from nowhere"
        if sid in restored:
            continue
        target = os.path.join(rundir, f"r-{sid[:12]}")
        host.ok("restore", sid, "--target", target)
        assert file_facts(snapshot(target)) == expected[sid], f"{tag}: set {sid[:8]} restores different"
        shutil.rmtree(target)
        restored.add(sid)


@pytest.mark.slow
@pytest.mark.campaign
def test_daemon_on_a_bucket_killed_at_random_points(weed):
    rng = random.Random(SEED)
    tag = f"seed {SEED} (CAIRN_CRASH_SEED={SEED} replays it)"
    rundir = tempfile.mkdtemp(prefix="cairn-s3crash-", dir="/tmp")  # short: socket paths are limited
    prefix = f"crash-{SEED}-{os.getpid()}"
    host = None
    try:
        src = os.path.join(rundir, "src")
        for i in range(24):
            p = os.path.join(src, f"d{i % 3}", f"f{i:02d}")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(rng.randbytes(FILE))
        passphrase = os.path.join(rundir, "repo.pass")
        with open(passphrase, "w") as f:
            f.write("crash campaign\n")
        host = Host(rundir, "h", s3_repository(weed, weed.credentials_file(), prefix, passphrase), {"data": src})
        host.init()
        host.start()
        expected: dict[str, dict] = {}
        restored: set[str] = set()
        ops: dict[str, int] = {}
        for trial in range(TRIALS):
            where = f"{tag}, trial {trial}"
            r = host.cli("--json", "backup", "--level", rng.choice(["full", "incremental"]))
            assert r.returncode == 0, f"{where}: backup after a crash failed:\n{r.stdout}\n{r.stderr}"
            expected[json.loads(r.stdout)["id"]] = file_facts(snapshot(src))
            _mutate(src, rng)
            captured = file_facts(snapshot(src))
            op = rng.choice(["backup", "backup", "prune", "repair"])
            ops[op] = ops.get(op, 0) + 1
            if op == "backup":
                argv = ["--json", "backup", "--level", rng.choice(["full", "incremental"])]
            elif op == "prune":
                argv = ["--json", "prune", "--keep-full", str(rng.randint(1, 2)), "--keep-incremental",
                        str(rng.randint(0, 2))]
            else:
                argv = ["repair", "index"]
            before = set(expected)
            client = subprocess.Popen([CAIRN, "--socket", host.socket, *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=clean_env())
            time.sleep(rng.uniform(0.1, 1.2))
            assert host.proc is not None
            host.proc.send_signal(signal.SIGKILL)
            host.proc.wait(10)
            out, err = client.communicate(timeout=60)
            assert "Traceback" not in err, f"{where}: {err}"
            restart_after_kill(host)
            listed = {s["id"] for s in json.loads(host.ok("--json", "sets"))}
            if op == "backup":
                new = listed - before
                assert len(new) <= 1, f"{where}: more than one new set"
                for sid in new:
                    expected[sid] = captured
                assert before <= listed, f"{where}: a backup made sets vanish"
            else:
                assert listed <= before, f"{where}: a {op} added a set"
                assert op == "prune" or listed == before, f"{where}: a repair made sets vanish"
            for gone in before - listed:
                del expected[gone]
            _check(host, expected, rundir, f"t{trial}", restored)
        print(f"{tag}: operations killed: {ops}")
        host.ok("prune", "--keep-full", "1")  # the next prune runs to the end and leaves nothing behind
        left = {k for k in _keys(weed, prefix) if k.startswith(("locks/", "gc/"))}
        assert not left, f"{tag}: left behind: {left}"
    finally:
        if host is not None:
            host.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def _keys(server, prefix: str) -> list[str]:
    client = server.client()
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix + "/"):
        out += [obj["Key"][len(prefix) + 1:] for obj in page.get("Contents", ())]
    return out
