"""`cairn prune --forget` of the set a client is restoring (the real daemon, real gRPC): the prune
keeps the set and says why, the restore gets every byte, and a later prune forgets the set."""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pbg

SIZE = 32 * 1024 * 1024  # beyond what gRPC buffers: the daemon cannot have read it all when the first batch arrives


@pytest.fixture
def daemon(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "old.bin").write_bytes(os.urandom(SIZE))  # far beyond what one reply holds
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    d.locks = tmp_path / "repo" / "locks"
    d.old = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    (src / "old.bin").unlink()
    (src / "new.txt").write_text("new\n")
    d.new = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    return d


def locks(daemon) -> int:
    return sum(len(files) for _dir, _dirs, files in os.walk(daemon.locks))


def test_prune_forget_of_a_set_being_restored_keeps_it_until_the_restore_ends(daemon):
    before = locks(daemon)
    with grpc.insecure_channel("unix:" + daemon.socket) as channel:
        stream = pbg.CairnStub(channel).Restore(pb.RestoreRequest(set=daemon.old), timeout=120)
        got = [next(stream)]  # the restore has begun, and its client reads no further for now
        assert locks(daemon) > before  # its lock names the set
        out = daemon.ok("prune", "--forget", daemon.old)
        assert f"keep {daemon.old}" in out and "being read (restore of set" in out, out
        assert "forgot 0 sets" in out, out
        got += list(stream)
    assert sum(batch.ByteSize() for batch in got) > SIZE  # every byte of the set came
    deadline = time.monotonic() + 30  # the daemon drops the restore's lock once its stream has closed
    while locks(daemon) > before:
        assert time.monotonic() < deadline, "the restore's lock outlived its stream"
        time.sleep(0.05)
    later = json.loads(daemon.ok("--json", "prune", "--forget", daemon.old))
    assert later["forgotten"] == [daemon.old] and later["bytes_freed"] > SIZE // 2, later
    assert [s["id"] for s in json.loads(daemon.ok("--json", "sets"))] == [daemon.new]
