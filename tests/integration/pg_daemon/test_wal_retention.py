"""WAL retention end to end: a real PostgreSQL 15 archiving through `cairn wal-push` into a real
cairnd; prune forgets the older set and the WAL before the kept set, and point-in-time recovery
from the kept set onward still works."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from pgstack import Stack, app_stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with app_stack("cairn-walret-", {"a.txt": "a\n"}) as st:
        yield st


def test_wal_before_the_kept_set_goes_and_pitr_after_it_still_works(stack: Stack) -> None:
    stack.psql("CREATE TABLE markers (id int PRIMARY KEY)")
    stack.psql("INSERT INTO markers VALUES (1)")
    old = stack.backup("app")
    for _ in range(3):  # WAL between the two sets
        stack.psql("INSERT INTO markers SELECT max(id) + 1 FROM markers")
        stack.wait_archived()
    kept = stack.backup("app")
    stack.psql("INSERT INTO markers VALUES (100)")
    stack.wait_archived()
    target_time = stack.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    stack.psql("INSERT INTO markers VALUES (200)")
    stack.wait_archived()

    first_kept = kept["extra"]["database"]["wal"]["first"]
    sysid = str(kept["extra"]["database"]["system_identifier"])
    before = json.loads(stack.ok("--json", "prune", "--dry-run", "--keep-last", "1", "--wal-keep", "0s"))
    assert before["forgotten"] == [old["id"]]
    # forgotten WAL is named "<name space>/<file>": the server's WAL name space is its system identifier
    spaces = {n.partition("/")[0] for n in before["wal_forgotten"]}
    names = [n.partition("/")[2] for n in before["wal_forgotten"]]
    assert spaces == {sysid}
    assert names and all(n[:24] < first_kept for n in names)
    assert old["extra"]["database"]["wal"]["first"] in names
    # a window longer than the WAL's age keeps it all
    assert json.loads(stack.ok("--json", "prune", "--dry-run", "--keep-last", "1", "--wal-keep", "1d"))[
        "wal_forgotten"] == []

    done = json.loads(stack.ok("--json", "prune", "--keep-last", "1", "--wal-keep", "0s"))
    assert done["wal_forgotten"] == before["wal_forgotten"] and done["bytes_freed"] > 0
    fetch = stack.cli("wal-fetch", "--system-id", sysid, names[0], str(stack.root / "gone"))
    assert fetch.returncode == 3
    assert "repository ok: 1 set" in stack.ok("verify", "--read-data")

    srv = stack.restore_db(kept["id"], "--target-time", target_time)
    assert srv.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers") == "1,2,3,4,100"
