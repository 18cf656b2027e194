"""The names the client and the daemon share have one home (cairn.protocol, cairn.walnames, and
cairn.proto.wire for restore records), and both sides use it: a copy that drifts fails here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cairn import protocol, walnames
from cairn.client import cli, connection
from cairn.daemon.databases.postgres import restoredb
from cairn.daemon.operations import backups
from cairn.daemon.rpc import errors as rpc_errors
from cairn.daemon.rpc import server, servicer
from cairn.daemon.runtime import config as daemon_config
from cairn.fsio.records import Data, EntryMeta, Failed, Hole
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.wire import add_record, record_of
from cairn.store import model

ROOT = Path(__file__).resolve().parents[2]


def test_both_sides_take_the_same_names() -> None:
    assert cli.LEVELS is protocol.LEVELS is model.LEVELS
    assert backups.DEFAULT_LEVEL == protocol.DEFAULT_LEVEL in protocol.LEVELS
    assert cli.HINT_KEY == rpc_errors.HINT_KEY == protocol.HINT_KEY
    assert cli.OWN_POINT == restoredb.OWN_POINT == walnames.OWN_POINT
    assert cli.WAL_MARKER == restoredb.WAL_MARKER == walnames.WAL_MARKER
    assert server.MAX_MESSAGE_BYTES == protocol.MAX_MESSAGE_BYTES
    assert connection.MAX_MESSAGE_BYTES == protocol.CLIENT_MAX_MESSAGE_BYTES
    assert (servicer.DATA_PIECE, servicer.BATCH_BYTES) == (protocol.DATA_PIECE, protocol.BATCH_BYTES)


def test_the_sizes_fit_the_limits() -> None:
    """A batch is flushed once it passes BATCH_BYTES, so it may hold one more piece than that;
    a WAL push piece travels the other way. Both fit the smaller of the two limits."""
    assert protocol.BATCH_BYTES + protocol.DATA_PIECE + (64 << 10) < protocol.MAX_MESSAGE_BYTES
    assert cli.WAL_PIECE + (64 << 10) < protocol.MAX_MESSAGE_BYTES
    assert protocol.CLIENT_MAX_MESSAGE_BYTES >= protocol.MAX_MESSAGE_BYTES


@pytest.mark.parametrize("env", [{"XDG_RUNTIME_DIR": "/run/user/1000"}, {"CAIRN_HOME": "/var/lib/h"},
                                 {"STATE_DIRECTORY": "/var/lib/cairn:/other"}, {}])
def test_one_socket_rule(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in ("XDG_RUNTIME_DIR", "CAIRN_HOME", "STATE_DIRECTORY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    want = protocol.default_socket()
    assert connection.default_socket() == want
    assert daemon_config.config_from_args(repo="/r", sources=[], read_only=True).daemon.socket == want
    assert os.path.basename(want) == protocol.SOCKET_NAME


@pytest.mark.parametrize("literal", ['"cairnd.sock"', '"cairn-hint"', '"cairn-restore-db.own-point"',
                                     '"cairn-restore-db.wal"', "<< 20  # the largest message"])
def test_no_second_copy_of_a_shared_name(literal: str) -> None:
    """Spelled once, in its home; everywhere else it is imported."""
    homes = {ROOT / "cairn_pkg" / "protocol.py", ROOT / "cairn_pkg" / "walnames.py"}
    copies = [str(p.relative_to(ROOT)) for folder in ("daemon", "client", "store", "fsio", "proto", "cairn_pkg")
              for p in (ROOT / folder).rglob("*.py") if p not in homes and literal in p.read_text()]
    assert not copies, f"{literal} spelled again in {copies}"


@pytest.mark.parametrize("rec", [
    EntryMeta(path=b"a/b", kind="file", mode=0o640, uid=7, gid=8, mtime_ns=123456789, size=10,
              xattrs={b"user.k": b"v"}, target=b"", link_to=b"", rdev=0, sparse=True, chunks=(b"\x01" * 32,),
              chunk_sizes=(10,)),
    EntryMeta(path=b"l", kind="symlink", mode=0o777, uid=0, gid=0, mtime_ns=1, size=0, target=b"a/b"),
    EntryMeta(path=b"h", kind="hardlink", mode=0o600, uid=0, gid=0, mtime_ns=1, size=3, link_to=b"a/b"),
    # past 2262 and before 1677: beyond int64 nanoseconds (ext4 keeps times to 2446)
    EntryMeta(path=b"future", kind="file", mode=0o644, uid=0, gid=0, mtime_ns=10_413_792_000_123_456_789, size=1),
    EntryMeta(path=b"past", kind="file", mode=0o644, uid=0, gid=0, mtime_ns=-10_000_000_000_000_000_001, size=1),
    Hole(4096),
    Failed("unable to read 'x': checksum mismatch"),
])
def test_a_record_crosses_the_wire_unchanged(rec) -> None:
    batch = pb.RestoreBatch()
    assert add_record(batch, rec) > 0
    assert record_of(pb.RestoreBatch.FromString(batch.SerializeToString()).records[0]) == rec
    assert cli.to_record(batch.records[0]) == rec


def test_a_tree_entry_carries_a_time_beyond_int64_nanoseconds() -> None:
    from cairn.daemon.rpc.servicer import tree_entry
    from cairn.proto.wire import mtime_of
    from cairn.store.model import TreeEntry

    for ns in (10_413_792_000_123_456_789, -10_000_000_000_000_000_001, 1_700_000_000_000_000_000):
        e = TreeEntry(path="f", name="f", kind="file", mode=0o644, uid=0, gid=0, mtime_ns=ns, size=1, target="")
        assert mtime_of(pb.TreeEntry.FromString(tree_entry(e).SerializeToString())) == ns


def test_data_and_an_empty_record() -> None:
    assert record_of(pb.RestoreRecord(data=b"xyz")) == Data(b"xyz")
    with pytest.raises(Exception, match="empty restore record"):
        record_of(pb.RestoreRecord())
