"""A dump that barely changed costs little: two sets of a kind 'command' database whose dump
(pg_dump's plain SQL on stdout, over 200 MB) grew by 10% more rows between them; the second set
adds at most 15% of the first dump's bytes, read from the sets' own stats."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from pgstack import PG_BIN, Stack, make_pg_dir

ROWS = 2_000_000  # about 105 bytes of dump each


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = make_pg_dir("cairn-dedup-")
    (root / "files").mkdir()
    (root / "files/a.txt").write_text("a\n")
    st = Stack(root, {"big": {"paths": [str(root / "files")], "database": "bigdump"}})
    st.databases["bigdump"] = {
        "kind": "command",
        "dump": [str(PG_BIN / "pg_dump"), "--format=plain", "--no-password", "--table=events",
                 f"--dbname={st.pg.dsn_for(dbname='big')}"],
        "restore": [str(PG_BIN / "psql"), "-X", "-q", "-d", "{target}"],
    }
    st.write_config()
    try:
        st.start()
        st.psql("CREATE DATABASE big")
        # unlogged: the rows need no WAL (the dump is what is measured, not the archive)
        st.pg.psql("CREATE UNLOGGED TABLE events (id bigint, payload text)", dbname="big")
        yield st
    finally:
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def add_rows(st: Stack, first: int, last: int) -> None:
    t0 = time.monotonic()
    st.pg.psql("INSERT INTO events SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text) "
               f"FROM generate_series({first}, {last}) i", dbname="big")
    print(f"rows {first}..{last} in {time.monotonic() - t0:.1f}s")


def test_second_dump_with_ten_percent_more_rows_adds_at_most_fifteen_percent(stack: Stack) -> None:
    add_rows(stack, 1, ROWS)
    t0 = time.monotonic()
    first = stack.backup("big", "full")
    print(f"set 1 in {time.monotonic() - t0:.1f}s")
    dump_bytes = first["extra"]["databases"][0]["bytes"]
    assert dump_bytes >= 200_000_000
    # the first set stores the dump itself (compressed): dedup is what keeps the second one small
    assert first["stats"]["bytes_added"] >= 0.3 * dump_bytes

    add_rows(stack, ROWS + 1, ROWS + ROWS // 10)
    t0 = time.monotonic()
    second = stack.backup("big", "incremental")
    print(f"set 2 in {time.monotonic() - t0:.1f}s")
    grown = second["extra"]["databases"][0]["bytes"]
    assert grown >= dump_bytes * 1.09
    print(f"dump {dump_bytes} -> {grown} bytes; set 1 added {first['stats']['bytes_added']}, "
          f"set 2 added {second['stats']['bytes_added']} ({second['stats']['bytes_added'] / dump_bytes:.1%})")
    assert second["stats"]["bytes_added"] <= 0.15 * dump_bytes, (second["stats"]["bytes_added"], dump_bytes)
