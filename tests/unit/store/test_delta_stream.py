"""A delta restore that holds a window of the manifest at a time (cairn.fsio.delta.DeltaStream,
what `cairn restore --delta` runs when the client or the daemon writes): fed in small batches
and windows of a few entries, so that directories, hard links and extras span windows, it
makes the target equal to the set, its dry run counts what it writes, and a second dry run
finds nothing to do."""

from __future__ import annotations

import os
import random

import pytest
from cairn.fsio import delta
from cairn.fsio.delta import DeltaStream
from cairn.fsio.records import EntryMeta
from storekit import assert_same_tree, backup, snapshot, write_random


def _tree(root: str, rng: random.Random) -> None:
    for d in ("a", "a/b", "a/b/deep", "c", "empty", "locked"):
        os.makedirs(os.path.join(root, d))
    for i in range(18):
        d = ("", "a", "a/b", "a/b/deep", "c")[i % 5]
        write_random(os.path.join(root, d, f"f{i:02d}.bin"), rng.randrange(0, 300_000), rng)
    write_random(os.path.join(root, "a", "h1"), 50_000, rng)
    os.link(os.path.join(root, "a", "h1"), os.path.join(root, "c", "h2"))  # one inode, windows apart
    write_random(os.path.join(root, "g1"), 20_000, rng)
    os.link(os.path.join(root, "g1"), os.path.join(root, "c", "g2"))
    os.symlink("a/f01.bin", os.path.join(root, "link"))
    os.setxattr(os.path.join(root, "a", "f01.bin"), "user.note", b"kept")
    os.chmod(os.path.join(root, "a", "b"), 0o750)
    os.chmod(os.path.join(root, "locked"), 0o500)
    for i, d in enumerate(("a/b/deep", "a/b", "a", "c", "empty", "locked", "")):
        os.utime(os.path.join(root, d), ns=(10**18 + i, 10**18 + i))


def _damage(root: str, rng: random.Random) -> None:
    os.unlink(os.path.join(root, "f00.bin"))
    with open(os.path.join(root, "a", "f01.bin"), "r+b") as f:
        f.write(b"\xff" * 10)
    os.truncate(os.path.join(root, "a", "b", "f02.bin"), 3)
    os.chmod(os.path.join(root, "c", "f04.bin"), 0o600)
    os.rename(os.path.join(root, "a", "b", "deep"), os.path.join(root, "gone"))  # an extra, and a missing dir
    os.unlink(os.path.join(root, "c", "g2"))  # a link broken: something else in its place
    write_random(os.path.join(root, "c", "g2"), 10, rng)
    os.link(os.path.join(root, "a", "h1"), os.path.join(root, "outside"))  # h1 shares its inode with an extra
    os.unlink(os.path.join(root, "c", "f09.bin"))
    os.makedirs(os.path.join(root, "c", "f09.bin", "in"))  # a directory in a file's place
    write_random(os.path.join(root, "c", "f09.bin", "in", "x"), 5, rng)
    write_random(os.path.join(root, "a", "b", ".cairn-delta-" + "ab" * 12), 7, rng)  # left by a killed delta
    write_random(os.path.join(root, "a", "extra.txt"), 9, rng)


@pytest.fixture(params=[1, 3, 1000])
def setup(request, repo, src, tmp_path, rng, monkeypatch):
    monkeypatch.setattr(delta, "WINDOW_ENTRIES", request.param)  # 1000: the whole manifest at once
    _tree(str(src), rng)
    s = backup(repo, str(src))
    entries = [r for r in repo.restore_stream(s, manifest=True) if isinstance(r, EntryMeta)]
    assert len(entries) > 25

    def chunks(ids):
        return zip(ids, repo.read_chunks(s, ids, errors=True), strict=True)

    def run(target: str, *, write: bool = True, delete: bool = False, quick: bool = False,
            rootless: bool = False) -> tuple[DeltaStream, list]:
        shown: list = []
        given = [m for m in entries if m.path] if rootless else entries  # rootless: as a restore of chosen paths
        ds = DeltaStream(target, chunks, write=write, delete=delete, quick=quick, extras_under=[b""],
                         id_key=repo.chunk_id_key, show=lambda lines, extras: shown.append((lines, extras)))
        for i in range(0, len(given), 2):  # batches of two entries
            ds.feed(given[i:i + 2])
        ds.finish()
        return ds, shown

    return str(src), str(tmp_path / "t"), run


