"""A write-only host on a repository in a bucket (SeaweedFS), through the real daemon and client:
a full-key host provisions the key, the write-only host backs up full and incremental, refuses
prune and restore (the bucket is unchanged), and a fresh full-key host restores its set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

from s3kit import bucket_etags
from storekit import assert_same_tree, make_tree

BIN = os.path.dirname(sys.executable)
CAIRND, CAIRN = os.path.join(BIN, "cairnd"), os.path.join(BIN, "cairn")


def _env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CAIRN_SOCKET")}
    out["AWS_EC2_METADATA_DISABLED"] = "true"
    return out


def _config(rundir: str, repository: str, secret: str, source: str, state: str, read_only: bool = False) -> str:
    path = os.path.join(rundir, f"{state}.toml")
    with open(path, "w") as f:
        f.write(f'[repository]\n{repository}{secret}\n[daemon]\nsocket = "{rundir}/s.sock"\n'
                f'state_dir = "{rundir}/{state}"\nread_only = {"true" if read_only else "false"}\n\n'
                f'[[source]]\nname = "data"\npaths = ["{source}"]\nwatch = false\n')
    return path


def _cli(rundir: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRN, "--socket", f"{rundir}/s.sock", *args], capture_output=True, text=True,
                          env=_env(), timeout=120)


def _start(rundir: str, cfg: str) -> subprocess.Popen:
    with open(os.path.join(rundir, "err.log"), "wb") as err:
        proc = subprocess.Popen([CAIRND, "--config", cfg], stdout=subprocess.DEVNULL, stderr=err, env=_env())
    deadline = time.monotonic() + 60
    while _cli(rundir, "status").returncode != 0:
        assert proc.poll() is None, open(os.path.join(rundir, "err.log")).read()
        assert time.monotonic() < deadline, "cairnd did not answer in time"
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def test_write_only_host_on_a_bucket(weed, creds, rundir, rng):
    prefix = f"wo-{uuid.uuid4().hex[:8]}"
    repository = (f'path = "s3://{weed.bucket}/{prefix}"\nendpoint = "{weed.endpoint}"\nregion = "us-east-1"\n'
                  f'credentials_file = "{creds}"\n')
    full_pw, wo_key = os.path.join(rundir, "full.pass"), os.path.join(rundir, "wo.key")
    with open(full_pw, "w") as f:
        f.write("the full passphrase\n")
    src_a, src_w = os.path.join(rundir, "a"), os.path.join(rundir, "w")
    make_tree(src_a, rng, files=8, max_size=64 * 1024)
    make_tree(src_w, rng, files=12, max_size=128 * 1024)
    full_cfg = _config(rundir, repository, f'passphrase_file = "{full_pw}"\n', src_a, "full")
    made = subprocess.run([CAIRND, "--config", full_cfg, "--init"], capture_output=True, text=True, env=_env(),
                          timeout=60)
    assert made.returncode == 0, made.stderr

    proc = _start(rundir, full_cfg)
    try:
        assert _cli(rundir, "backup", "--level", "full").returncode == 0
        r = _cli(rundir, "key", "add", "--write-only", "--new-key-file", wo_key)
        assert r.returncode == 0 and "write-only" in r.stdout, r.stderr
    finally:
        _stop(proc)

    wo_cfg = _config(rundir, repository, f'key_file = "{wo_key}"\n', src_w, "wonly")
    proc = _start(rundir, wo_cfg)
    try:
        r = _cli(rundir, "--json", "backup", "--level", "full")
        assert r.returncode == 0, r.stderr
        with open(os.path.join(src_w, "added.bin"), "wb") as f:
            f.write(os.urandom(100_000))
        r = _cli(rundir, "--json", "backup", "--level", "incremental")
        assert r.returncode == 0, r.stderr
        second = json.loads(r.stdout)["id"]
        sets = {s["id"]: s for s in json.loads(_cli(rundir, "--json", "sets").stdout)}
        assert len(sets) == 2 and sets[second]["level"] == "incremental"
        assert sets[second]["stats"]["bytes_added"] < 150_000
        before = bucket_etags(weed, prefix)
        for args in (("prune", "--keep-last", "1"), ("restore", second, "--target", os.path.join(rundir, "x"))):
            r = _cli(rundir, *args)
            assert r.returncode == 1 and "write-only" in r.stderr, (args, r.stderr)
        assert bucket_etags(weed, prefix) == before
    finally:
        _stop(proc)

    proc = _start(rundir, _config(rundir, repository, f'passphrase_file = "{full_pw}"\n', src_a, "fresh",
                                  read_only=True))
    try:
        target = os.path.join(rundir, "restored")
        r = _cli(rundir, "restore", second, "--target", target)
        assert r.returncode == 0, r.stderr
        restored = os.path.join(target, "w") if os.path.isdir(os.path.join(target, "w")) else target
        assert_same_tree(src_w, restored)
        assert _cli(rundir, "verify", "--read-data").returncode == 0
    finally:
        _stop(proc)
