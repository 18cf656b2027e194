"""The real cairnd on an s3:// repository (SeaweedFS): it backs up and restores through the real
client, and a wrong bucket, wrong credentials or an unreachable endpoint stop it at start with
one line on stderr and exit status 1, before anything is served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

from s3server import ACCESS_KEY, free_ports
from storekit import assert_same_tree, make_tree

BIN = os.path.dirname(sys.executable)
CAIRND, CAIRN = os.path.join(BIN, "cairnd"), os.path.join(BIN, "cairn")


def config(rundir: str, repository: str, source: str, state: str = "state", read_only: bool = False) -> str:
    path = os.path.join(rundir, f"{state}.toml")
    with open(path, "w") as f:
        f.write(f'[repository]\n{repository}\n[daemon]\nsocket = "{rundir}/s.sock"\n'
                f'state_dir = "{rundir}/{state}"\nread_only = {"true" if read_only else "false"}\n\n'
                f'[[source]]\nname = "data"\npaths = ["{source}"]\nwatch = false\n')
    return path


def start(rundir: str, cfg: str) -> subprocess.Popen:
    with open(os.path.join(rundir, "err.log"), "wb") as err:
        proc = subprocess.Popen([CAIRND, "--config", cfg], stdout=subprocess.DEVNULL, stderr=err, env=env())
    deadline = time.monotonic() + 60
    while cli(rundir, "status").returncode != 0:
        assert proc.poll() is None, open(os.path.join(rundir, "err.log")).read()
        assert time.monotonic() < deadline, "cairnd did not answer in time"
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CAIRN_SOCKET")}
    out["AWS_EC2_METADATA_DISABLED"] = "true"
    return out


def cli(rundir: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRN, "--socket", f"{rundir}/s.sock", *args], capture_output=True, text=True,
                          env=env(), timeout=120)


def repository(weed, creds: str, bucket: str | None = None, endpoint: str | None = None) -> str:
    return (f'path = "s3://{bucket or weed.bucket}/d-{uuid.uuid4().hex[:8]}"\n'
            f'endpoint = "{endpoint or weed.endpoint}"\nregion = "us-east-1"\ncredentials_file = "{creds}"\n')


def test_daemon_backs_up_to_and_restores_from_a_bucket(weed, creds, rundir, rng):
    src = os.path.join(rundir, "src")
    make_tree(src, rng, files=15, max_size=128 * 1024)
    passphrase = os.path.join(rundir, "repo.pass")
    with open(passphrase, "w") as f:
        f.write("correct horse battery staple\n")
    # encrypted on the object store: the passphrase file is all a fresh host needs besides the bucket
    repo = repository(weed, creds) + f'\npassphrase_file = "{passphrase}"'
    cfg = config(rundir, repo, src)
    # no silent creation on object storage either: the daemon refuses, --init creates, once
    refused = subprocess.run([CAIRND, "--config", cfg], capture_output=True, text=True, env=env(), timeout=60)
    assert refused.returncode == 1 and "--init" in refused.stderr.strip().splitlines()[-1]
    made = subprocess.run([CAIRND, "--config", cfg, "--init"], capture_output=True, text=True, env=env(), timeout=60)
    assert made.returncode == 0, made.stderr
    again = subprocess.run([CAIRND, "--config", cfg, "--init"], capture_output=True, text=True, env=env(), timeout=60)
    assert again.returncode == 1 and "already exists" in again.stderr
    proc = start(rundir, cfg)
    try:
        r = cli(rundir, "--json", "backup", "--level", "full")
        assert r.returncode == 0, r.stderr
        set_id = json.loads(r.stdout)["id"]
        target = os.path.join(rundir, "restored")
        r = cli(rundir, "restore", "latest", "--target", target)
        assert r.returncode == 0, r.stderr
        restored = os.path.join(target, "src") if os.path.isdir(os.path.join(target, "src")) else target
        assert_same_tree(src, restored)
        assert set_id[:12] in cli(rundir, "sets").stdout
    finally:
        stop(proc)
    # Another host: an empty state directory, the bucket read-only; everything restores.
    proc = start(rundir, config(rundir, repo, src, state="fresh-state", read_only=True))
    try:
        assert set_id[:12] in cli(rundir, "sets").stdout
        target = os.path.join(rundir, "restored-elsewhere")
        r = cli(rundir, "restore", set_id, "--target", target)
        assert r.returncode == 0, r.stderr
        restored = os.path.join(target, "src") if os.path.isdir(os.path.join(target, "src")) else target
        assert_same_tree(src, restored)
        assert cli(rundir, "backup", "--level", "full").returncode != 0  # read-only
    finally:
        stop(proc)


def start_fails(rundir: str, repo: str, src: str) -> str:
    started = time.monotonic()
    r = subprocess.run([CAIRND, "--config", config(rundir, repo, src)], capture_output=True, text=True, env=env(),
                       timeout=120)
    assert r.returncode == 1
    assert time.monotonic() - started < 90
    assert not os.path.exists(f"{rundir}/s.sock")  # nothing was served
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("cairnd: error:")]
    assert len(lines) == 1, r.stderr  # (the log's closing "stopped" line may follow)
    return lines[0]


def test_missing_bucket_stops_the_daemon_at_start(weed, creds, rundir):
    line = start_fails(rundir, repository(weed, creds, bucket="no-such-bucket"), rundir)
    assert line == f"cairnd: error: bucket 'no-such-bucket' does not exist at endpoint {weed.endpoint}"


def test_wrong_credentials_stop_the_daemon_at_start(weed, rundir):
    bad = os.path.join(rundir, "bad.credentials")
    with open(bad, "w") as f:
        f.write(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = wrong\n")
    line = start_fails(rundir, repository(weed, bad), rundir)
    assert line.startswith(f"cairnd: error: S3 credentials were refused by {weed.endpoint}")


def test_unreachable_endpoint_stops_the_daemon_at_start(weed, creds, rundir):
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    line = start_fails(rundir, repository(weed, creds, endpoint=endpoint), rundir)
    assert line == f"cairnd: error: S3 endpoint '{endpoint}' is unreachable"


def test_a_prefix_that_lost_its_config_is_named_so_at_start(weed, creds, rundir):
    repo = repository(weed, creds)
    prefix = repo.split('"')[1].split("/", 3)[3]
    client = weed.client()
    client.put_object(Bucket=weed.bucket, Key=f"{prefix}/sets/{'ab' * 32}", Body=b"a set of a repository")
    line = start_fails(rundir, repo, rundir)
    assert line == (f"cairnd: error: 's3://{weed.bucket}/{prefix}' holds Cairn objects but its config object is "
                    "missing: the repository cannot be opened")


def test_init_never_makes_a_repository_over_other_objects(weed, creds, rundir):
    """A prefix that holds another tool's repository (what a fresh restic repository holds:
    config and keys/...) or any other object is refused, and nothing there is touched; so is
    `cairn copy` into it. A prefix whose keys/ holds only something that is not a Cairn key is
    refused too (init replaces only Cairn key objects of an init killed before its config)."""
    s3 = weed.client()
    passphrase = os.path.join(rundir, "repo.pass")
    with open(passphrase, "w") as f:
        f.write("correct horse battery staple\n")
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    for objects in ({"config": b"restic config", "keys/4f3a9b0c1d2e": b'{"kdf": "scrypt"}'},
                    {"keys/4f3a9b0c1d2e": b'{"kdf": "scrypt"}'},
                    {"readme.txt": b"not a repository"}):
        prefix = f"foreign-{uuid.uuid4().hex[:8]}"
        for key, body in objects.items():
            s3.put_object(Bucket=weed.bucket, Key=f"{prefix}/{key}", Body=body)
        repo = (f'path = "s3://{weed.bucket}/{prefix}"\nendpoint = "{weed.endpoint}"\nregion = "us-east-1"\n'
                f'credentials_file = "{creds}"\npassphrase_file = "{passphrase}"')
        r = subprocess.run([CAIRND, "--config", config(rundir, repo, src), "--init"], capture_output=True,
                           text=True, env=env(), timeout=60)
        assert r.returncode == 1 and "unable to create a repository at" in r.stderr, (objects, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
        held = {o["Key"][len(prefix) + 1:]: s3.get_object(Bucket=weed.bucket, Key=o["Key"])["Body"].read()
                for o in s3.list_objects_v2(Bucket=weed.bucket, Prefix=f"{prefix}/").get("Contents", [])
                if not o["Key"].startswith(f"{prefix}/probe/")}
        assert {k: v for k, v in held.items() if k in objects} == objects and set(objects) <= set(held), held
        assert not any(k.startswith("config/") for k in held), held
