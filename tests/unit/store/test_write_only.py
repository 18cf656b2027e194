"""Write-only keys: a host that backs up (files, WAL), deduplicates against what exists, keeps
its own trees and set records in its cache, and can neither read what others wrote nor delete
anything; a full key reads everything, including what write-only hosts wrote."""

from __future__ import annotations

import os
import random
import shutil
import stat

import pytest
from cairn.store.content import crypto
from cairn.store.content.packs import PK_HEADER
from cairn.store.errors import AlreadyExistsError, BackendError, CorruptionError, WrongKeyError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.snapshots import writeonly as wonly
from cairn.store.storage.backend import KINDS, LocalBackend, MemoryBackend
from storekit import assert_same_tree, make_tree

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
FULL = crypto.Secret("passphrase", b"the full passphrase")
WONLY = crypto.Secret("passphrase", b"a write-only passphrase")
MARK = "qvzwonlymark"
WAL_NAME = "000000010000000000000003"


def _backup(repo: Repository, src, level: str = "full", source: str = "app", host: str = "wohost"):
    return repo.backup(BackupRequest(source=source, paths=(str(src),), level=level, hostname=host))


def _setup(tmp_path, backend=None):
    """A repository with one full host's set and a write-only key; (backend, shared dir)."""
    backend = backend if backend is not None else MemoryBackend()
    shared = tmp_path / "shared"
    make_tree(str(shared), random.Random(3), files=12, max_size=200_000)
    full = Repository.init(backend, secret=FULL, argon2=FAST)
    _backup(full, shared, source="other", host="fullhost")
    full.add_key(WONLY, FAST, write_only=True)
    full.close()
    return backend, shared


def _wonly(backend, cache_dir) -> Repository:
    repo = Repository.open(backend, secret=WONLY)
    repo.attach_host_cache(str(cache_dir))
    assert repo.write_only
    return repo


def _snapshot(backend: MemoryBackend) -> dict[tuple[str, str], bytes]:
    return {(k, n): backend.get(k, n) for k in KINDS if k != "locks" for n in backend.list(k)}


def test_write_only_host_backs_up_full_and_incremental_and_a_full_key_restores(tmp_path):
    backend, shared = _setup(tmp_path)
    src = tmp_path / "src"
    make_tree(str(src), random.Random(4), files=30, max_size=100_000)
    os.system(f"cp -a {shared} {src}/copy")  # identical to what the full host stored: deduplicated
    cache = tmp_path / "state" / "wonly"
    repo = _wonly(backend, cache)
    first = _backup(repo, src)
    copied = sum(f.stat().st_size for f in (src / "copy").rglob("*") if f.is_file())
    assert first.stats.bytes_added < first.stats.bytes_total - copied * 0.9  # the copy cost nothing
    (src / "changed.bin").write_bytes(random.Random(5).randbytes(150_000))
    repo.close()

    repo = _wonly(backend, cache)  # a restart: the base comes from the cache
    second = _backup(repo, src, "incremental")
    assert second.level == "incremental" and second.base == first.id
    assert second.stats.added == 1 and second.stats.modified == 0
    assert 150_000 <= second.stats.bytes_added < 200_000  # what changed, not the whole tree
    assert [s.id for s in repo.list_sets()] == [first.id, second.id]  # its own sets only
    repo.close()

    full = Repository.open(backend, secret=FULL, read_only=True)
    assert {s.hostname for s in full.list_sets()} == {"fullhost", "wohost"}
    full.restore(full.get_set(second.id), str(tmp_path / "out"))
    assert_same_tree(str(src), str(tmp_path / "out"))
    report = full.check(read_data=True)
    assert report.ok, report.errors
    full.close()


def test_the_host_cache_is_private_and_holds_only_the_newest_trees(tmp_path, monkeypatch):
    backend, _shared = _setup(tmp_path)
    src = tmp_path / "src"
    make_tree(str(src), random.Random(6), files=10)
    (src / "sub").mkdir(exist_ok=True)
    (src / "sub" / "f").write_bytes(b"one")
    cache = tmp_path / "state" / "wonly"
    repo = _wonly(backend, cache)
    first = _backup(repo, src)
    for dirpath, _dirs, files in os.walk(cache):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode) == 0o600
    old_trees = set(os.listdir(cache / "trees"))
    assert first.tree in old_trees and os.listdir(cache / "sets") == [first.id]
    monkeypatch.setattr(wonly, "TREE_GRACE", -1.0)  # no grace: only what the newest set reaches stays
    (src / "sub" / "f").write_bytes(b"two")
    second = _backup(repo, src, "incremental")
    trees = set(os.listdir(cache / "trees"))
    assert second.tree in trees and first.tree not in trees
    reached, todo = set(), [bytes.fromhex(second.tree)]
    while todo:
        t = todo.pop()
        reached.add(t.hex())
        todo += [e.subtree for e in repo.load_tree(t) if e.subtree]
    assert trees == reached  # every tree of the newest set, and nothing else
    repo.close()


