"""`cairnd --repo s3://bucket/prefix` with nothing but the environment, as on a recovery host
(docs/disaster-recovery.md): the endpoint from AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) is
addressed path-style, as a configured endpoint is, since S3-compatible stores rarely serve
buckets as virtual hosts; the credentials come from AWS_SHARED_CREDENTIALS_FILE."""

from __future__ import annotations

import pytest
from cairn.store.locations import open_backend


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_an_endpoint_from_the_environment_is_addressed_path_style(weed, creds, monkeypatch, variable):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, weed.endpoint.replace("127.0.0.1", "localhost"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    backend = open_backend(f"s3://{weed.bucket}/env-test")
    try:
        assert backend._s3.meta.config.s3["addressing_style"] == "path"
        backend.put("locks", "probe", b"x")
        assert list(backend.list("locks")) == ["probe"]
        backend.delete("locks", "probe")
    finally:
        backend.close()
