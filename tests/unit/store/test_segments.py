"""The store is engine-neutral about archive segments: it is given the rules of valid names,
their order and what a set needs (store/segments.py), and holds none of its own."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from cairn.daemon.databases.archive import PostgresSegments
from cairn.store.errors import InvalidArgumentError
from cairn.store.model import BackupSet, PrunePolicy, SetStats
from storekit import backup, write_random

STORE = Path(__file__).resolve().parents[3] / "store"
# What PostgreSQL's WAL names look like, and the set records that locate them.
ENGINE_PATTERNS = [r"\[0-9A-F\]", r"[0-9A-F]{24}", r"timeline", r"\.history", r"\.partial", r"\.backup['\"]",
                   r"wal_segment_size", r"system_identifier", r"archive_command"]


def test_the_stores_sources_know_no_postgresql_segment_names():
    files = sorted(STORE.rglob("*.py"))
    assert len(files) > 10
    found = [f"{f.relative_to(STORE)}:{n}: {line.strip()}" for f in files
             for n, line in enumerate(f.read_text().splitlines(), 1)
             if any(re.search(p, line) for p in ENGINE_PATTERNS)]
    assert found == []


class Numbered:
    """Another engine's rules: 'seg-<n>' segments in the order of n, 'meta-*' files outside it,
    a set needing the archive from extra['toy_first'] on."""

    def valid(self, name: str) -> bool:
        return bool(re.fullmatch(r"seg-\d{6}|meta-[a-z]+", name))

    def position(self, name: str) -> int | None:
        return int(name[4:]) if name.startswith("seg-") else None

    def needs(self, s: BackupSet, namespace: str) -> list[int]:
        return [int(s.extra["toy_first"])] if "toy_first" in s.extra else []


def test_another_engines_rules_decide_valid_names_and_what_retention_forgets(repo, src, rng):
    repo.set_segment_rules(Numbered())
    with pytest.raises(InvalidArgumentError, match="'000000010000000000000001' is not a WAL file name"):
        repo.put_wal("000000010000000000000001", b"x")
    for n in range(1, 7):
        repo.put_wal(f"seg-{n:06d}", rng.randbytes(2000))
    repo.put_wal("meta-history", b"kept whatever its age")
    write_random(src / "f", 1000, rng)
    backup(repo, src, "full", extra={"toy_first": 2})
    kept = backup(repo, src, "full", extra={"toy_first": 4})
    time.sleep(0.05)
    report = repo.prune(PrunePolicy(keep_last=1, wal_keep=0.01))
    assert [s.id for s in repo.list_sets()] == [kept.id]
    assert sorted(report.wal_forgotten) == ["seg-000001", "seg-000002", "seg-000003"]
    assert repo.list_wal() == ["meta-history", "seg-000004", "seg-000005", "seg-000006"]


def test_without_rules_any_plain_name_is_archived_and_retention_forgets_nothing(repo, src, rng):
    for name in ("000000010000000000000001", "seg-1", "anything.at_all"):
        repo.put_wal(name, rng.randbytes(100))
    write_random(src / "f", 1000, rng)
    backup(repo, src, "full", extra={"database": {"wal": {"first": "000000010000000000000009"}}})
    time.sleep(0.05)
    assert repo.prune(PrunePolicy(keep_last=1, wal_keep=0.01)).wal_forgotten == ()
    with pytest.raises(InvalidArgumentError):
        repo.put_wal("../escape", b"x")


def test_postgresql_rules_order_segments_and_read_what_physical_records_need():
    pg = PostgresSegments()
    names = ["000000010000000000000002", "000000010000000100000000", "0000000200000000000000FF",
             "000000010000000000000002.partial", "000000010000000000000002.00000028.backup"]
    positions = [pg.position(n) for n in names]
    assert positions[0] < positions[2] < positions[1]  # within and across a 4 GiB xlogid, any segment size
    assert positions[3] == positions[4] == positions[0]
    assert pg.position("00000002.history") is None and pg.position("not-wal") is None
    assert not pg.valid("00000001000000000000000G") and pg.valid("00000002.history")
    extra = {"databases": [
        {"name": "a", "system_identifier": "7", "wal": {"first": names[0]}},
        {"name": "b", "system_identifier": "8", "wal": {"first": names[1]}},
        {"name": "d", "kind": "pg_dump", "wal": {"first": names[0]}},  # a dump needs no WAL
    ]}
    s = BackupSet(id="0" * 64, source="s", level="full", requested_level="full", base=None, time_start=0.0,
                  time_end=1.0, hostname="h", paths=("/x",), tree="00" * 32, stats=SetStats(), extra=extra)
    assert pg.needs(s, "7") == [positions[0]] and pg.needs(s, "8") == [positions[1]]
    assert pg.needs(s, "") == [positions[0], positions[1]]  # the flat name space serves every database
