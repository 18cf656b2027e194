"""Several pack uploads in flight (BlobWriter's `uploads`): they really overlap, an index file
never names a pack whose upload was not acknowledged, and a failed upload fails the session
with the backend's error and commits nothing."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest
from cairn.store.content.blobs import BlobWriter, blob_id
from cairn.store.content.index import Index, decode_index
from cairn.store.content.packs import TYPE_DATA
from cairn.store.errors import BackendError
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend

PACK = 64 * 1024


class SlowPuts(MemoryBackend):
    """Pack puts take a while and are counted while in flight; `fail_pack` makes the n-th
    pack put fail (1-based). `acked` lists the packs whose put returned, in order."""

    def __init__(self, delay: float = 0.05, fail_pack: int | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.fail_pack = fail_pack
        self.inflight = 0
        self.peak = 0
        self.pack_puts = 0
        self.acked: list[str] = []
        self.index_seen_acked: list[bool] = []
        self._count = threading.Lock()

    def put(self, kind: str, name: str, data: bytes) -> None:
        if kind == "index":
            named = decode_index(name, bytes(data))
            with self._count:
                self.index_seen_acked.append(all(p in self.acked for p in named))
            return super().put(kind, name, data)
        if kind != "packs":
            return super().put(kind, name, data)
        with self._count:
            self.pack_puts += 1
            n = self.pack_puts
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
        try:
            time.sleep(self.delay)
            if n == self.fail_pack:
                raise BackendError(f"unable to write packs object '{name[:8]}..': injected failure")
            super().put(kind, name, data)
        finally:
            with self._count:
                self.inflight -= 1
        with self._count:
            self.acked.append(name)


def fill(writer: BlobWriter, packs: int) -> None:
    for _ in range(packs * 2):
        data = os.urandom(PACK // 2 + 100)  # incompressible: two blobs fill a pack
        writer.put(blob_id(data), TYPE_DATA, data)


@pytest.mark.parametrize("uploads", [1, 4])
def test_uploads_overlap_up_to_the_bound(uploads):
    backend = SlowPuts()
    w = BlobWriter(backend, Index(), pack_size=PACK, level=1, uploads=uploads, index_every=3)
    fill(w, 12)
    w.finish()
    assert backend.pack_puts >= 12
    assert backend.peak <= uploads  # the pool is bounded
    if uploads > 1:
        assert backend.peak >= 2  # and uploads really overlap
    assert backend.index_seen_acked and all(backend.index_seen_acked)  # no index named an unacked pack
    assert {p for k, p in backend.objects if k == "packs"} == set(backend.acked)


def test_finish_waits_for_every_upload_before_the_index():
    backend = SlowPuts(delay=0.2)
    w = BlobWriter(backend, Index(), pack_size=PACK, level=1, uploads=4)
    fill(w, 4)
    w.finish()
    assert backend.inflight == 0
    index_files = [n for k, n in backend.objects if k == "index"]
    named = set().union(*(decode_index(n, backend.objects[("index", n)]) for n in index_files))
    assert named == set(backend.acked)  # every uploaded pack is named, and only those
    assert all(backend.index_seen_acked)


def test_a_failed_upload_fails_the_session_and_commits_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_bytes(os.urandom(300_000))
    backend = SlowPuts(delay=0.01, fail_pack=3)
    repo = Repository.init(backend)
    repo.config = dataclasses.replace(repo.config, pack_size=256 * 1024)
    repo.uploads = 3
    with pytest.raises(BackendError, match="injected failure"):
        repo.backup(BackupRequest(source="s", paths=(str(src),)))
    assert repo.list_sets() == []
    assert backend.inflight == 0
    assert all(backend.index_seen_acked)
    # the next session writes again and commits
    backend.fail_pack = None
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    assert [x.id for x in repo.list_sets()] == [s.id]


def test_upload_slots_from_config_or_backend():
    repo = Repository.init(MemoryBackend())
    assert repo.upload_slots() == 1  # a backend without a default: one upload
    repo.backend.default_uploads = 6  # type: ignore[attr-defined]
    assert repo.upload_slots() == 6
    repo.uploads = 2
    assert repo.upload_slots() == 2
    assert repo.writer().uploads == 2
