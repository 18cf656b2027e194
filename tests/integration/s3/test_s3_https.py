"""A repository on an object store reached over HTTPS with a private CA (SeaweedFS serving TLS),
as production stores are: the real daemon backs up, restores and verifies through it with the CA
named the way boto3's users name it (AWS_CA_BUNDLE), a store whose certificate is not trusted
stops it at start in one line, and uploads over HTTPS do not hash their bodies for the
signature (TLS protects them) while uploads over plain HTTP do."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile

import pytest
from cairnd_harness import CAIRND  # tests/integration/daemon (see conftest.py)
from certificates import make_certificates
from s3daemons import Host, clean_env, s3_repository
from s3server import WeedServer
from storekit import assert_same_tree, make_tree


@pytest.fixture(scope="module")
def tls_weed(tmp_path_factory):
    d = tmp_path_factory.mktemp("tlsweed")
    certs = make_certificates(str(d))
    with WeedServer(d / "weed", tls=certs) as server:
        yield server


def _payload_hashes(backend) -> list[str]:
    """The x-amz-content-sha256 header of every PutObject `backend` sends from now on."""
    seen: list[str] = []

    def note(request, **_):
        value = request.headers.get("X-Amz-Content-SHA256", "")
        seen.append(value.decode() if isinstance(value, bytes) else value)

    backend._s3.meta.events.register("before-send.s3.PutObject", note)
    return seen


def test_uploads_over_https_are_not_hashed_for_the_signature_and_over_http_they_are(tls_weed, weed, monkeypatch):
    monkeypatch.setenv("AWS_CA_BUNDLE", tls_weed.tls["ca"])
    body = os.urandom(1 << 20)
    for server, signed in ((tls_weed, False), (weed, True)):
        backend = server.backend()
        assert backend.where.startswith("https:" if not signed else "http:")
        assert backend.conditional_writes is True  # the probe's conditional write, over TLS too
        seen = _payload_hashes(backend)
        backend.put("packs", "ab" * 32, body)
        assert backend.get("packs", "ab" * 32) == body
        assert len(seen) == 1, seen
        if signed:  # nothing but the signature covers the body over plain HTTP
            assert len(seen[0]) == 64 and seen[0] != "UNSIGNED-PAYLOAD", seen
        else:
            assert seen == ["UNSIGNED-PAYLOAD"], seen


def test_the_daemon_backs_up_and_restores_over_https_with_a_private_ca(tls_weed, tmp_path):
    rundir = tempfile.mkdtemp(prefix="cairn-tls-", dir="/tmp")  # short: socket paths are limited
    src = tmp_path / "src"
    make_tree(str(src), random.Random(7), files=40)
    passphrase = tmp_path / "pass"
    passphrase.write_text("correct horse battery staple\n")
    repo = s3_repository(tls_weed, tls_weed.credentials_file(), "https-repo", str(passphrase))
    host = Host(rundir, "h1", repo, {"data": str(src)}, env={"AWS_CA_BUNDLE": tls_weed.tls["ca"]})
    try:
        host.init()
        host.start()
        set_id = host.ok("backup", "--level", "full").strip().splitlines()[-1]
        host.ok("verify", "--read-data")
        host.ok("restore", set_id, "--target", str(tmp_path / "out"))
        assert_same_tree(str(src), str(tmp_path / "out"))
        host.stop()

        # without the CA the store's certificate is not trusted: one line at start, exit 1
        r = subprocess.run([CAIRND, "--config", host.config], capture_output=True, text=True, env=clean_env(),
                           timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert "certificate" in lines[0].lower() and tls_weed.endpoint in lines[0], lines[0]
    finally:
        host.stop()
        shutil.rmtree(rundir, ignore_errors=True)