def test_a_streamed_delta_into_nothing_restores_the_set(setup) -> None:
    src, target, run = setup
    ds, _ = run(target)
    assert ds.errors == [] and ds.stats.errors == []
    assert_same_tree(src, target)
    again, shown = run(target, write=False, delete=True)
    assert again.changes == 0 and again.write_bytes == 0 and shown == []


@pytest.mark.parametrize("delete", [True, False])
def test_a_streamed_delta_mends_damage_and_its_dry_run_counts_what_it_writes(setup, rng, delete: bool) -> None:
    src, target, run = setup
    run(target)
    before = os.stat(target).st_mtime_ns
    _damage(target, rng)
    dry, shown = run(target, write=False, delete=delete)
    lines = [line for batch, _ in shown for line in batch]
    extras = sorted(x for _, batch in shown for x in batch)
    assert extras == [b"a/extra.txt", b"c/f09.bin/in", b"gone", b"outside"], extras
    assert "remove a/b/.cairn-delta-" + "ab" * 12 + " (left by an interrupted delta)" in lines
    assert "make hardlink g1" in lines and "make hardlink c/h2" in lines, lines  # (c/g2 comes first: the file)
    assert any(x.startswith("write a/h1 (new file") for x in lines), lines
    assert dry.errors == ([] if delete else
                          ["'c/f09.bin' is a directory holding entries the set does not: not replaced by the set's "
                           "file (restore with --delete to replace it)"])

    ds, _ = run(target, delete=delete)
    assert ds.stats.errors == [] and ds.errors == dry.errors
    assert ds.stats.bytes_written == dry.write_bytes > 0
    assert ds.stats.deleted == (1 + len(extras) if delete else 1)  # the temporary always
    assert ds.extras == (0 if delete else len(extras))
    if delete:
        assert_same_tree(src, target)
        assert os.stat(target).st_mtime_ns == before  # the target's own metadata set last
        assert run(target, write=False, delete=True)[0].changes == 0
    else:
        skip = (b"a/extra.txt", b"c/f09.bin", b"gone", b"outside")
        assert snapshot(target, skip=skip).nodes == {k: v for k, v in snapshot(src, skip=skip).nodes.items()}
        assert os.stat(os.path.join(target, "outside")).st_ino != os.stat(os.path.join(target, "a", "h1")).st_ino
        assert os.stat(os.path.join(target, "a", "h1")).st_ino == os.stat(os.path.join(target, "c", "h2")).st_ino


def test_a_quick_delta_of_an_intact_tree_changes_nothing(setup) -> None:
    src, target, run = setup
    run(target)
    before = snapshot(target, root_meta=True)
    ds, _ = run(target, quick=True, delete=True)
    assert (ds.stats.files_written, ds.stats.entries_made, ds.stats.meta_fixed, ds.stats.deleted) == (0, 0, 0, 0)
    assert snapshot(target, root_meta=True) == before


def test_a_file_sharing_its_inode_with_an_extra_is_replaced_and_the_target_keeps_its_metadata(setup) -> None:
    """A file of the target's top level that is clean but has a link the set does not give it
    is replaced once the manifest has ended, also when the manifest gives the target no entry
    of its own: then the target's metadata is left alone."""
    src, target, run = setup
    run(target)
    os.chmod(target, 0o711)
    os.link(os.path.join(target, "f00.bin"), os.path.join(target, "outside"))
    before = os.stat(target)
    dry, shown = run(target, write=False, rootless=True)
    assert [x for x in (line for batch, _ in shown for line in batch) if not x.startswith("delete ")] == [
        f"write f00.bin (new file; {os.path.getsize(os.path.join(src, 'f00.bin'))} bytes)"]
    ds, _ = run(target, rootless=True)
    assert ds.stats.files_written == 1 and ds.stats.bytes_written == dry.write_bytes and ds.extras == 1
    assert os.stat(os.path.join(target, "f00.bin")).st_ino != os.stat(os.path.join(target, "outside")).st_ino
    after = os.stat(target)
    assert after.st_mode == before.st_mode and after.st_uid == before.st_uid
    assert_same_tree(src, target, skip=(b"outside",))
