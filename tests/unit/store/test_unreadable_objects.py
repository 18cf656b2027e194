"""Objects the file system refuses or that are damaged: one bad object never takes the rest of
the repository down with it, and never lets garbage collection delete what it cannot see.

- a set object that cannot be read (damaged, or a directory where the file should be) is left
  out of listings and noted; every other set lists and restores; check names it; prune and gc
  refuse to run (what the set needs cannot be known), so nothing of it is deleted, and once a
  good copy is back the set restores;
- an index file that cannot be read does not stop the repository from opening;
- a pack directory that cannot be listed is an error, never a partial listing;
- a key object that cannot be read is a problem of that key, not of the repository."""

from __future__ import annotations

import os
import shutil

import pytest
from cairn.store.content import crypto
from cairn.store.errors import BackendError, CorruptionError, FailedPreconditionError
from cairn.store.model import PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from storekit import backup, make_tree, restore_and_compare, write_random


def local(root) -> LocalBackend:
    """A LocalBackend on a directory that holds a repository (its config object): the backend
    makes no repository out of a bare directory (test_local_makes_no_repository_of_a_bare_directory)."""
    b = LocalBackend(str(root))
    b.put("config", "config", b"cfg")
    return b

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}


@pytest.fixture(params=["plaintext", "encrypted"])
def opened(request, tmp_path):
    """(repository root, open function): a local repository, plaintext or encrypted."""
    root = str(tmp_path / "repo")
    secret = crypto.Secret("passphrase", b"pw") if request.param == "encrypted" else None
    Repository.init(LocalBackend(root), secret=secret, argon2=FAST if secret else None).close()

    def open_repo() -> Repository:
        return Repository.open_local(root, secret=secret)
    return root, open_repo


def three_sets(repo: Repository, src, rng) -> list:
    """Three sets; each set's own file (only in it) is big enough to have its own pack."""
    make_tree(str(src), rng, files=8)
    sets = []
    for i in range(3):
        write_random(src / f"only{i}.bin", 300_000, rng)
        sets.append(backup(repo, src))
        os.unlink(src / f"only{i}.bin")
    write_random(src / "only2.bin", 1, rng)
    return sets


