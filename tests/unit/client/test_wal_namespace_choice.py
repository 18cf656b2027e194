"""Which WAL name space `cairn wal-push` / `wal-fetch` name: --system-id, else a segment's page
header, else pg_control of the data directory the file lies in, else the flat name space."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from cairn.client.cli import wal_namespace
from cairn.errors import InvalidArgumentError


def long_header(sysid: int) -> bytes:
    return ((0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + bytes(20) + sysid.to_bytes(8, "little")
            + (16 << 20).to_bytes(4, "little") + (8192).to_bytes(4, "little") + bytes(64))


def data_dir(root: Path, sysid: int | None) -> Path:
    (root / "pg_wal").mkdir(parents=True)
    if sysid is not None:
        (root / "global").mkdir()
        (root / "global" / "pg_control").write_bytes(sysid.to_bytes(8, "little") + bytes(200))
    return root / "pg_wal"


def opts(system_id: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(system_id=system_id)


def test_the_order_of_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wal = data_dir(tmp_path / "a", 555)
    seg = wal / "000000010000000000000001"
    seg.write_bytes(long_header(777))
    assert wal_namespace(opts(), str(seg), seg.read_bytes()) == "777"  # the header first
    assert wal_namespace(opts("0042"), str(seg), seg.read_bytes()) == "42"  # the option above all
    hist = wal / "00000002.history"
    hist.write_bytes(b"1\t0/3000000\tno recovery target specified\n")
    assert wal_namespace(opts(), str(hist), hist.read_bytes()) == "555"  # no header: pg_control
    assert wal_namespace(opts(), str(wal / "RECOVERYXLOG")) == "555"  # wal-fetch's destination
    bare = data_dir(tmp_path / "b", None) / "00000002.history"
    bare.write_bytes(hist.read_bytes())
    assert wal_namespace(opts(), str(bare), bare.read_bytes()) == ""  # nothing tells: the flat one
    # a relative %p outside pg_wal/: the current directory is the data directory
    os.chdir(tmp_path / "a")
    assert wal_namespace(opts(), "RECOVERYHISTORY") == "555"


@pytest.mark.parametrize("bad", ["abc", "-1", "1e5", "12 34"])
def test_a_bad_system_id_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid system identifier"):
        wal_namespace(opts(bad), "x")