def test_with_only_write_only_material_no_blob_tree_set_or_wal_entry_opens(tmp_path):
    backend, _shared = _setup(tmp_path)
    src = tmp_path / "src"
    make_tree(str(src), random.Random(7), files=8)
    writer = _wonly(backend, tmp_path / "c1")
    _backup(writer, src)
    writer.put_wal(WAL_NAME, b"wal content " * 100)
    for bid, _loc in list(writer.index.items()):  # not even what its own sessions wrote
        with pytest.raises(CorruptionError, match="authentication failed"):
            writer.reader.read(bid)
    writer.close()
    headers = {backend.get("packs", n)[:crypto.PK_HEADER_LEN] for n in backend.list("packs")}
    assert len({h for h in headers if h.startswith(PK_HEADER)}) == 2  # one data key per write session

    # a fresh handle holding only the write-only key material (and an empty cache)
    repo = _wonly(backend, tmp_path / "c2")
    key = repo.key
    assert isinstance(key, crypto.WriteOnlyKey) and key.master is None
    blobs = list(repo.index.items())
    assert {loc.type for _bid, loc in blobs} == {0, 1}  # data and trees
    for bid, _loc in blobs:
        with pytest.raises(CorruptionError, match="authentication failed"):
            repo.reader.read(bid)
    for name in backend.list("sets"):
        with pytest.raises(CorruptionError, match="authentication failed"):
            key.open_object("sets", name, backend.get("sets", name))
    for name in backend.list("wal"):
        with pytest.raises(CorruptionError, match="authentication failed"):
            key.open_object("wal", name, backend.get("wal", name))
    for name in backend.list("packs"):
        data = backend.get("packs", name)
        off = int.from_bytes(data[-52:-44], "little")
        with pytest.raises(CorruptionError, match="authentication failed"):
            key.open_trailer(name, data[off:-52], header=data[:200])
    assert repo.list_sets() == []  # others' sets and its own earlier ones (no cache) are not listed
    repo.close()


def test_write_only_refuses_restore_ls_verify_prune_keys_and_deletes_and_nothing_changes(tmp_path):
    backend, _shared = _setup(tmp_path)
    src = tmp_path / "src"
    make_tree(str(src), random.Random(8), files=8)
    repo = _wonly(backend, tmp_path / "c")
    foreign_index = next(iter(backend.list("index")))
    own = _backup(repo, src)
    other = next(n for n in backend.list("sets") if n != own.id)
    before = _snapshot(backend)
    refusals = [
        lambda: repo.get_set(other),
        lambda: repo.get_set(other[:8]),
        lambda: repo.restore(own, str(tmp_path / "out")),
        lambda: list(repo.restore_stream(own)),
        lambda: repo.check(read_data=True),
        lambda: repo.prune(PrunePolicy(keep_full=0)),
        lambda: repo.prune(PrunePolicy()),
        lambda: repo.add_key(crypto.Secret("passphrase", b"x"), FAST),
        lambda: repo.remove_key(repo.key_id),
        lambda: repo.backend.delete("packs", next(iter(backend.list("packs")))),
        lambda: repo.backend.delete("sets", own.id),
        lambda: repo.backend.delete("index", foreign_index),
    ]
    for attempt in refusals:
        with pytest.raises(crypto.WriteOnlyKeyError) as e:
            attempt()
        assert "write-only" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    assert _snapshot(backend) == before
    assert [e.path for e in repo.list_tree(own)]  # its own set's listing comes from its cache
    repo.close()


def test_wal_push_with_a_write_only_key(tmp_path):
    backend, _shared = _setup(tmp_path)
    repo = _wonly(backend, tmp_path / "c")
    data = os.urandom(1000) + b"wal"
    assert repo.put_wal(WAL_NAME, data, namespace="42") is True
    assert repo.put_wal(WAL_NAME, data, namespace="42") is False  # a retried push: no-op
    with pytest.raises(AlreadyExistsError):
        repo.put_wal(WAL_NAME, data + b"x", namespace="42")
    with pytest.raises(crypto.WriteOnlyKeyError):  # not even its own WAL reads back
        repo.get_wal(WAL_NAME, "42")
    repo.close()
    full = Repository.open(backend, secret=FULL)
    full.put_wal("000000010000000000000009", b"other host's wal", namespace="7")
    assert full.get_wal(WAL_NAME, "42") == data
    full.close()
    repo = _wonly(backend, tmp_path / "c")
    with pytest.raises(crypto.WriteOnlyKeyError):  # another host's entry: cannot compare, refused
        repo.put_wal("000000010000000000000009", b"x", namespace="7")
    repo.close()