def spoil(path: str, how: str) -> bytes:
    """Damage the object at `path` (flip a byte, or replace it with a directory); its bytes before."""
    with open(path, "rb") as f:
        before = f.read()
    if how == "flip":
        with open(path, "r+b") as f:
            f.seek(len(before) // 2)
            f.write(bytes([before[len(before) // 2] ^ 1]))
    else:
        os.unlink(path)
        os.mkdir(path)
    return before


@pytest.mark.parametrize("how", ["flip", "directory"])
def test_an_unreadable_set_is_left_out_and_prune_refuses_to_delete_its_data(opened, src, tmp_path, rng, how):
    root, open_repo = opened
    repo = open_repo()
    a, b, c = three_sets(repo, src, rng)
    repo.close()
    path = os.path.join(root, "sets", b.id)
    before = spoil(path, how)

    repo = open_repo()  # opens, lists and restores the other sets
    try:
        assert [s.id for s in repo.list_sets()] == [a.id, c.id]
        assert list(repo.unreadable_sets) == [b.id]
        report = repo.check()
        assert any(p.object_id == b.id and "not listed" in p.message for p in report.errors)
        packs = sorted(os.listdir(os.path.join(root, "packs")))
        for dry_run in (True, False):
            with pytest.raises(FailedPreconditionError, match=rf"unable to read set '{b.id[:12]}\.\.'.*nothing may be "
                                                               "deleted") as e:
                repo.prune(PrunePolicy(keep_last=1), dry_run=dry_run, grace=0)
            assert "cairn repair sets" in (e.value.hint or "")
        assert sorted(os.listdir(os.path.join(root, "packs"))) == packs
        assert {s.id for s in repo.list_sets()} == {a.id, c.id}, "no set was forgotten"
    finally:
        repo.close()

    if how == "directory":
        os.rmdir(path)
    with open(path, "wb") as f:  # a good copy put back: the set is whole again
        f.write(before)
    repo = open_repo()
    try:
        got = repo.get_set(b.id)
        target = tmp_path / "restored-b"
        repo.restore(got, str(target))
        assert (target / "only1.bin").stat().st_size == 300_000
        assert not repo.check(read_data=True).errors
    finally:
        repo.close()


def test_an_index_file_that_cannot_be_read_does_not_stop_the_repository(opened, src, tmp_path, rng):
    root, open_repo = opened
    repo = open_repo()
    make_tree(str(src), rng, files=8)
    s = backup(repo, src)
    repo.close()
    index = os.path.join(root, "index")
    name = sorted(os.listdir(index))[0]
    spoil(os.path.join(index, name), "directory")
    repo = open_repo()
    try:
        assert any(name in p or "a directory is where an object belongs" in p for p in repo.index_problems)
        write_random(src / "new.bin", 1000, rng)  # (an identical index file would take the same name)
        again = backup(repo, src)  # what the lost file indexed is stored again
        restore_and_compare(repo, repo.get_set(again.id), str(src), str(tmp_path / "again"))
        assert repo.check().warnings
    finally:
        repo.close()
    assert s.id


def test_a_pack_directory_that_cannot_be_listed_is_an_error_not_a_partial_listing(tmp_path, monkeypatch):
    backend = local(tmp_path / "repo")
    backend.put("packs", "ab" + "0" * 62, b"x")
    backend.put("packs", "cd" + "0" * 62, b"y")
    real = os.listdir

    def refuse(path):
        if os.fsdecode(path).endswith(os.path.join("packs", "cd")):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "listdir", refuse)
    with pytest.raises(BackendError, match=r"unable to list '.*packs/cd': Permission denied"):
        list(backend.list("packs"))


def test_a_key_object_that_cannot_be_read_is_a_problem_of_that_key(tmp_path):
    root = str(tmp_path / "repo")
    secret = crypto.Secret("passphrase", b"pw")
    Repository.init(LocalBackend(root), secret=secret, argon2=FAST).close()
    os.mkdir(os.path.join(root, "keys", "f" * 64))
    repo = Repository.open_local(root, secret=secret)
    try:
        problems = [p for _info, key_id, p in repo.list_keys() if key_id == "f" * 64]
        assert problems and "a directory is where an object belongs" in problems[0]
    finally:
        repo.close()
    shutil.rmtree(os.path.join(root, "keys", "f" * 64))


def test_read_data_check_reports_a_pack_it_cannot_read_and_reads_the_others(opened, src, rng):
    root, open_repo = opened
    repo = open_repo()
    try:
        three_sets(repo, src, rng)
        packs = sorted(n for d in os.listdir(os.path.join(root, "packs"))
                       for n in os.listdir(os.path.join(root, "packs", d)))
        victim = packs[0]
        spoil(os.path.join(root, "packs", victim[:2], victim), "directory")
        report = repo.check(read_data=True)
        in_the_way = "a directory is where an object belongs"
        assert any(p.object_id == victim and in_the_way in p.message for p in report.errors)
        assert report.packs_checked == len(packs) - 1
    finally:
        repo.close()


def test_prune_names_every_set_whose_listing_is_damaged_so_one_forget_lets_it_run(tmp_path, src, rng):
    """Two sets whose root listings are damaged: prune named only the first, and forgetting it
    by name stopped on the second (and forgetting the second, on the first), so the hint led
    from one to the other. It names both, and forgetting both as it says lets prune run."""
    import re

    from test_corruption import flip_byte

    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root))
    try:
        a, b, c = three_sets(repo, src, rng)
        for s in (a, b):
            flip_byte(root, repo, bytes.fromhex(s.tree))
    finally:
        repo.close()
    repo = Repository.open_local(root)
    try:
        with pytest.raises(CorruptionError) as e:
            repo.prune(PrunePolicy(), grace=0)
        assert "(and the listings of 1 more set)" in e.value.message
        command = re.search(r"'cairn prune ((?:--forget [0-9a-f]+ ?)+)'", e.value.hint)
        assert command is not None, e.value.hint
        named = command.group(1).split()[1::2]
        assert sorted(named) == sorted([a.id[:12], b.id[:12]])
        report = repo.prune(PrunePolicy(forget=tuple(named)), grace=0)
        assert sorted(report.forgotten) == sorted([a.id, b.id])
        assert [s.id for s in repo.list_sets()] == [c.id]
        assert not repo.check(read_data=True).errors
    finally:
        repo.close()


def test_prune_with_a_damaged_listing_of_a_kept_set_names_it_and_changes_nothing(tmp_path, src, rng):
    """Damage in a tree of a set the policy keeps: prune stops before it forgets or deletes
    anything, naming the set and `--forget`; forgetting that set by name lets it run."""
    from test_corruption import flip_byte

    root = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(root))
    try:
        a, b, c = three_sets(repo, src, rng)
        flip_byte(root, repo, bytes.fromhex(b.tree))  # the middle set's root listing (only it has it)
    finally:
        repo.close()
    state = lambda: sorted(os.path.relpath(os.path.join(d, f), root)  # noqa: E731 - every object but locks
                           for d, _, fs in os.walk(root) for f in fs if "locks" not in d)
    repo = Repository.open_local(root)
    try:
        before = state()
        for keep in (3, 2):  # forgets nothing; forgets the oldest, keeps the damaged one
            with pytest.raises(CorruptionError, match=rf"unable to read set '{b.id[:12]}\.\.'.*nothing may be "
                                                      "deleted"):
                repo.prune(PrunePolicy(keep_last=keep), grace=0)
            assert state() == before, "nothing forgotten, marked or deleted"
        with pytest.raises(CorruptionError) as e:
            repo.prune(PrunePolicy(), grace=0)
        assert f"cairn prune --forget {b.id[:12]}" in e.value.hint
        report = repo.prune(PrunePolicy(forget=(b.id[:10],)), dry_run=True)
        assert report.forgotten == (b.id,) and not any(d.set_id == b.id for d in report.decisions)
        assert state() == before
        report = repo.prune(PrunePolicy(forget=(b.id[:10],)), grace=0)  # forgets that set alone: runs
        assert report.forgotten == (b.id,)
        assert [s.id for s in repo.list_sets()] == [a.id, c.id]
        assert not repo.check(read_data=True).errors
        assert repo.restore(repo.get_set(c.id), str(tmp_path / "out-c")).errors == ()
    finally:
        repo.close()


def test_structure_check_finds_a_truncated_pack_without_reading_it(opened, src, rng):
    """A pack shorter than the blobs the index places in it is found from the listing's sizes
    (as restic's check compares pack sizes with its index), not only by --read-data."""
    root, open_repo = opened
    repo = open_repo()
    try:
        three_sets(repo, src, rng)
        assert not repo.check().errors
        victim = max(repo.index.packs())
        path = os.path.join(root, "packs", victim[:2], victim)
        end = max(loc.offset + loc.stored_len for _, loc in repo.index.items() if loc.pack == victim)
        with open(path, "r+b") as f:
            f.truncate(end - 10)  # the tail of its last blob, and its trailer
        report = repo.check()
        assert any(p.object_id == victim and "is truncated" in p.message for p in report.errors), report.errors
        assert "cairn repair index" in report.advice
    finally:
        repo.close()


def test_repairs_report_what_the_store_refuses_and_go_on(opened, src, tmp_path, rng):
    """A directory where a set object or an index file should be: `repair sets` keeps it and
    says so (a storage error is never taken for damage); `repair index` leaves the index file
    but reads its packs as unindexed, so every set restores again; verify says to fix it by hand."""
    root, open_repo = opened
    repo = open_repo()
    try:
        a, b, c = three_sets(repo, src, rng)
    finally:
        repo.close()
    spoil(os.path.join(root, "sets", b.id), "directory")
    index_name = sorted(os.listdir(os.path.join(root, "index")))[0]
    spoil(os.path.join(root, "index", index_name), "directory")
    repo = open_repo()
    try:
        assert "fix those by hand" in repo.check().advice
        sets_report = repo.repair_sets()
        assert [n for n, _ in sets_report.refused] == [b.id] and not sets_report.removed
        assert os.path.isdir(os.path.join(root, "sets", b.id))
        index_report = repo.repair_index()
        assert index_name in index_report.damaged_index_files
        assert os.path.isdir(os.path.join(root, "index", index_name)), "never deleted"
        for s in (a, c):
            target = tmp_path / f"out-{s.id[:6]}"
            assert repo.restore(repo.get_set(s.id), str(target)).errors == ()
    finally:
        repo.close()


def test_damaged_key_objects_are_not_reported_as_a_wrong_secret(tmp_path):
    """Every key object damaged: the repository cannot be opened, and the error says why (not
    "wrong passphrase"); a wrong secret beside a damaged key object says both."""
    from cairn.store.errors import WrongKeyError

    root = str(tmp_path / "repo")
    secret = crypto.Secret("passphrase", b"pw")
    Repository.init(LocalBackend(root), secret=secret, argon2=FAST).close()
    keys = os.path.join(root, "keys")
    (only,) = os.listdir(keys)
    with open(os.path.join(keys, only), "rb") as f:
        good = f.read()
    with open(os.path.join(keys, "e" * 64), "wb") as f:
        f.write(b"{ not a key")
    with pytest.raises(WrongKeyError, match=r"wrong passphrase or key file \(1 more key objects cannot be read"):
        Repository.open_local(root, secret=crypto.Secret("passphrase", b"not it"))
    with open(os.path.join(keys, only), "wb") as f:
        f.write(good[: len(good) // 2])
    with pytest.raises(CorruptionError, match=r"no key object can be read \(2 damaged"):
        Repository.open_local(root, secret=secret)
    for name in os.listdir(keys):  # every key object deleted: neither "wrong passphrase" nor "damaged"
        os.unlink(os.path.join(keys, name))
    with pytest.raises(CorruptionError, match=r"encrypted and holds no key object \(keys/ is empty\)"):
        Repository.open_local(root, secret=secret)
