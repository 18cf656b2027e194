"""repair index and repair sets on a real local repository, plaintext and encrypted.

A lost pack, a damaged blob or a lost index file is repaired, the next backup stores what was
lost again, and then every set, the older ones too, restores identical and verify is clean. A
dry run writes nothing; a crash between the new index file and the deletion of the old ones
leaves a usable repository that a second repair finishes; repairs and prunes exclude each
other through the garbage collector's lock, while backups run beside them.
"""

from __future__ import annotations

import os

import blake3
import pytest
from cairn.store.content import crypto
from cairn.store.content.chunker import ChunkerParams
from cairn.store.content.packs import TYPE_DATA, TYPE_TREE
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.errors import BackendError, CorruptionError, LockedError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import assert_same_tree, backup, make_tree, write_random

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
CONFIG = dict(pack_size=96 * 1024, chunker=ChunkerParams(min_size=8 * 1024, avg_size=16 * 1024, max_size=64 * 1024))
SECRET = crypto.Secret("passphrase", b"pw")


@pytest.fixture(params=["plaintext", "encrypted"])
def kind(request) -> str:
    return request.param


def _open(path: str, kind: str, backend=None) -> Repository:
    b = backend or LocalBackend(path)
    return Repository.open(b, secret=SECRET if kind == "encrypted" else None)


@pytest.fixture
def repo_path(tmp_path, kind) -> str:
    path = str(tmp_path / "repo")
    secret = SECRET if kind == "encrypted" else None
    Repository.init(LocalBackend(path), RepoConfig.new(**CONFIG), secret=secret,
                    argon2=FAST if secret else None).close()
    return path


@pytest.fixture
def repo(repo_path, kind):
    r = _open(repo_path, kind)
    yield r
    r.close()


def _pack_file(repo_path: str, pack: str) -> str:
    return os.path.join(repo_path, "packs", pack[:2], pack)


def _restored(repo: Repository, s, target: str) -> str:
    stats = repo.restore(s, target)
    assert stats.errors == (), stats.errors
    return target


def _objects(repo_path: str) -> dict[str, bytes]:
    out = {}
    for d, _dirs, files in os.walk(repo_path):
        for f in files:
            if os.path.relpath(d, repo_path) != "locks":
                with open(os.path.join(d, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(d, f), repo_path)] = fh.read()
    return out


def _two_sets(repo, src, tmp_path, rng):
    """A full set, then an incremental one after new files; each restored now, for later comparison."""
    make_tree(str(src), rng, files=12, max_size=120_000)
    s1 = backup(repo, src)
    packs1 = set(repo.backend.list("packs"))
    os.mkdir(src / "new")  # new files beside the first set's, which stay unchanged
    for i in range(4):
        write_random(str(src / "new" / f"n{i}.bin"), rng.randrange(1000, 120_000), rng)
    s2 = backup(repo, src, level="incremental")
    before = {s.id: _restored(repo, s, str(tmp_path / f"before-{s.id[:8]}")) for s in (s1, s2)}
    return s1, s2, packs1, before


def _all_restore(repo, tmp_path, before: dict[str, str], src, tag: str = "after") -> None:
    sets = repo.list_sets()
    for s in sets:
        target = _restored(repo, s, str(tmp_path / f"{tag}-{s.id[:8]}"))
        assert_same_tree(before.get(s.id, str(src)), target)


def _data_pack(repo, among: set[str]) -> str:
    """A pack of `among` that holds data blobs only (what a later backup of the same files stores again)."""
    kinds: dict[str, set[int]] = {}
    for _bid, loc in repo.index.items():
        kinds.setdefault(loc.pack, set()).add(loc.type)
    return next(p for p in sorted(among) if kinds.get(p) == {TYPE_DATA})


def test_a_lost_pack_is_stored_again_by_the_next_backup_and_every_set_restores(repo, repo_path, src, tmp_path, rng):
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    lost = _data_pack(repo, packs1)
    lost_blobs = [b for b, loc in repo.index.items() if loc.pack == lost]
    os.unlink(_pack_file(repo_path, lost))

    report = repo.check()
    assert not report.ok
    assert "'cairn repair index'" in report.advice and "backup" in report.advice
    assert "--read-data" not in report.advice

    # the bug: without the repair, a full backup deduplicates against the lost blobs
    assert all(b in repo.index for b in lost_blobs)

    r = repo.repair_index()
    assert r.missing_packs == (lost,)
    assert r.entries_missing == len(lost_blobs)
    assert r.index_files_replaced >= 2 and r.index_file
    assert r.changed
    assert not any(b in repo.index for b in lost_blobs)  # the handle reloaded its index

    s3 = backup(repo, src, level="full")
    assert s3.stats.chunks_added >= len(lost_blobs)
    _all_restore(repo, tmp_path, before, src)
    after = repo.check(read_data=True)
    assert after.ok and not after.warnings, (after.errors, after.warnings)
    assert {s1.id, s2.id, s3.id} <= {s.id for s in repo.list_sets()}


