"""Corruption: one flipped byte in a pack is found by read-data check and by a restore touching it."""

from __future__ import annotations

import os

import pytest
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.errors import short
from cairn.store.repository import Repository
from storekit import assert_same_tree, backup, make_tree, write_random

VICTIM = "a/b/victim.bin"


@pytest.fixture
def small_repo(tmp_path):
    config = RepoConfig.new(pack_size=256 * 1024, chunker=ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024,
                                                                          max_size=256 * 1024))
    from cairn.store.storage.backend import LocalBackend
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), config)
    yield repo
    repo.close()


def entry_of(repo, s, path: str):
    tree = bytes.fromhex(s.tree)
    *dirs, name = path.split("/")
    for d in dirs:
        tree = next(e for e in repo.load_tree(tree) if e.name == d.encode()).subtree
    return next(e for e in repo.load_tree(tree) if e.name == name.encode())


def flip_byte(repo_root, repo, blob_id: bytes) -> str:
    """Flip one byte in the middle of blob `blob_id` inside its pack file; return the pack name."""
    loc = repo.index.get(blob_id)
    path = os.path.join(repo_root, "packs", loc.pack[:2], loc.pack)
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.stored_len // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))
    return loc.pack


def test_flipped_byte_found_by_check_and_restore(small_repo, src, tmp_path, rng):
    make_tree(str(src), rng, files=15, max_size=200_000)
    write_random(src / VICTIM, 150_000, rng)
    first = backup(small_repo, src)
    write_random(src / "later.bin", 1000, rng)
    second = backup(small_repo, src, "incremental")
    assert small_repo.check(read_data=True).ok

    victim = entry_of(small_repo, first, VICTIM)
    pack = flip_byte(tmp_path / "repo", small_repo, victim.chunks[-1])

    repo = Repository.open_local(str(tmp_path / "repo"))
    report = repo.check(read_data=True)
    assert not report.ok
    assert any(p.object_id == pack and short(pack) in p.message for p in report.errors)
    hurt = [p for p in report.errors if VICTIM in p.paths]
    assert hurt, [p.message for p in report.errors]
    assert set(hurt[0].sets) == {first.id, second.id}
    assert short(pack) in hurt[0].message
    assert all(set(p.paths) <= {VICTIM, ""} for p in report.errors), "only the victim is hurt"

    target = tmp_path / "out"
    stats = repo.restore(second, str(target))
    assert len(stats.errors) == 1, stats.errors
    assert VICTIM in stats.errors[0] and short(pack) in stats.errors[0]
    assert not (target / VICTIM).exists()
    assert_same_tree(src, target, skip=(VICTIM.encode(),))


def test_structure_check_of_a_set_and_read_data_of_one_set(small_repo, src, tmp_path, rng):
    make_tree(str(src), rng, files=6, max_size=100_000)
    write_random(src / VICTIM, 100_000, rng)
    s = backup(small_repo, src)
    other = tmp_path / "other"
    make_tree(str(other), rng, files=4, max_size=100_000, dirs=("x",))
    s_other = backup(small_repo, other, source="other")
    flip_byte(tmp_path / "repo", small_repo, entry_of(small_repo, s, VICTIM).chunks[0])
    repo = Repository.open_local(str(tmp_path / "repo"))
    assert repo.check(read_data=True, set_ref=s_other.id).ok
    report = repo.check(read_data=True, set_ref=s.id[:10])
    assert not report.ok and any(VICTIM in p.paths for p in report.errors)


def test_missing_pack_is_an_error_naming_sets_and_paths(small_repo, src, tmp_path, rng):
    make_tree(str(src), rng, files=6, max_size=100_000)
    write_random(src / VICTIM, 100_000, rng)
    s = backup(small_repo, src)
    loc = small_repo.index.get(entry_of(small_repo, s, VICTIM).chunks[0])
    os.unlink(os.path.join(tmp_path, "repo", "packs", loc.pack[:2], loc.pack))
    repo = Repository.open_local(str(tmp_path / "repo"))
    report = repo.check()
    assert not report.ok
    assert any("missing" in p.message and p.object_id == loc.pack for p in report.errors)
    # the pack may also hold the trees of the victim's directories: then those are named
    assert any(covers(p.paths, VICTIM) and s.id in p.sets for p in report.errors), report.errors
    hurt = {p for problem in report.errors for p in problem.paths}
    target = tmp_path / "out"
    stats = repo.restore(s, str(target))
    named = [p for p in hurt if covers([p], VICTIM)]
    assert any(f"'{p}" in e for p in named for e in stats.errors), (named, stats.errors)
    assert not (target / VICTIM).exists()
    for rel in hurt:  # everything not hurt restores
        assert not (target / rel).is_file()
    assert_same_tree(src, target, skip=tuple(os.fsencode(p) for p in hurt))


def covers(paths, path: str) -> bool:
    return any(p == path or path.startswith(p + "/") for p in paths)


def test_damaged_tree_is_reported_with_its_directory(small_repo, src, tmp_path, rng):
    make_tree(str(src), rng, files=9, max_size=50_000)
    s = backup(small_repo, src)
    sub = entry_of(small_repo, s, "a/b")
    flip_byte(tmp_path / "repo", small_repo, sub.subtree)
    repo = Repository.open_local(str(tmp_path / "repo"))
    report = repo.check(read_data=True)
    assert not report.ok
    assert any(s.id in p.sets and "a/b" in p.paths for p in report.errors), report.errors
    target = tmp_path / "out"
    stats = repo.restore(s, str(target))
    assert len(stats.errors) == 1 and "'a/b/'" in stats.errors[0], stats.errors
    assert (target / "a" / "b").is_dir() and os.listdir(target / "a" / "b") == []
    assert_same_tree(src, target, skip=(b"a/b",))
