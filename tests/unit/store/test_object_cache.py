"""The local cache of index files, sets and trees (store/storage/cache.py): a second `sets`, `ls` or
incremental backup fetches none of them from the backend again (GETs counted), a damaged
cache entry is detected, dropped and fetched again, objects the repository no longer lists
are never served, and the size bound holds."""

from __future__ import annotations

import os

import pytest
from cairn.store.content.crypto import Secret
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from cairn.store.storage.cache import ObjectCache


class Counting(MemoryBackend):
    """A memory backend counting reads per kind (whole gets and ranged gets of packs)."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: dict[str, int] = {}

    def reset(self) -> None:
        self.gets.clear()

    def get(self, kind: str, name: str) -> bytes:
        self.gets[kind] = self.gets.get(kind, 0) + 1
        return super().get(kind, name)

    def stat(self, kind: str, name: str) -> int:
        return len(super().get(kind, name))  # a HEAD, not a read

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        self.gets[kind] = self.gets.get(kind, 0) + 1
        return super().get(kind, name)[offset:offset + length]


def make_tree(root, files: int = 12) -> None:
    for d in range(3):
        sub = root / f"d{d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(files // 3):
            (sub / f"f{i}").write_bytes(os.urandom(2000 + i))


@pytest.fixture(params=["plain", "encrypted"])
def setup(request, tmp_path):
    backend = Counting()
    secret = Secret("passphrase", b"pw") if request.param == "encrypted" else None
    Repository.init(backend, secret=secret, argon2={"memory_kib": 1024, "iterations": 1, "lanes": 1})
    src = tmp_path / "src"
    make_tree(src)
    cache_dir = str(tmp_path / "cache")

    def open_repo(**kw) -> Repository:
        return Repository.open(backend, secret=secret, cache_dir=cache_dir, **kw)

    return backend, src, cache_dir, open_repo


def browse(repo: Repository) -> None:
    for s in repo.list_sets():
        repo.list_tree(s, "", recursive=True)


def test_a_second_sets_ls_and_incremental_fetch_nothing_again(setup):
    backend, src, cache_dir, open_repo = setup
    repo = open_repo()
    first = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    browse(repo)
    repo.close()

    backend.reset()
    repo = open_repo()  # a restarted daemon: a fresh handle on the same cache directory
    browse(repo)
    assert backend.gets.get("index", 0) == 0 and backend.gets.get("sets", 0) == 0
    assert backend.gets.get("packs", 0) == 0  # trees came from the cache
    assert repo.cache is not None and repo.cache.hits > 0

    (src / "d1" / "f0").write_bytes(b"changed")
    backend.reset()
    inc = repo.backup(BackupRequest(source="s", paths=(str(src),), level="incremental"))
    assert inc.base == first.id and inc.stats.modified == 1
    # change detection read the base's trees from the cache; packs were only written
    assert backend.gets.get("packs", 0) == 0, backend.gets


def test_without_a_cache_the_same_steps_do_fetch(setup):
    """The counting itself is sound: the same browse with no cache reads objects."""
    backend, src, _cache_dir, _open = setup
    r = _open(cache_size=0)  # a bound of 0 turns the cache off
    r.backup(BackupRequest(source="s", paths=(str(src),)))
    r.close()
    backend.reset()
    r = _open(cache_size=0)
    browse(r)
    assert backend.gets.get("index", 0) >= 1 and backend.gets.get("sets", 0) >= 1
    assert backend.gets.get("packs", 0) >= 1


@pytest.mark.parametrize("kind", ["index", "sets", "trees"])
def test_a_damaged_cache_entry_is_dropped_and_fetched_again(setup, kind):
    backend, src, cache_dir, open_repo = setup
    repo = open_repo()
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    browse(repo)
    repo.close()
    repo_dir = os.path.join(cache_dir, os.listdir(cache_dir)[0], kind)
    victims = sorted(os.listdir(repo_dir))
    assert victims
    for name in victims:  # flip one byte of every cached object of this kind
        path = os.path.join(repo_dir, name)
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0x40
        open(path, "wb").write(bytes(data))

    backend.reset()
    repo = open_repo()
    sets = repo.list_sets()
    assert [x.id for x in sets] == [s.id]  # the right content, not the damaged copy
    entries = repo.list_tree(sets[0], "", recursive=True)
    assert {e.path for e in entries} >= {"d0", "d1/f0", "d2/f3"}
    wanted = {"index": "index", "sets": "sets", "trees": "packs"}[kind]
    assert backend.gets.get(wanted, 0) >= len(victims)  # fetched again
    assert repo.cache.dropped >= len(victims)
    # and the good copies replaced them: the next handle reads nothing of that kind
    repo.close()
    backend.reset()
    browse(open_repo())
    assert backend.gets.get(wanted, 0) == 0


def test_objects_the_repository_no_longer_lists_are_never_served(setup):
    backend, src, cache_dir, open_repo = setup
    repo = open_repo()
    a = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    (src / "d0" / "f1").write_bytes(b"new")
    b = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    browse(repo)
    cached_index = set(repo.cache.names("index"))
    repo.prune(PrunePolicy(keep_last=1), grace=0)  # forgets a, rewrites the index files
    repo.close()
    assert a.id not in set(backend.list("sets"))
    repo = open_repo()
    assert [s.id for s in repo.list_sets()] == [b.id]
    assert a.id not in repo.cache.names("sets")
    listed = set(backend.list("index"))
    assert set(repo.cache.names("index")) <= listed
    assert not (cached_index - listed) & set(repo.cache.names("index"))


def test_the_size_bound_holds(tmp_path):
    cache = ObjectCache(str(tmp_path / "c"), max_bytes=10_000)
    names = [os.urandom(32).hex() for _ in range(40)]
    for n in names:
        cache.put("trees", n, os.urandom(1000))
        on_disk = sum(os.path.getsize(os.path.join(tmp_path / "c" / "trees", f))
                      for f in os.listdir(tmp_path / "c" / "trees"))
        assert cache.total <= 10_000 and on_disk <= 10_000
    assert cache.get("trees", names[0]) is None  # the oldest went first
    assert cache.get("trees", names[-1]) is not None
    cache.put("trees", os.urandom(32).hex(), os.urandom(20_000))  # larger than the bound: not kept
    assert cache.total <= 10_000
    # a restart keeps what is there, recency by last use, and still the bound
    kept = cache.get("trees", names[-5])
    again = ObjectCache(str(tmp_path / "c"), max_bytes=3000)
    assert again.total <= 3000 and again.get("trees", names[-5]) == kept


@pytest.mark.parametrize("kind", ["index", "sets", "trees"])
@pytest.mark.parametrize("handle", ["warm", "restarted"])
def test_check_and_prune_see_damage_in_the_store_that_the_cache_hides(setup, kind, handle):
    """The local copies verify, the stored object does not: check reports it, for the handle that
    read it before (memory) and for a restarted one (cache); prune refuses a damaged set object or
    index file and deletes nothing a damaged tree concerns."""
    from cairn.store.errors import CairnError

    backend, src, _cache_dir, open_repo = setup
    repo = open_repo()
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    browse(repo)
    if kind == "trees":
        loc = repo.index.get(bytes.fromhex(s.tree))
        key, at = ("packs", loc.pack), loc.offset + loc.stored_len // 2
    else:
        key = next(k for k in backend.objects if k[0] == kind)
        at = len(backend.objects[key]) // 2
    data = bytearray(backend.objects[key])
    data[at] ^= 0x40
    backend.objects[key] = bytes(data)
    if handle == "restarted":
        repo.close()
        repo = open_repo()
        browse(repo)  # served from the cache: nothing looks wrong to a reader
    report = repo.check()
    assert not report.ok, "check passed over damage in the store"
    if kind != "trees":  # what an unreadable set needs cannot be known; an unreadable index file
        with pytest.raises(CairnError):  # leaves needed blobs unindexed: prune refuses either way
            repo.prune(PrunePolicy(), grace=0)
    else:  # a verified tree's blobs: kept
        repo.prune(PrunePolicy(), grace=0)
    assert backend.objects[key] == bytes(data)  # nothing deleted or mended


@pytest.mark.parametrize("lost", ["one", "all"])
@pytest.mark.parametrize("handle", ["warm", "restarted"])
def test_prune_refuses_while_a_set_needs_blobs_that_no_index_file_names(setup, lost, handle):
    """An index file lost from the store: the packs it named are unindexed, yet hold what kept sets
    need. With trees served from the cache every set can still be walked, so prune must see for
    itself that needed blobs are in no index file and delete nothing, with or without a policy.
    After `repair index` it runs again and the sets restore."""
    from cairn.store.errors import CorruptionError
    from storekit import assert_same_tree

    backend, src, _cache_dir, open_repo = setup
    repo = open_repo()
    first = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    (src / "d0" / "f0").write_bytes(os.urandom(3000))  # every tree above it changes
    second = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    browse(repo)
    names = sorted(k for k in backend.objects if k[0] == "index")
    for key in (names[:1] if lost == "one" else names):
        del backend.objects[key]
    if handle == "restarted":
        repo.close()
        repo = open_repo()
    packs = {k for k in backend.objects if k[0] == "packs"}
    for policy in (PrunePolicy(), PrunePolicy(keep_last=1)):
        for dry_run in (True, False):
            with pytest.raises(CorruptionError, match="in no index file; nothing may be deleted") as e:
                repo.prune(policy, dry_run=dry_run, grace=0)
            assert "cairn repair index" in (e.value.hint or "")
            assert {k for k in backend.objects if k[0] == "packs"} == packs
    assert {s.id for s in repo.list_sets()} == {first.id, second.id}
    repo.repair_index()
    repo.prune(PrunePolicy(keep_last=1), grace=0)
    assert [s.id for s in repo.list_sets()] == [second.id]
    assert repo.check(read_data=True).ok
    out = src.parent / f"out-{lost}-{handle}"
    repo.restore(second, str(out))
    assert_same_tree(str(src), str(out))


def test_prune_names_in_its_hint_the_sets_whose_lost_blobs_no_repair_brings_back(setup):
    """A pack of file data lost for good (gone from the store, the file changed in the source
    since): `repair index` drops its blobs, the sets' trees still walk from the cache, and prune
    refuses. Its hint names the command that forgets those sets, whole within the 256 characters
    a client is shown of a hint (it said 'cairn prune --forget SET' and was cut before naming
    them); run as it says, prune runs, and the set left restores."""
    from cairn.store.errors import CorruptionError
    from storekit import assert_same_tree

    backend, src, _cache_dir, open_repo = setup
    repo = open_repo()
    sets = [repo.backup(BackupRequest(source="s", paths=(str(src),)))]
    (src / "d1" / "f0").write_bytes(os.urandom(5000))
    sets.append(repo.backup(BackupRequest(source="s", paths=(str(src),))))
    browse(repo)
    d0 = next(e.subtree for e in repo.load_tree(bytes.fromhex(sets[0].tree)) if e.name == b"d0")
    chunk = next(e.chunks[0] for e in repo.load_tree(d0) if e.name == b"f0")
    del backend.objects[("packs", repo.index.get(chunk).pack)]  # the data of both sets' d0/f0
    (src / "d0" / "f0").write_bytes(os.urandom(3000))  # its old content is nowhere now
    repo.repair_index()
    with pytest.raises(CorruptionError, match="in no index file; nothing may be deleted") as e:
        repo.prune(PrunePolicy(), grace=0)
    hint = e.value.hint or ""
    command = f"'cairn prune --forget {sets[0].id[:12]} --forget {sets[1].id[:12]}' forgets them"
    assert command in hint and len(hint) <= 256, hint
    third = repo.backup(BackupRequest(source="s", paths=(str(src),), level="full"))
    repo.prune(PrunePolicy(forget=(sets[0].id[:12], sets[1].id[:12])), grace=0)
    assert [s.id for s in repo.list_sets()] == [third.id]
    assert repo.check(read_data=True).ok
    out = src.parent / "out"
    repo.restore(third, str(out))
    assert_same_tree(str(src), str(out))