def test_a_backup_after_a_pack_was_lost_stores_it_again(repo, repo_path, src, tmp_path, rng):
    """A pack deleted by hand is still named by the index: the next backup (no repair run)
    does not deduplicate against it, stores what it needs of it again and commits a set that
    restores; the older sets, whose blobs it held, restore again too (the same ids, stored
    anew), and verify is clean without a repair."""
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    lost = _data_pack(repo, packs1)
    os.unlink(_pack_file(repo_path, lost))
    report = repo.check()
    assert not report.ok and any(e.object_id == lost and set(e.sets) == {s1.id, s2.id} for e in report.errors), \
        report.errors

    s3 = backup(repo, src, level="incremental")
    assert any(f"pack '{lost[:8]}..' the index names is missing" in n for n in s3.extra["notes"]), s3.extra
    assert s3.stats.chunks_added > 0
    _all_restore(repo, tmp_path, before, src)
    after = repo.check(read_data=True)
    assert after.ok and not after.warnings, (after.errors, after.warnings)
    assert {s1.id, s2.id, s3.id} == {s.id for s in repo.list_sets()}


@pytest.mark.parametrize("listing", [False, True], ids=["stat", "listing"])
def test_a_pack_lost_while_a_backup_runs_fails_its_commit(repo, repo_path, src, tmp_path, rng, monkeypatch, listing):
    """A pack deleted by hand while a backup that deduplicated against it runs: its commit is
    refused (no set may reference a pack that is gone), and the next backup stores again what
    it held, without a repair."""
    import cairn.store.repository as repository
    if listing:  # many packs to check: one listing of the packs instead of a request each
        monkeypatch.setattr(repository, "LIST_PACKS_FROM", 0)
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    lost = _data_pack(repo, packs1)
    sets_before = {s.id for s in repo.list_sets()}

    with repo.session(BackupRequest(source="src", paths=(str(src),), level="full")) as sess:
        sess.walk_all()
        os.unlink(_pack_file(repo_path, lost))
        with pytest.raises(CorruptionError) as e:
            sess.commit()
    assert f"pack '{lost[:8]}..'" in str(e.value) and "missing" in str(e.value)
    assert "run the backup again" in e.value.hint and "'cairn repair index'" in e.value.hint
    assert {s.id for s in repo.list_sets()} == sets_before

    backup(repo, src, level="full")
    _all_restore(repo, tmp_path, before, src)
    assert repo.check(read_data=True).ok


