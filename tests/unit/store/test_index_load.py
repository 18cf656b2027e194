"""Loading every index file of a repository (store/repository.py, `load_index`): the files are
read several at once, never more than INDEX_AHEAD, and the index is the same as the files give
one by one; a damaged file among them is reported and the others are loaded."""

from __future__ import annotations

import os
import threading
import time

from cairn.store.content.index import Index, decode_index
from cairn.store.model import BackupRequest
from cairn.store.repository import INDEX_AHEAD, Repository
from cairn.store.storage.backend import MemoryBackend


class SlowIndexReads(MemoryBackend):
    """A memory backend whose index reads take a round trip, counting how many overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = False
        self.in_flight = 0
        self.most = 0
        self._mutex = threading.Lock()

    def get(self, kind: str, name: str) -> bytes:
        if kind != "index" or not self.slow:
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
    backend = repository_with_index_files(tmp_path, 3 * INDEX_AHEAD)
    backend.slow = True
    repo = Repository.open(backend)
    assert 1 < backend.most <= INDEX_AHEAD, f"{backend.most} index files were read at once"
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
    backend = repository_with_index_files(tmp_path, 2 * INDEX_AHEAD)
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
    for i in range(2 * INDEX_AHEAD):
        (src / f"g{i}").write_bytes(os.urandom(3000))
        writer.backup(BackupRequest(source="t", paths=(str(src),)))
    backend.slow = True
    behind.refresh_index()
    assert 1 < backend.most <= INDEX_AHEAD, f"{backend.most} index files were read at once"
    assert sorted(behind.index.items()) == sorted(one_by_one(backend).items())
