"""A restore holds a lock naming its set: a prune meanwhile keeps that set (also when told to forget
it by name) and deletes nothing it needs; a later prune forgets it. A restore of a set already
forgotten fails at once with a clear error."""

from __future__ import annotations

import random

import pytest
from cairn.fsio.records import Data, LaneData
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.errors import NotFoundError
from cairn.store.model import PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from storekit import backup, write_random


@pytest.fixture
def two_sets(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    for i in range(6):
        write_random(src / f"old{i}", 400_000, rng)
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new())
    old = backup(repo, src, "full")
    for i in range(6):
        (src / f"old{i}").unlink()
    write_random(src / "new", 100_000, rng)
    new = backup(repo, src, "full")
    return inner, old, new


def _content(records) -> int:
    return sum(len(r.data) for r in records if isinstance(r, (Data, LaneData)))


def test_a_prune_beside_a_restore_keeps_the_set_and_its_data(two_sets):
    inner, old, new = two_sets
    reader = Repository.open(inner)
    stream = reader.restore_stream(reader.get_set(old.id))
    first = next(stream)  # the restore has begun: its lock names the set
    report = Repository.open(inner).prune(PrunePolicy(keep_last=1, forget=(old.id,)), grace=0)
    assert report.forgotten == () and old.id in report.kept, report
    why = {d.set_id: d for d in report.decisions}[old.id]
    assert why.keep and why.reasons[0].startswith("being read (restore of set "), why
    assert _content([first, *stream]) == 6 * 400_000  # every byte still came
    stream.close()
    again = Repository.open(inner).prune(PrunePolicy(keep_last=1), grace=0)
    assert again.forgotten == (old.id,) and again.bytes_freed > 2_000_000, again
    assert [s.id for s in Repository.open(inner).list_sets()] == [new.id]
    assert not list(inner.list("locks"))  # the restore's lock went with it


def test_a_restore_of_a_set_forgotten_meanwhile_is_refused(two_sets):
    inner, old, _new = two_sets
    reader = Repository.open(inner)
    s = reader.get_set(old.id)  # resolved before the prune
    Repository.open(inner).prune(PrunePolicy(keep_last=1), grace=0)
    with pytest.raises(NotFoundError, match="was forgotten by a prune before its restore began"):
        next(reader.restore_stream(s))
