"""Fixtures of the object-store tests: a real SeaweedFS for the session (tests/s3server.py),
and moto's S3 server behind a fault-injecting proxy (tests/s3faults.py) for error paths."""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "unit", "store"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "daemon"))
from s3faults import FaultProxy  # noqa: E402
from s3server import ACCESS_KEY, SECRET_KEY, shared_server  # noqa: E402


@pytest.fixture(scope="session")
def weed(request, tmp_path_factory):
    return shared_server(request.config, tmp_path_factory.mktemp("weed"))


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def rundir():
    """A directory for the daemons' sockets, state and trees, removed afterwards: short, under
    /tmp (a socket's path is limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="cairn-s3-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
def creds(tmp_path):
    path = tmp_path / "credentials"
    path.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    return str(path)


@pytest.fixture
def faulty(moto_endpoint, creds):
    """(proxy, make_backend): a fresh bucket on moto, reached through a FaultProxy."""
    import boto3
    from cairn.store.storage.s3 import S3Backend

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    proxy = FaultProxy(moto_endpoint)
    made = []

    def make(**kw) -> S3Backend:
        kw.setdefault("backoff", 0.01)
        b = S3Backend(bucket, "repo", endpoint=proxy.endpoint, region="us-east-1", credentials_file=creds, **kw)
        made.append(b)
        return b

    yield proxy, make
    for b in made:
        b.close()
    proxy.close()
