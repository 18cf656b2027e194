"""'latest' on a repository shared by hosts, through real daemons on one SeaweedFS bucket: hosts
that share a source name each restore, list and verify their own newest set by 'latest', even
when another host's is newer, and `status` shows each host's sets of a source apart; `--host`
names another host's; a fresh host with no sets of its own (disaster recovery) is told that
'latest' is ambiguous among several hosts, one line and exit 2, and nothing is written, until
it names one."""

from __future__ import annotations

import json
import os
import uuid

from s3daemons import Host, s3_repository


def _found(target: str) -> bytes:
    """The content of the one file named 'who' restored below `target`."""
    hits = [os.path.join(d, "who") for d, _, files in os.walk(target) if "who" in files]
    assert len(hits) == 1, hits
    with open(hits[0], "rb") as f:
        return f.read()


def test_latest_is_the_asking_hosts_own_set(weed, creds, rundir):
    passphrase = os.path.join(rundir, "pass")
    with open(passphrase, "w") as f:
        f.write("hosts share this passphrase\n")
    repository = s3_repository(weed, creds, f"latest-{uuid.uuid4().hex[:8]}", passphrase)
    hosts = {}
    for name in ("alpha", "beta"):
        tree = os.path.join(rundir, f"{name}-data")
        os.makedirs(tree)
        with open(os.path.join(tree, "who"), "wb") as f:
            f.write(name.encode())
        hosts[name] = Host(rundir, name, repository, {"app": tree})  # one source name, as one config deployed
    gamma = Host(rundir, "gamma", repository, {})
    hosts["alpha"].init()
    try:
        for h in (*hosts.values(), gamma):
            h.start()
        ids = {name: json.loads(hosts[name].ok("--json", "backup", "--level", "full"))["id"]
               for name in ("alpha", "beta")}  # beta's set is the newest in the repository
        for name, h in hosts.items():
            target = os.path.join(rundir, f"r-{name}")
            h.ok("restore", "latest", "--target", target)
            assert _found(target) == name.encode()
            assert json.loads(h.ok("--json", "diff", ids["alpha"], "latest"))["b"] == ids[name]
        assert json.loads(hosts["alpha"].ok("--json", "diff", "latest", "latest", "--host", "beta"))["a"] == ids["beta"]
        target = os.path.join(rundir, "r-alpha-asks-beta")
        hosts["alpha"].ok("restore", "latest", "--host", "beta", "--target", target)
        assert _found(target) == b"beta"

        # status: a configured source is this host's sets; one known only from sets, each host's apart
        mine = json.loads(hosts["alpha"].ok("--json", "status"))["sources"]
        assert [(x["name"], x["host"], x["sets"], x["last"]["full"]["id"]) for x in mine] == [
            ("app", None, 1, ids["alpha"])]
        seen = json.loads(gamma.ok("--json", "status"))["sources"]
        assert [(x["name"], x["host"], x["sets"], x["last"]["full"]["id"], x["paths"]) for x in seen] == [
            ("app", name, 1, ids[name], [os.path.join(rundir, f"{name}-data")]) for name in ("alpha", "beta")]
        assert "known from the sets of host 'beta'" in gamma.ok("status")

        target = os.path.join(rundir, "r-gamma")
        r = gamma.cli("restore", "latest", "--target", target)
        assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
        line = r.stderr.strip().splitlines()[0]
        assert "ambiguous" in line and "alpha, beta" in line and "--host" in line, r.stderr
        assert not os.path.exists(target) or not os.listdir(target)
        gamma.ok("restore", "latest", "--host", "alpha", "--target", target)
        assert _found(target) == b"alpha"
        r = gamma.cli("restore", "latest", "--host", "delta", "--target", os.path.join(rundir, "r-delta"))
        assert r.returncode == 3 and "host 'delta'" in r.stderr, (r.returncode, r.stderr)
    finally:
        for h in (*hosts.values(), gamma):
            h.stop()
