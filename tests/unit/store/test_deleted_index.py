"""An index file deleted from the repository, seen by a handle that keeps running (a daemon).

What an incremental carries over unread from its base must be wholly indexed; the handle
remembers the trees it found so (snapshots/indexed.py) and forgets them whenever a reload no
longer names a pack it named before. A prune on another handle deletes packs: from storage
that looks like a pack deleted together with its index file, so the memory ends there too, and
the next incremental walks its stored trees again but reads nothing from the source. An index
file deleted while a pack it named is still stored: everything is looked at again, also by a
session that found its subtrees whole before the file went, which then refuses to commit.
And verify says which pack lost its index file.
"""

from __future__ import annotations

import os
import time

import pytest
from cairn.store.errors import FailedPreconditionError
from cairn.store.model import BackupRequest, ChangeHint, PrunePolicy
from cairn.store.repository import Repository
from storekit import backup, make_tree, restore_and_compare, write_random
from test_corruption import small_repo  # noqa: F401 - the fixture


def _hint(*paths) -> ChangeHint:
    return ChangeHint(paths=frozenset(str(p) for p in paths))


def _age(root) -> None:
    """Every file an hour old: not read again by the racy-timestamp rule."""
    past = time.time() - 3600
    for d, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))


def test_a_prune_elsewhere_and_a_deleted_index_file_both_end_what_was_found_whole(
        small_repo, src, tmp_path, rng):  # noqa: F811
    make_tree(str(src), rng, files=12, max_size=50_000)
    backup(small_repo, src)
    for _ in range(2):  # sets a prune forgets, whose packs it deletes
        write_random(src / "c" / "churn.bin", 300_000, rng)
        backup(small_repo, src, "incremental", changes=_hint(src / "c" / "churn.bin"))
    indexed = small_repo.indexed_trees
    assert len(indexed) > 0  # a/ was carried over: found whole
    epoch = indexed.epoch

    other = Repository.open_local(str(tmp_path / "repo"))
    try:
        files = set(small_repo.backend.list("index"))
        report = other.prune(PrunePolicy(keep_last=1))
        assert report.packs_deleted > 0 and not files & set(small_repo.backend.list("index")), report
        small_repo.refresh_index()  # every file it had loaded is gone: a reload
        # packs deleted: a collection's work or a loss, storage cannot tell; found whole again below
        assert indexed.epoch == epoch + 1 and len(indexed) == 0
        s = backup(small_repo, src, "incremental", changes=_hint(src / "c" / "churn.bin"))
        assert len(indexed) > 0 and "notes" not in s.extra, s.extra
        epoch = indexed.epoch

        (kept,) = small_repo.backend.list("index")
        os.unlink(tmp_path / "repo" / "index" / kept)  # its packs stay: what they hold is in no index now
        small_repo.refresh_index()
        assert indexed.epoch == epoch + 1 and len(indexed) == 0

        assert other.repair_index().blobs_added > 0
        small_repo.refresh_index()  # a repair that only adds knowledge loses nothing
        assert indexed.epoch == epoch + 1
        write_random(src / "a" / "new.bin", 5000, rng)
        s = backup(small_repo, src, "incremental", changes=_hint(src / "a" / "new.bin"))
        assert len(indexed) > 0 and "notes" not in s.extra, s.extra  # whole again
        restore_and_compare(small_repo, s, str(src), str(tmp_path / "out"))
    finally:
        other.close()


def test_an_index_file_deleted_while_a_session_runs_fails_its_commit(small_repo, src, tmp_path, rng):  # noqa: F811
    """The session carried a/ over, found whole; then the only index file naming a/'s content
    goes. Writing the set would name blobs no index file names: the commit refuses, with the way
    on, and the next backup reads a/ again and restores whole."""
    make_tree(str(src), rng, files=12, max_size=50_000)
    _age(src)
    backup(small_repo, src)
    (first,) = small_repo.backend.list("index")
    write_random(src / "c" / "x.bin", 5000, rng)
    _age(src)
    backup(small_repo, src, "incremental", changes=_hint(src / "c" / "x.bin"))
    write_random(src / "c" / "y.bin", 5000, rng)
    req = BackupRequest(source="src", paths=(str(src),), level="incremental", changes=_hint(src / "c" / "y.bin"))
    with small_repo.session(req) as sess:
        sess.walk_all()
        os.unlink(tmp_path / "repo" / "index" / first)
        with pytest.raises(FailedPreconditionError, match=r"left the index while it ran") as e:
            sess.commit()
    assert "cairn repair index" in (e.value.hint or "") and "run the backup again" in (e.value.hint or "")
    assert len(small_repo.list_sets("src")) == 2
    s = small_repo.backup(req)
    assert any("no index file names" in n for n in s.extra["notes"]), s.extra
    restore_and_compare(small_repo, s, str(src), str(tmp_path / "out"))


def test_verify_names_a_pack_whose_index_file_is_gone(small_repo, src, tmp_path, rng, monkeypatch):  # noqa: F811
    """Such a pack is named as one whose index file was deleted or lost, and the advice is the
    repair alone; past the bytes verify reads to tell (LOOK_BYTES) it keeps the old warning,
    which also allows for a pack a repair left out as damaged."""
    import cairn.store.maintenance.check as checkmod

    make_tree(str(src), rng, files=12, max_size=50_000)
    backup(small_repo, src)
    (gone,) = small_repo.backend.list("index")
    os.unlink(tmp_path / "repo" / "index" / gone)
    report = small_repo.check()
    named = [w.message for w in report.warnings if "index file was deleted or lost" in w.message]
    assert named and all("'cairn repair index' indexes it again" in m for m in named), report.warnings
    assert report.advice == ("'cairn repair index' indexes again the packs whose index file is gone: what they hold "
                             "is not lost, and no backup is needed for it")
    monkeypatch.setattr(checkmod, "LOOK_BYTES", 0)
    report = small_repo.check()
    assert not [w for w in report.warnings if "deleted or lost" in w.message]
    assert all("if its index file was lost" in w.message for w in report.warnings), report.warnings
    assert "a full backup" in report.advice
    monkeypatch.undo()
    small_repo.repair_index()
    assert small_repo.check(read_data=True).ok
