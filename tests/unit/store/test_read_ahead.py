"""Reading many index files or set objects (store/repository.py, `_read_ahead`): a full index
load, a refresh and a listing of sets read several objects at once, never more than
READ_AHEAD, and give what the objects give one by one; a damaged one among them is reported
and the others are used; under `reading_stored` every reader reads the store itself."""

from __future__ import annotations

import os
import threading
import time

from cairn.store.content.index import Index, decode_index
from cairn.store.model import BackupRequest
from cairn.store.repository import READ_AHEAD, Repository
from cairn.store.storage.backend import MemoryBackend


class SlowIndexReads(MemoryBackend):
    """A memory backend whose reads of `slow_kind` take a round trip, counting how many overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = False
        self.slow_kind = "index"
        self.in_flight = 0
        self.most = 0
        self._mutex = threading.Lock()

    def get(self, kind: str, name: str) -> bytes:
        if kind != self.slow_kind or not self.slow:
            return super().get(kind, name)
        with self._mutex:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(0.02)
            return super().get(kind, name)
        finally:
            with self._mutex:
                self.in_flight -= 1


def repository_with_index_files(tmp_path, n: int) -> SlowIndexReads:
    backend = SlowIndexReads()
    Repository.init(backend)
    repo = Repository.open(backend)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):  # each backup of new content writes one index file
        (src / f"f{i}").write_bytes(os.urandom(3000))
        repo.backup(BackupRequest(source="s", paths=(str(src),)))
    repo.close()
    assert len(list(backend.list("index"))) == n
    return backend


def one_by_one(backend: MemoryBackend) -> Index:
    index = Index()
    for name in backend.list("index"):
        for pack, entries in decode_index(name, MemoryBackend.get(backend, "index", name)).items():
            index.add_pack(pack, entries)
    return index


def test_index_files_are_read_several_at_once_and_give_the_same_index(tmp_path):
    backend = repository_with_index_files(tmp_path, 3 * READ_AHEAD)
    backend.slow = True
    repo = Repository.open(backend)
    assert 1 < backend.most <= READ_AHEAD, f"{backend.most} index files were read at once"
    assert not repo.index_problems
    assert sorted(repo.index.items()) == sorted(one_by_one(backend).items())
    assert len(repo.index) == len(one_by_one(backend)) > 0


def test_a_damaged_index_file_among_many_is_reported_and_the_others_loaded(tmp_path):
    backend = repository_with_index_files(tmp_path, 12)
    names = sorted(backend.list("index"))
    damaged = names[5]
    data = bytearray(backend.objects[("index", damaged)])
    data[len(data) // 2] ^= 0x01
    backend.objects[("index", damaged)] = bytes(data)
    backend.slow = True
    repo = Repository.open(backend)
    assert len(repo.index_problems) == 1 and damaged[:8] in repo.index_problems[0]
    expected = Index()
    for name in names:
        if name != damaged:
            for pack, entries in decode_index(name, backend.objects[("index", name)]).items():
                expected.add_pack(pack, entries)
    assert sorted(repo.index.items()) == sorted(expected.items())


def test_a_load_reading_the_store_itself_does_so_in_every_reader(tmp_path):
    """Under `reading_stored` (check, prune) the files come from the store, not from the local
    cache, in the pool's threads as in the caller's: a damaged stored file is seen even when
    the cached copy is good."""
    backend = repository_with_index_files(tmp_path, 2 * READ_AHEAD)
    cache_dir = str(tmp_path / "cache")
    Repository.open(backend, cache_dir=cache_dir).close()  # every index file now cached
    damaged = sorted(backend.list("index"))[3]
    data = bytearray(backend.objects[("index", damaged)])
    data[len(data) // 2] ^= 0x01
    backend.objects[("index", damaged)] = bytes(data)
    repo = Repository.open(backend, cache_dir=cache_dir)
    assert not repo.index_problems, "expected the cached copies to be served"
    with repo.reading_stored(trees=False):
        repo.load_index()
    assert len(repo.index_problems) == 1 and damaged[:8] in repo.index_problems[0]


def test_a_refresh_reads_the_new_index_files_several_at_once(tmp_path):
    """A handle that has not looked for a while (other hosts wrote many sets) adds what appeared
    the same way: several reads at once, the same index as the files give one by one."""
    backend = repository_with_index_files(tmp_path, 2)
    behind = Repository.open(backend)
    writer = Repository.open(backend)
    src = tmp_path / "more"
    src.mkdir()
    for i in range(2 * READ_AHEAD):
        (src / f"g{i}").write_bytes(os.urandom(3000))
        writer.backup(BackupRequest(source="t", paths=(str(src),)))
    backend.slow = True
    behind.refresh_index()
    assert 1 < backend.most <= READ_AHEAD, f"{backend.most} index files were read at once"
    assert sorted(behind.index.items()) == sorted(one_by_one(backend).items())


def test_sets_are_read_several_at_once_on_a_new_host(tmp_path):
    backend = repository_with_index_files(tmp_path, 3 * READ_AHEAD)
    expected = {s.id: s for s in Repository.open(backend).list_sets()}
    backend.slow, backend.slow_kind = True, "sets"
    repo = Repository.open(backend)
    got = repo.list_sets()
    assert 1 < backend.most <= READ_AHEAD, f"{backend.most} set objects were read at once"
    assert [s.id for s in got] == sorted(expected, key=lambda i: (expected[i].time_end, i))
    assert {s.id: s for s in got} == expected and not repo.unreadable_sets
    backend.most = 0
    assert [s.id for s in repo.list_sets()] == [s.id for s in got] and backend.most == 0, "sets read again"


def test_garbage_collection_reads_the_index_files_ahead_from_the_store(tmp_path):
    """Prune reads every index file (to find the packs they name, to write the one index file
    that replaces them) several at once, and the repository is whole afterwards."""
    from cairn.store.model import PrunePolicy

    backend = SlowIndexReads()
    Repository.init(backend)
    cache_dir = str(tmp_path / "cache")
    repo = Repository.open(backend, cache_dir=cache_dir)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2 * READ_AHEAD):  # each set holds one file the next does not: the old sets' data dies
        for old in src.iterdir():
            old.unlink()
        (src / f"f{i}").write_bytes(os.urandom(3000))
        repo.backup(BackupRequest(source="s", paths=(str(src),)))
    backend.slow = True
    report = repo.prune(PrunePolicy(keep_last=2), grace=0)
    assert report.forgotten and report.packs_deleted, "expected the dropped sets' packs to go"
    assert 1 < backend.most <= READ_AHEAD, f"{backend.most} index files were read at once"
    assert len(list(backend.list("index"))) == 1, "expected one index file to replace the others"
    backend.slow = False
    assert repo.check().ok
    assert len(repo.list_sets()) == 2


def test_what_garbage_collection_reads_comes_from_the_store_even_outside_reading_stored(tmp_path):
    from cairn.store.errors import CorruptionError

    backend = repository_with_index_files(tmp_path, READ_AHEAD)
    cache_dir = str(tmp_path / "cache")
    Repository.open(backend, cache_dir=cache_dir).close()  # every index file now cached
    names = sorted(backend.list("index"))
    data = bytearray(backend.objects[("index", names[2])])
    data[len(data) // 2] ^= 0x01
    backend.objects[("index", names[2])] = bytes(data)
    repo = Repository.open(backend, cache_dir=cache_dir)
    for some in (names, names[2:3]):  # through the pool, and alone
        got = dict(repo.stored_index_files(some))
        assert isinstance(got[names[2]], CorruptionError)
        assert all(isinstance(v, dict) for n, v in got.items() if n != names[2])