def test_a_damaged_blob_is_dropped_by_read_data_and_healed_by_a_backup(repo, repo_path, src, tmp_path, rng):
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    bid, loc = next((b, loc) for b, loc in sorted(repo.index.items()) if loc.type == TYPE_DATA and loc.stored_len > 64)
    with open(_pack_file(repo_path, loc.pack), "r+b") as f:
        f.seek(loc.offset + loc.stored_len // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    others = [b for b, lc in repo.index.items() if lc.pack == loc.pack and b != bid]

    report = repo.check(read_data=True)
    assert not report.ok and "'cairn repair index --read-data'" in report.advice

    plain = repo.repair_index()  # without read_data the damage is not seen: the index entry stays
    assert plain.entries_damaged == 0 and bid in repo.index

    r = repo.repair_index(read_data=True)
    assert r.damaged_packs == (loc.pack,) and r.entries_damaged == 1
    assert r.blobs_copied == len(others)
    assert bid not in repo.index
    assert all(repo.index.get(b).pack != loc.pack for b in others)  # the good blobs were copied out
    between = repo.check(read_data=True)  # only the dropped blob is missing; the damaged pack is unindexed
    assert between.errors and {p.object_id for p in between.errors} == {bid.hex()}, between.errors
    assert "'cairn repair index'" in between.advice
    left_out = [w.message for w in between.warnings if w.object_id == loc.pack]
    assert left_out and "a full backup" in left_out[0], between.warnings  # not only "repair index" again

    s3 = backup(repo, src, level="full")
    assert s3.stats.chunks_added >= 1
    _all_restore(repo, tmp_path, before, src)
    repo.prune(PrunePolicy())  # the damaged pack is a leftover now: garbage collection deletes it
    assert not os.path.exists(_pack_file(repo_path, loc.pack))
    after = repo.check(read_data=True)
    assert after.ok and not after.warnings, (after.errors, after.warnings)
    _all_restore(repo, tmp_path, before, src, "pruned")


def test_a_lost_index_file_is_rebuilt_from_the_packs(repo, repo_path, src, tmp_path, rng):
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    files = list(repo.backend.list("index"))
    assert len(files) >= 2
    gone = files[0]
    os.unlink(os.path.join(repo_path, "index", gone))
    repo.load_index()
    unindexed = set(repo.backend.list("packs")) - repo.index.packs()
    assert unindexed
    report = repo.check()
    warned = [w.message for w in report.warnings if w.object_id in unindexed]
    assert warned and all("'cairn repair index' indexes it" in m and "prune removes it" not in m for m in warned)

    r = repo.repair_index()
    assert set(r.unindexed_packs) == unindexed and r.blobs_added > 0
    assert r.entries_missing == 0 and r.entries_damaged == 0
    assert unindexed <= repo.index.packs()
    _all_restore(repo, tmp_path, before, src)
    after = repo.check(read_data=True)
    assert after.ok and not after.warnings, (after.errors, after.warnings)


def test_a_damaged_index_file_is_replaced_and_its_packs_indexed_again(repo, repo_path, src, tmp_path, rng):
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    bad = sorted(repo.backend.list("index"))[0]
    with open(os.path.join(repo_path, "index", bad), "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff")
    repo.load_index()
    assert repo.index_problems
    r = repo.repair_index()
    assert r.damaged_index_files == (bad,) and r.blobs_added > 0
    assert bad not in set(repo.backend.list("index"))
    assert not repo.index_problems
    _all_restore(repo, tmp_path, before, src)


def test_dry_run_writes_nothing(repo, repo_path, src, tmp_path, rng):
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    lost = _data_pack(repo, packs1)
    os.unlink(_pack_file(repo_path, lost))
    loc = next(loc for _b, loc in sorted(repo.index.items()) if loc.pack not in packs1 and loc.stored_len > 64)
    with open(_pack_file(repo_path, loc.pack), "r+b") as f:
        f.seek(loc.offset + 1)
        f.write(b"\x00\xff")
    objects = _objects(repo_path)
    r = repo.repair_index(dry_run=True)
    assert r.dry_run and r.missing_packs == (lost,) and r.index_file == ""
    r2 = repo.repair_index(dry_run=True, read_data=True)
    assert r2.dry_run and r2.missing_packs == (lost,) and r2.damaged_packs == (loc.pack,) and r2.blobs_copied
    assert _objects(repo_path) == objects
    real = repo.repair_index()
    assert (real.missing_packs, real.entries_missing, real.blobs_added) == (r.missing_packs, r.entries_missing,
                                                                           r.blobs_added)


def test_a_crash_after_the_new_index_file_leaves_a_usable_repository(repo_path, kind, src, tmp_path, rng):
    repo = _open(repo_path, kind)
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    lost = _data_pack(repo, packs1)
    os.unlink(_pack_file(repo_path, lost))
    old = set(repo.backend.list("index"))
    repo.close()

    # stop the process at its first delete of an index file: the new one is durable by then
    faulty = FaultyBackend(LocalBackend(repo_path), fail_at=1, mode="stop", kind="index", ops=("delete",))
    crashed = _open(repo_path, kind, faulty)
    with pytest.raises(BackendError):
        crashed.repair_index()
    now = set(LocalBackend(repo_path).list("index"))
    assert old < now  # the new file was written, no old one deleted
    for leftover in list(LocalBackend(repo_path).list("locks")):  # what a killed process leaves
        LocalBackend(repo_path).delete("locks", leftover)

    repo = _open(repo_path, kind)  # usable: every index file reads, the sets are listed, trees read
    assert not repo.index_problems and {s.id for s in repo.list_sets()} == {s1.id, s2.id}
    assert repo.list_tree(s2, recursive=True)
    second = repo.repair_index()
    assert second.missing_packs == (lost,)  # named by the old files still there, dropped again
    assert second.blobs_added == 0 and second.entries_damaged == 0
    assert set(repo.backend.list("index")) == {second.index_file}
    backup(repo, src, level="full")
    _all_restore(repo, tmp_path, before, src)
    assert repo.check(read_data=True).ok
    repo.close()


def test_repairs_and_prunes_exclude_each_other_but_not_backups(repo, src, rng):
    make_tree(str(src), rng, files=4, max_size=20_000)
    backup(repo, src)
    with repo.locks.hold("prune", gc=True):
        with pytest.raises(LockedError):
            repo.repair_index(lock_wait=0)
        with pytest.raises(LockedError):
            repo.repair_sets(lock_wait=0)
        backup(repo, src)  # shared locks: backups run beside a collector
    with repo.locks.hold("repair-index", gc=True):
        with pytest.raises(LockedError):
            repo.prune(PrunePolicy(), lock_wait=0)
    seen = []

    def during(op: str, k: str, name: str) -> None:
        if op == "put" and k == "index" and not seen:  # while the repair writes its index file
            seen.append(True)
            with pytest.raises(LockedError):
                other.repair_index(lock_wait=0)

    other = Repository.open(repo.raw_backend, secret=SECRET if repo.encrypted else None)
    hooked = Repository.open(FaultyBackend(repo.raw_backend, hook=during),
                             secret=SECRET if repo.encrypted else None)
    repo.raw_backend.delete("index", sorted(repo.raw_backend.list("index"))[0])  # something to repair
    hooked.repair_index()
    assert seen
    assert repo.repair_index().entries_missing == 0  # the lock is released afterwards


def test_repair_sets_removes_only_unreadable_set_objects(repo, repo_path, src, tmp_path, rng):
    make_tree(str(src), rng, files=4, max_size=20_000)
    good = backup(repo, src)
    damaged = backup(repo, src, level="full", tags=("x",))
    emptied = backup(repo, src, level="full", tags=("y",))
    path = os.path.join(repo_path, "sets", damaged.id)
    with open(path, "r+b") as f:
        f.seek(30)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    open(os.path.join(repo_path, "sets", emptied.id), "wb").close()
    assert {s.id for s in repo.list_sets()} == {good.id}

    dry = repo.repair_sets(dry_run=True)
    assert {n for n, _ in dry.removed} == {damaged.id, emptied.id} and dry.kept == 1
    assert set(repo.backend.list("sets")) == {good.id, damaged.id, emptied.id}
    why = dict(dry.removed)
    assert all(why[n].startswith("unable to read set") and f"'{n[:8]}..'" in why[n] for n in why), why

    r = repo.repair_sets()
    assert {n for n, _ in r.removed} == {damaged.id, emptied.id}
    assert set(repo.backend.list("sets")) == {good.id}
    assert repo.check().ok
    _restored(repo, good, str(tmp_path / "good"))
    assert repo.repair_sets().removed == ()


def test_repair_sets_keeps_a_set_of_a_newer_format(tmp_path):
    import blake3

    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    doc = b'{"magic":"cairn-set","version":7}\n'
    name = blake3.blake3(doc).hexdigest()
    repo.backend.put("sets", name, doc)
    r = repo.repair_sets()
    assert r.newer == (name,) and r.removed == ()
    assert name in set(repo.backend.list("sets"))
    repo.close()


def test_a_pack_whose_footer_is_damaged_keeps_every_good_blob(repo, repo_path, src, tmp_path, rng):
    """The footer cannot be parsed, the blobs are intact: read by the offsets the index gives,
    every blob verifies and is copied out, so nothing is lost, also once prune deletes the pack
    (before, the whole pack counted as damaged and prune then deleted the only copy)."""
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    pack = _data_pack(repo, packs1)
    blobs = [b for b, loc in repo.index.items() if loc.pack == pack]
    size = os.path.getsize(_pack_file(repo_path, pack))
    with open(_pack_file(repo_path, pack), "r+b") as f:  # the footer's magic
        f.seek(size - 2)
        f.write(b"XX")
    r = repo.repair_index(read_data=True)
    assert r.damaged_packs == (pack,) and r.entries_damaged == 0 and r.blobs_copied == len(blobs)
    assert all(b in repo.index for b in blobs)
    if pack in repo.index.packs():  # plaintext: the copy is byte for byte the pack as written, healed
        with open(_pack_file(repo_path, pack), "rb") as f:
            assert blake3.blake3(f.read()).hexdigest() == pack
    repo.prune(PrunePolicy())  # a damaged pack is a leftover: deleted
    assert pack in repo.index.packs() or not os.path.exists(_pack_file(repo_path, pack))
    _all_restore(repo, tmp_path, before, src)  # no backup needed: nothing was lost
    after = repo.check(read_data=True)
    assert after.ok and not after.warnings, (after.errors, after.warnings)


def test_a_pack_that_is_neither_indexed_nor_parsable_contributes_nothing(repo, repo_path, src, tmp_path, rng):
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    pack = _data_pack(repo, packs1)
    for name in list(repo.backend.list("index")):  # the index is lost too: only the trailer could tell
        repo.backend.delete("index", name)
    size = os.path.getsize(_pack_file(repo_path, pack))
    with open(_pack_file(repo_path, pack), "r+b") as f:
        f.seek(size - 2)
        f.write(b"XX")
    r = repo.repair_index()
    assert pack in r.damaged_packs and pack not in repo.index.packs()
    backup(repo, src, level="full")
    _all_restore(repo, tmp_path, before, src)


def test_a_truncated_pack_keeps_what_is_left_without_read_data(repo, repo_path, src, tmp_path, rng):
    """verify finds a pack cut short from the listing's sizes and advises `repair index`: that
    repair (no --read-data) reads the short pack, keeps the blobs still whole in it (copied out)
    and drops the rest; a backup stores those again."""
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    pack = _data_pack(repo, packs1)
    entries = sorted((loc.offset, b) for b, loc in repo.index.items() if loc.pack == pack)
    assert len(entries) >= 2
    cut = entries[len(entries) // 2][0] + 1  # through the middle blob: those before it stay whole
    os.truncate(_pack_file(repo_path, pack), cut)
    whole = [b for off, b in entries if off + repo.index.get(b).stored_len <= cut]
    lost = [b for off, b in entries if off + repo.index.get(b).stored_len > cut]
    report = repo.check()
    assert not report.ok and "'cairn repair index' drops the lost blobs" in report.advice
    r = repo.repair_index()
    assert r.damaged_packs == (pack,) and r.entries_damaged == len(lost) and r.blobs_copied == len(whole)
    assert all(b in repo.index for b in whole) and not any(b in repo.index for b in lost)
    between = repo.check(read_data=True)
    assert {p.object_id for p in between.errors} == {b.hex() for b in lost}, between.errors
    backup(repo, src, level="full")
    _all_restore(repo, tmp_path, before, src)
    repo.prune(PrunePolicy())
    after = repo.check(read_data=True)
    assert after.ok and not after.warnings, (after.errors, after.warnings)


def test_trees_lost_with_a_pack_come_back_with_the_next_backup(repo, repo_path, src, tmp_path, rng):
    make_tree(str(src), rng, files=6, max_size=50_000)
    s1 = backup(repo, src)
    before = _restored(repo, s1, str(tmp_path / "before"))
    tree_packs = {loc.pack for _b, loc in repo.index.items() if loc.type == TYPE_TREE}
    for p in tree_packs:
        os.unlink(_pack_file(repo_path, p))
    assert not repo.check().ok
    repo.repair_index()
    backup(repo, src, level="full")
    assert_same_tree(before, _restored(repo, s1, str(tmp_path / "after")))
    assert repo.check(read_data=True).ok


def test_an_index_file_a_backup_writes_during_the_repair_is_kept(repo, repo_path, kind, src, tmp_path, rng):
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    os.unlink(_pack_file(repo_path, _data_pack(repo, packs1)))
    other = _open(repo_path, kind)
    late = tmp_path / "late"
    late.mkdir()
    write_random(str(late / "x.bin"), 150_000, rng)
    taken = []

    def during(op: str, k: str, name: str) -> None:
        if op == "put" and k == "index" and not taken:  # the repair writes its new index file now
            taken.append(backup(other, late, source="late"))

    hooked = _open(repo_path, kind, FaultyBackend(LocalBackend(repo_path), hook=during))
    r = hooked.repair_index()
    assert taken
    written = set(other.backend.list("index")) - {r.index_file}
    assert written  # the backup's own index file is still there
    repo.load_index()
    target = _restored(repo, taken[0], str(tmp_path / "late-restored"))
    assert_same_tree(str(late), target)
    other.close()
    hooked.close()


def test_a_storage_error_is_never_taken_for_damage(repo, repo_path, kind, src, rng):
    make_tree(str(src), rng, files=6, max_size=50_000)
    s = backup(repo, src)
    for name in list(repo.backend.list("index")):  # every pack is unindexed: the repair must read them
        os.unlink(os.path.join(repo_path, "index", name))
    objects = _objects(repo_path)

    def failing(fault_kind: str) -> Repository:
        return _open(repo_path, kind, FaultyBackend(LocalBackend(repo_path), fail_at=1, mode="fail-from",
                                                    kind=fault_kind, ops=("get",)))

    for read_data in (False, True):
        with pytest.raises(BackendError):
            failing("packs").repair_index(read_data=read_data)
    report = failing("sets").repair_sets()  # a set object the store refuses: reported, kept
    assert [name for name, _ in report.refused] == [s.id] and not report.removed
    assert _objects(repo_path) == objects  # nothing dropped, written or deleted
    assert repo.repair_index().blobs_added > 0
    assert {x.id for x in repo.list_sets()} == {s.id}


def test_a_healthy_repository_is_left_as_it_is(repo, repo_path, src, tmp_path, rng):
    """Nothing missing, damaged or unindexed: repair (and its dry run) rewrites no index file."""
    _two_sets(repo, src, tmp_path, rng)
    before = _objects(repo_path)
    for read_data in (False, True):
        for dry_run in (True, False):
            r = repo.repair_index(read_data=read_data, dry_run=dry_run)
            assert r.index_files_replaced == 0 and not r.index_file and not r.changed, r
    assert _objects(repo_path) == before


def test_another_repositorys_config_and_key_make_repairs_refuse_not_delete(tmp_path) -> None:
    """A repository's data opened under another repository's config and key (restored from
    the wrong disk, same passphrase): every set and every pack fails its check. The repairs
    refuse and delete nothing; a plaintext config put over an encrypted repository is refused
    at open."""
    import random
    import shutil

    src, a, b = str(tmp_path / "src"), str(tmp_path / "a"), str(tmp_path / "b")
    make_tree(src, random.Random(5), files=30)
    for path in (a, b):
        Repository.init(LocalBackend(path), RepoConfig.new(**CONFIG), secret=SECRET, argon2=FAST).close()
    r = _open(a, "encrypted")
    backup(r, src)
    backup(r, src, source="other")
    r.close()
    for kind in ("config", "keys"):  # b's config and key over a's data
        shutil.rmtree(os.path.join(a, kind))
        shutil.copytree(os.path.join(b, kind), os.path.join(a, kind))
    before = sorted(os.path.join(d, f) for d, _, fs in os.walk(a) for f in fs)
    wrong = _open(a, "encrypted")
    try:
        with pytest.raises(CorruptionError, match="all 2 of them fail their check"):
            wrong.repair_sets()
        with pytest.raises(CorruptionError, match="not one blob of the .* packs read passes its check"):
            wrong.repair_index()
        with pytest.raises(CorruptionError, match="not one blob"):
            wrong.repair_index(read_data=True)
        assert len(wrong.repair_sets(dry_run=True).removed) == 2  # a dry run still lists them
    finally:
        wrong.close()
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(a) for f in fs if "locks" not in d) == \
        [p for p in before if "locks" not in p]

    plain = str(tmp_path / "plain")
    Repository.init(LocalBackend(plain), RepoConfig.new(**CONFIG)).close()
    shutil.copy(os.path.join(plain, "config", "config"), os.path.join(b, "config", "config"))
    with pytest.raises(CorruptionError, match="says it is not encrypted, but it holds key objects"):
        Repository.open(LocalBackend(b))


def test_a_pack_replaced_by_another_packs_bytes_counts_its_blobs_as_dropped(repo, repo_path, src, tmp_path, rng):
    """A pack whose object holds another pack's bytes (a copy over the wrong name): every blob
    in it verifies, but none is one the index says the pack holds. Those are dropped, and the
    report counts them (before it said 0 damaged blobs while the index lost them, so neither
    the hint to take a full backup nor the daemon's own full after a repair followed)."""
    s1, s2, packs1, before = _two_sets(repo, src, tmp_path, rng)
    pack = _data_pack(repo, packs1)
    other = next(p for p in sorted(repo.backend.list("packs")) if p != pack)
    lost = [b for b, loc in repo.index.items() if loc.pack == pack]
    with open(_pack_file(repo_path, other), "rb") as f:
        data = f.read()
    with open(_pack_file(repo_path, pack), "wb") as f:
        f.write(data)
    dry = repo.repair_index(read_data=True, dry_run=True)
    assert dry.damaged_packs == (pack,) and dry.entries_damaged == len(lost) and dry.changed
    r = repo.repair_index(read_data=True)
    assert r.damaged_packs == (pack,) and r.entries_damaged == len(lost) and r.changed
    assert not any(b in repo.index for b in lost)
    backup(repo, src)  # the full backup the repair asks for stores them again
    _all_restore(repo, tmp_path, before, src)


def test_a_dry_run_counts_the_index_files_the_repair_replaces(repo, repo_path, src, tmp_path, rng):
    # the first set's pack is damaged; the second set's index file then holds exactly what the
    # new index holds, so the repair keeps it as the new file: the dry run must not count it
    write_random(str(src / "one.bin"), 40_000, rng)
    backup(repo, src)
    packs1 = set(repo.backend.list("packs"))
    write_random(str(src / "two.bin"), 40_000, rng)
    backup(repo, src, level="incremental")
    loc = next(loc for _b, loc in sorted(repo.index.items()) if loc.pack in packs1 and loc.type == TYPE_DATA)
    with open(_pack_file(repo_path, loc.pack), "r+b") as f:
        f.seek(loc.offset + loc.stored_len // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    dry = repo.repair_index(read_data=True, dry_run=True)
    real = repo.repair_index(read_data=True)
    assert real.damaged_packs == (loc.pack,)
    assert dry.index_files_replaced == real.index_files_replaced, (dry, real)
    assert (dry.entries_damaged, dry.blobs_copied, dry.blobs_indexed) == (real.entries_damaged, real.blobs_copied,
                                                                          real.blobs_indexed)


def test_a_damaged_pack_copied_to_the_same_bytes_keeps_its_index_file(repo, repo_path, kind, rng):
    """A pack that was the only one of its write session (its index file names it alone), with a
    damaged footer and every blob intact: the copy of its good blobs is the same pack again
    (plaintext: byte for byte), with an index file of the same name as the one read. The repair
    must not delete that file as an old one: the blobs would be in no index file (a campaign
    drew it: a set's tree went missing from the index)."""
    writer = repo.writer()
    blobs = [writer.put_data(TYPE_DATA, rng.randbytes(3000)) for _ in range(3)]
    writer.finish()
    pack = repo.index.get(blobs[0]).pack
    assert {repo.index.get(b).pack for b in blobs} == {pack}
    size = os.path.getsize(_pack_file(repo_path, pack))
    with open(_pack_file(repo_path, pack), "r+b") as f:  # the footer's magic
        f.seek(size - 2)
        f.write(b"XX")
    r = repo.repair_index(read_data=True)
    assert r.damaged_packs == (pack,) and r.entries_damaged == 0 and r.blobs_copied == len(blobs)
    assert all(b in repo.index for b in blobs)
    again = _open(repo_path, kind)  # what the files say, not what this handle remembers
    try:
        assert all(b in again.index for b in blobs), "a copied blob is in no index file"
        assert [again.read_blob(b) for b in blobs] == [repo.read_blob(b) for b in blobs]
        after = again.check(read_data=True)
        assert after.ok, after.errors
    finally:
        again.close()


def _pruned_with_an_older_index_file_put_back(root, kind: str, rng) -> tuple[str, object, object, bytes]:
    """A full of two files, a full without the bigger one, and a prune that forgets the first
    set: it copies the kept file's blobs out of the mostly dead pack into a new one, deletes
    that pack and replaces the index file naming it. That index file is then put back, as an
    old copy of the disk has it. Made again until the old file loads last (index files load in
    name order, and the location loaded last was kept) and the prune both rewrote and deleted
    a pack: (repository path, kept set, source, the bigger file's content)."""
    for attempt in range(32):
        path, src = str(root / f"repo-{attempt}"), root / f"src-{attempt}"
        secret = SECRET if kind == "encrypted" else None
        Repository.init(LocalBackend(path), RepoConfig.new(**CONFIG), secret=secret,
                        argon2=FAST if secret else None).close()
        src.mkdir()
        write_random(str(src / "gone.bin"), 400_000, rng)
        write_random(str(src / "kept.bin"), 30_000, rng)
        repo = _open(path, kind)
        first = backup(repo, str(src))
        old = {f: open(os.path.join(path, "index", f), "rb").read() for f in os.listdir(f"{path}/index")}
        gone = (src / "gone.bin").read_bytes()
        os.unlink(src / "gone.bin")
        second = backup(repo, str(src))
        report = repo.prune(PrunePolicy(forget=(first.id,)), grace=0)
        repo.close()
        if report.packs_deleted and report.packs_rewritten and max(old) > max(os.listdir(f"{path}/index")):
            for name, data in old.items():
                with open(os.path.join(path, "index", name), "wb") as f:
                    f.write(data)
            return path, second, src, gone
    raise AssertionError("no prune rewrote a pack with the old index file sorting last")


@pytest.mark.parametrize("then", ["repair", "prune"])
@pytest.mark.parametrize("told_by", ["stat", "listing"])
def test_an_index_file_of_an_older_state_put_back_loses_nothing(tmp_path, kind, then, told_by, rng, monkeypatch):
    """An index file a prune replaced comes back (an old copy of the disk): it names blobs in
    a pack that is gone, among them the kept set's, which the prune copied into a pack that is
    there. The index keeps the copy that is there (it kept the location loaded last, the pack
    that is gone: verify named the kept set as damaged and its restore failed). verify warns of
    the lost pack, says that no set needs it and names the repair (nothing is lost: it does not
    fail); the kept set restores; a backup of the forgotten file again, which the stale entries
    still name (before, it deduplicated against them and its commit was refused), stores it anew and
    commits a set that restores; and `repair index`, or the next prune, leaves a repository that
    verifies with every set whole and no warning."""
    from cairn.store import repository

    path, second, src, gone = _pruned_with_an_older_index_file_put_back(tmp_path, kind, rng)
    if told_by == "listing":  # as when many packs are to be checked
        monkeypatch.setattr(repository, "CONTESTED_STATS", 0)
    repo = _open(path, kind)
    check = repo.check(read_data=True)
    assert check.ok, check.errors
    stale = [w.message for w in check.warnings if "is indexed but missing" in w.message]
    assert stale and all("no set or WAL file needs" in m and "'cairn repair index'" in m for m in stale), stale
    repo.restore(second, str(tmp_path / "out"))
    assert_same_tree(str(src), str(tmp_path / "out"))
    write_random(str(src / "more.bin"), 20_000, rng)
    (src / "gone.bin").write_bytes(gone)  # back: its blobs are named in a pack that is gone
    third = backup(repo, str(src), level="incremental")
    if then == "repair":
        repo.repair_index()
    else:
        repo.prune(PrunePolicy(), grace=0)
    final = repo.check(read_data=True)
    assert final.ok and not final.warnings, (final.errors, final.warnings)
    repo.restore(second, str(tmp_path / "again"))
    repo.restore(third, str(tmp_path / "third"))
    assert_same_tree(str(src), str(tmp_path / "third"))
    repo.close()


def test_prune_keeps_the_copy_a_backup_stored_again_over_a_pack_that_is_gone(tmp_path, kind, rng):
    """An index file of an older state put back names a pack prune deleted; a backup of the
    file that pack held stores it again (it does not deduplicate against a pack found missing).
    The garbage collection after it writes one index file keeping the first copy of a blob it
    reads: it kept the one in the pack that is gone when the old file was read first (the new
    packs were then unindexed, and the next run would have deleted them). Made until an old
    file naming a pack that is gone, all of whose blobs the backup stored again, sorts before
    the backup's; then prune, and the set restores and verifies clean."""
    for attempt in range(16):
        path, _second, src, gone = _pruned_with_an_older_index_file_put_back(tmp_path / f"try-{attempt}", kind, rng)
        stale = set(os.listdir(os.path.join(path, "index")))
        repo = _open(path, kind)
        (src / "gone.bin").write_bytes(gone)
        third = backup(repo, str(src), level="incremental")
        new = set(os.listdir(os.path.join(path, "index"))) - stale
        # a pack that is gone whose every blob the backup stored again (plaintext packs of the
        # same blobs are the same bytes: then it is simply back), named by a file read first
        superseded = repo.index.pack_names() - set(repo.backend.list("packs")) - repo.index.packs()
        naming = [n for n, got in repo.stored_index_files(sorted(stale)) if superseded & set(got)]
        if naming and min(naming) < min(new):
            break
        repo.close()
    else:
        raise AssertionError("the backup's index file always sorted first")
    try:
        repo.prune(PrunePolicy(), grace=0)
        repo.prune(PrunePolicy(), grace=0)  # (what the first left unindexed, the second deletes)
        _restored(repo, third, str(tmp_path / "out"))
        assert_same_tree(str(src), str(tmp_path / "out"))
        report = repo.check(read_data=True)
        assert report.ok and not report.warnings, (report.errors, report.warnings)
    finally:
        repo.close()
