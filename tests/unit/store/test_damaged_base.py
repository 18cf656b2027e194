"""An incremental or differential whose base set has a listing (tree) that cannot be read.

Still indexed but damaged: the backup fails with the way out (repair the index, then back up
again), since walking the directory again would reference the same damaged listing by its
id. Once `repair index --read-data` has dropped it, a backup on a handle that did not repair (the
one that did takes a full) succeeds, reads that directory from the source as a full would,
notes it, and the new set restores whole — the base's damage
does not pass into it."""

from __future__ import annotations

import os
import time

import pytest
from cairn.store.errors import CorruptionError
from cairn.store.model import ChangeHint
from cairn.store.repository import Repository
from storekit import backup, make_tree, restore_and_compare, write_random
from test_corruption import entry_of, flip_byte, small_repo  # noqa: F401 - the fixture


@pytest.mark.parametrize("level", ["incremental", "differential"])
@pytest.mark.parametrize("hinted", [False, True], ids=["walked", "journal"])
def test_a_damaged_base_listing_fails_the_backup_until_repaired_then_is_read_from_the_source(
        small_repo, src, tmp_path, rng, level, hinted):  # noqa: F811
    make_tree(str(src), rng, files=12, max_size=50_000)
    base = backup(small_repo, src)
    sub = entry_of(small_repo, base, "a/b")
    flip_byte(tmp_path / "repo", small_repo, sub.subtree)
    write_random(src / "c" / "new.bin", 5000, rng)
    # the journal names only c/new.bin: a/ would be carried over unread from the base
    changes = ChangeHint(paths=frozenset({str(src / "c" / "new.bin")})) if hinted else None
    repo = Repository.open_local(str(tmp_path / "repo"))  # nothing of the base's trees cached
    try:
        with pytest.raises(CorruptionError, match=r"unable to read the base set's listing of 'a(/b)?'") as e:
            backup(repo, src, level, changes=changes)
        assert "cairn repair index --read-data" in (e.value.hint or "")
        repo.repair_index(read_data=True)
        repo.close()  # another handle (a host that did not repair) still bases on the damaged set:
        repo = Repository.open_local(str(tmp_path / "repo"))
        s = backup(repo, src, level, changes=changes)
        assert s.level == level
        assert any("is lost" in n and "read from the source" in n for n in s.extra.get("notes", [])), s.extra
        assert s.stats.files == sum(len(f) for _, _, f in os.walk(src))
        restore_and_compare(repo, s, str(src), str(tmp_path / "out"))
        assert not [p for p in repo.check(set_ref=s.id).errors if s.id in p.sets]
    finally:
        repo.close()


def test_after_a_repair_dropped_data_the_next_incremental_is_a_full(small_repo, src, tmp_path, rng):  # noqa: F811
    """An incremental carries unchanged files over by reference without reading them: after
    `repair index` dropped the blobs of a lost pack, it would name them again. The handle that
    repaired takes the next set as a full instead, which stores them again."""
    make_tree(str(src), rng, files=12, max_size=50_000)
    write_random(src / "big.bin", 600_000, rng)
    base = backup(small_repo, src)
    loc = small_repo.index.get(entry_of(small_repo, base, "big.bin").chunks[0])
    os.unlink(tmp_path / "repo" / "packs" / loc.pack[:2] / loc.pack)
    repo = Repository.open_local(str(tmp_path / "repo"))
    try:
        assert repo.repair_index().entries_missing > 0
        s = backup(repo, src, "incremental")
        assert s.level == "full" and "repair index" in s.note, (s.level, s.note)
        restore_and_compare(repo, s, str(src), str(tmp_path / "out"))
        restore_and_compare(repo, repo.get_set(base.id), str(src), str(tmp_path / "old"))  # healed too
        assert backup(repo, src, "incremental").level == "incremental"  # only the sets before the repair
    finally:
        repo.close()


@pytest.mark.parametrize("hinted", [False, True], ids=["walked", "journal"])
def test_an_unchanged_file_whose_index_file_is_lost_is_read_again(small_repo, src, tmp_path, rng,  # noqa: F811
                                                                   hinted):
    """The index file naming a file's content is emptied (a crash of the disk), the base's
    listings are in another one: an incremental must not carry the file over by reference (its
    set would name blobs no index file names), also where the journal names other paths only."""
    make_tree(str(src), rng, files=6, max_size=20_000)
    os.makedirs(src / "b", exist_ok=True)
    write_random(src / "b" / "x.bin", 50_000, rng)
    write_random(src / "b" / "y.bin", 50_000, rng)
    _age(src)  # older than the sets: not read again by the racy-timestamp rule
    first = backup(small_repo, src)
    lost = list(small_repo.backend.list("index"))
    write_random(src / "b" / "x.bin", 50_000, rng)  # b/'s listing of the next set is in a new index file
    _age(src)
    backup(small_repo, src, "incremental")
    for name in lost:
        os.truncate(tmp_path / "repo" / "index" / name, 0)
    write_random(src / "c" / "new.bin", 5000, rng)
    changes = ChangeHint(paths=frozenset({str(src / "c" / "new.bin")})) if hinted else None
    repo = Repository.open_local(str(tmp_path / "repo"))
    try:
        s = backup(repo, src, "incremental", changes=changes)
        assert s.level == "incremental"
        restore_and_compare(repo, s, str(src), str(tmp_path / "out"))
        assert any("is not in the index: read from the source instead" in n for n in s.extra["notes"]), s.extra
        repo.repair_index()
        restore_and_compare(repo, repo.get_set(s.id), str(src), str(tmp_path / "again"))
        assert repo.check().errors == () or all(s.id not in p.sets for p in repo.check().errors)
        assert first.id in {x.id for x in repo.list_sets()}
    finally:
        repo.close()


def _age(root) -> None:
    """Set every file's times an hour back."""
    past = time.time() - 3600
    for d, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))