def test_no_plaintext_in_a_repository_written_by_a_write_only_host(tmp_path):
    path = str(tmp_path / "repo")
    backend, _shared = _setup(tmp_path, LocalBackend(path))
    src = tmp_path / f"src-{MARK}"
    (src / f"dir-{MARK}").mkdir(parents=True)
    rng = random.Random(9)
    for i in range(4):
        (src / f"dir-{MARK}" / f"file-{MARK}-{i}").write_bytes(rng.randbytes(2000) + f"content-{MARK}".encode())
    repo = _wonly(backend, tmp_path / "c")
    host = f"host-{MARK}"
    repo.backup(BackupRequest(source=f"source-{MARK}", paths=(str(src),), hostname=host, tags=(f"tag-{MARK}",)))
    repo.put_wal(WAL_NAME, f"wal-{MARK}".encode() * 10)
    with repo.locks.hold("backup"):
        found = []
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                p = os.path.join(dirpath, f)
                data = open(p, "rb").read()
                found += [p for n in (MARK.encode(), host.encode(), os.fsencode(src)) if n in data or n in p.encode()]
    assert found == []
    assert any(backend.get("packs", n).startswith(PK_HEADER) for n in backend.list("packs"))
    repo.close()


def test_a_flipped_byte_in_a_public_key_sealed_object_is_detected(tmp_path):
    backend, _shared = _setup(tmp_path)
    src = tmp_path / "src"
    make_tree(str(src), random.Random(10), files=5, max_size=20_000)
    repo = _wonly(backend, tmp_path / "c")
    before = set(backend.list("packs")) | set(backend.list("sets"))
    s = _backup(repo, src)
    repo.put_wal(WAL_NAME, os.urandom(3000))
    repo.close()
    full = Repository.open(backend, secret=FULL, read_only=True)
    assert full.check(read_data=True).ok
    full.close()
    packs = [n for n in backend.list("packs") if n not in before]
    targets = [("sets", s.id), ("wal", WAL_NAME)] + [("packs", n) for n in packs]
    rng = random.Random(11)
    for kind, name in targets:
        data = backend.get(kind, name)
        positions = [0, 1, 20, len(data) // 2, len(data) - 60] if kind == "packs" else [0, 1, 33, len(data) - 1]
        for pos in positions + [rng.randrange(len(data))]:
            bad = bytearray(data)
            bad[pos] ^= 0x10
            backend.put(kind, name, bytes(bad))
            full = Repository.open(backend, secret=FULL, read_only=True)
            if kind == "packs":
                assert not full.check(read_data=True).ok, (name, pos)
            else:
                with pytest.raises(CorruptionError):
                    full.backend.get(kind, name)
            full.close()
        backend.put(kind, name, data)


def test_a_format_2_repository_from_before_write_only_keys_gains_one(tmp_path):
    """Index files and markers sealed under the data key (as older versions wrote them) are
    sealed again under the index key when the first write-only key is added."""
    backend = MemoryBackend()
    shared = tmp_path / "shared"
    make_tree(str(shared), random.Random(12), files=10, max_size=100_000)
    full = Repository.init(backend, secret=FULL, argon2=FAST)
    _backup(full, shared, source="other", host="fullhost")
    for name in list(backend.list("index")):  # as the earlier format 2 writers sealed them
        plain = full.key.open_object("index", name, backend.get("index", name))
        backend.put("index", name, full.key.seal(plain, f"object:index/{name}".encode()))
    assert Repository.open(backend, secret=FULL).check().ok  # the old form still reads
    full.add_key(WONLY, FAST, write_only=True)
    full.close()
    repo = _wonly(backend, tmp_path / "c")
    assert not repo.index_problems and len(repo.index) > 0
    s = _backup(repo, shared)  # the same data: deduplicated against the full host's
    assert s.stats.bytes_added < 20_000
    repo.close()


def test_a_secret_of_a_write_only_key_and_wrong_secrets(tmp_path):
    backend, _shared = _setup(tmp_path)
    with pytest.raises(WrongKeyError):
        Repository.open(backend, secret=crypto.Secret("passphrase", b"nope"))
    full = Repository.open(backend, secret=FULL)
    keys = {info.access for info, _id, _p in full.list_keys() if info}
    assert keys == {"full", "write-only"}
    # the access field is bound to the wrapping: turned into "full" it opens nothing
    wo_id = next(i for info, i, _p in full.list_keys() if info and info.access == "write-only")
    doc = backend.get("keys", wo_id).replace(b'"access": "write-only"', b'"access": "full"')
    backend.put("keys", wo_id, doc)
    with pytest.raises(WrongKeyError):
        Repository.open(backend, secret=WONLY)
    full.close()


def test_a_full_key_prunes_and_collects_what_write_only_hosts_wrote(tmp_path):
    backend, _shared = _setup(tmp_path)
    src = tmp_path / "src"
    make_tree(str(src), random.Random(13), files=10, max_size=100_000)
    cache = tmp_path / "c"
    repo = _wonly(backend, cache)
    first = _backup(repo, src)
    (src / "gone-later.bin").write_bytes(random.Random(14).randbytes(300_000))
    second = _backup(repo, src, "incremental")
    (src / "gone-later.bin").unlink()
    third = _backup(repo, src, "incremental")
    repo.close()

    full = Repository.open(backend, secret=FULL)
    report = full.prune(PrunePolicy(keep_last=1, host="wohost"), grace=0)
    assert set(report.forgotten) == {first.id, second.id} and report.bytes_freed >= 300_000
    full.restore(full.get_set(third.id), str(tmp_path / "out"))
    assert_same_tree(str(src), str(tmp_path / "out"))
    assert full.check(read_data=True).ok
    full.close()

    repo = _wonly(backend, cache)  # the write-only host goes on from its newest set
    (src / "after.bin").write_bytes(b"after the prune")
    fourth = _backup(repo, src, "incremental")
    assert fourth.base == third.id and fourth.stats.added == 1
    assert [s.id for s in repo.list_sets()] == [third.id, fourth.id]
    repo.close()


def test_a_full_key_opens_a_write_only_blob_also_when_the_caller_gives_no_pack_header(tmp_path):
    """Any reader of blobs (not only BlobReader) opens packs sealed to the public key."""
    backend, _shared = _setup(tmp_path)
    src = tmp_path / "src"
    make_tree(str(src), random.Random(15), files=3)
    repo = _wonly(backend, tmp_path / "c")
    s = _backup(repo, src)
    repo.close()
    full = Repository.open(backend, secret=FULL, read_only=True)
    root = bytes.fromhex(s.tree)
    loc = full.index.get(root)
    sealed = backend.get_range("packs", loc.pack, loc.offset, loc.stored_len)
    assert backend.get("packs", loc.pack).startswith(PK_HEADER)
    assert full.key.open_blob(loc.pack, root, sealed)  # no header given: the handle reads it
    full.close()


def test_a_full_keys_cached_tree_of_a_write_only_host_whose_pack_was_collected_is_read_again(tmp_path):
    """A full key's cache keeps a write-only host's tree with the name of its pack (opening it
    needs the pack's header). The host's sets are forgotten and collected, and the host stores
    the same tree again in a new pack: the cached copy is dropped and the tree read through
    the index (it once failed with 'unable to read packs object ...: not found')."""
    backend, _shared = _setup(tmp_path)
    src = tmp_path / "src"
    make_tree(str(src), random.Random(21), files=8, max_size=50_000)
    host_cache, cache_dir = tmp_path / "wo", str(tmp_path / "full-cache")
    repo = _wonly(backend, host_cache)
    first = _backup(repo, src)
    repo.close()
    full = Repository.open(backend, secret=FULL, cache_dir=cache_dir)
    full.list_tree(full.get_set(first.id), "", recursive=True)  # trees now in the full key's cache
    full.close()
    full = Repository.open(backend, secret=FULL, cache_dir=cache_dir)
    full.prune(PrunePolicy(forget=(first.id,)), grace=0)
    full.prune(PrunePolicy(), grace=0)
    full.close()
    shutil.rmtree(host_cache)  # the host's own sets are gone: it starts afresh, storing the tree again
    repo = _wonly(backend, host_cache)
    second = _backup(repo, src)
    repo.close()
    full = Repository.open(backend, secret=FULL, cache_dir=cache_dir)
    names = sorted(e.path for e in full.list_tree(full.get_set(second.id), "", recursive=True))
    assert len(names) >= 8, names
    full.restore(full.get_set(second.id), str(tmp_path / "out"))
    assert_same_tree(str(src), str(tmp_path / "out"))
    full.close()


def test_latest_of_another_host_says_the_key_is_write_only_not_that_there_is_no_set(tmp_path):
    backend, _shared = _setup(tmp_path)  # host 'fullhost' has a set
    src = tmp_path / "src"
    make_tree(str(src), random.Random(31), files=3, max_size=10_000)
    repo = _wonly(backend, tmp_path / "wo")
    own = _backup(repo, src)
    with pytest.raises(crypto.WriteOnlyKeyError, match="sets of host 'fullhost': .* write-only"):
        repo.get_set("latest", host="fullhost", own_host="wohost")
    assert repo.get_set("latest", host="wohost", own_host="wohost").id == own.id
    repo.close()


def test_a_record_dropped_while_another_call_lists_is_no_error(tmp_path):
    """Two listings at once on a write-only host whose own set record is damaged: the first
    drops the record; the other, which listed its name before that, must take the set as gone,
    not fail (a backup failed so: "unable to read set ..: another host wrote it")."""
    backend, shared = _setup(tmp_path)
    repo = _wonly(backend, tmp_path / "cache")
    s = _backup(repo, shared)
    names = repo.host_cache.names
    repo.host_cache.remove("sets", s.id)  # dropped by the other call, after this one's listing
    repo.host_cache.names = lambda kind: [*names(kind), s.id] if kind == "sets" else names(kind)
    repo._sets.clear()
    assert [x.id for x in repo.list_sets("app")] == []


def test_the_host_cache_on_a_full_file_system_fails_in_one_line_and_leaves_no_temp_file(tmp_path):
    """A record that does not fit (a full state directory) is a BackendError naming the record
    and the reason, RESOURCE_EXHAUSTED's cause kept; no temp file is left and the records
    already there stay readable. A cache directory that cannot be made is one line too."""
    from mounts import fill, mount_tmpfs, unmount

    state = tmp_path / "state"
    state.mkdir()
    mount_tmpfs(str(state))
    try:
        cache = wonly.HostCache(str(state / "write-only"))
        cache.put("sets", "a" * 64, b"the first set's record")
        filler = fill(str(state / "fill"))
        with pytest.raises(BackendError) as failed:
            cache.put("sets", "b" * 64, os.urandom(10_000))
        assert str(failed.value) == f"unable to write '{state / 'write-only' / 'sets' / ('b' * 64)}': " \
                                    "No space left on device", failed.value
        assert isinstance(failed.value.__cause__, OSError)
        assert sorted(os.listdir(state / "write-only" / "sets")) == ["a" * 64]
        assert cache.get("sets", "a" * 64) == b"the first set's record"
        os.unlink(filler)
        cache.put("sets", "b" * 64, b"room again")
        assert cache.get("sets", "b" * 64) == b"room again"
    finally:
        unmount(str(state))
    (tmp_path / "file").write_text("")
    with pytest.raises(BackendError) as failed:
        wonly.HostCache(str(tmp_path / "file" / "write-only"))
    assert str(failed.value) == (f"unable to prepare the write-only host's records in "
                                 f"'{tmp_path / 'file' / 'write-only'}': Not a directory"), failed.value


def test_the_host_cache_opened_where_no_directory_can_be_made_holds_nothing_until_it_can(tmp_path):
    """Opened on a file system with no inode left (a full state directory), the cache does not
    fail: it holds no record, a put fails in one line, and once there is room the first put
    makes its directories."""
    from mounts import fill_inodes, mount_tmpfs, unmount

    state = tmp_path / "state"
    state.mkdir()
    mount_tmpfs(str(state), inodes=16)
    try:
        made = fill_inodes(str(state))
        cache = wonly.HostCache(str(state / "write-only"))
        assert cache.names("sets") == [] and cache.get("sets", "a" * 64) is None
        assert cache.keep_trees_of([]) == 0 and cache.expire("wal", 0) == 0
        with pytest.raises(BackendError) as failed:
            cache.put("sets", "a" * 64, b"a set's record")
        assert str(failed.value) == (f"unable to prepare the write-only host's records in "
                                     f"'{state / 'write-only'}': No space left on device"), failed.value
        for path in made:
            os.unlink(path)
        cache.put("sets", "a" * 64, b"a set's record")
        assert cache.names("sets") == ["a" * 64] and cache.get("sets", "a" * 64) == b"a set's record"
        assert stat.S_IMODE(os.stat(state / "write-only" / "sets").st_mode) == 0o700
    finally:
        unmount(str(state))
