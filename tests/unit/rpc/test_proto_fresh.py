"""The committed generated modules are exactly what the generator makes of the .proto files."""

from __future__ import annotations

import os

import pytest
from cairn.proto import generate

pytest.importorskip("grpc_tools")


def test_committed_modules_match_a_fresh_generation(tmp_path):
    written = generate.generate(str(tmp_path))
    assert written, "the generator wrote nothing"
    for path in written:
        rel = os.path.relpath(path, tmp_path)
        committed = os.path.join(generate.PROTO_ROOT, rel)
        assert os.path.exists(committed), f"{rel} is not committed: run python -m cairn.proto.generate"
        with open(path, "rb") as fresh, open(committed, "rb") as kept:
            assert fresh.read() == kept.read(), f"{rel} is stale: run python -m cairn.proto.generate"


def test_generated_grpc_module_imports_through_the_installed_package():
    from cairn.proto.cairn.v1 import cairn_pb2, cairn_pb2_grpc

    with open(cairn_pb2_grpc.__file__, encoding="utf-8") as f:
        text = f.read()
    assert "from cairn.proto.cairn.v1 import cairn_pb2" in text
    assert "\nfrom cairn.v1 import" not in text
    assert cairn_pb2.DESCRIPTOR.package == "cairn.v1"
    assert "Restore" in cairn_pb2.DESCRIPTOR.services_by_name["Cairn"].methods_by_name
