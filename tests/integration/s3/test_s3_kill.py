"""Killing the object store (SIGKILL of SeaweedFS) in the middle of a backup: the backup fails
with one clear line, and once the store is back on the same data directory nothing
half-written is visible, the earlier set restores, check passes and the next backup succeeds."""

from __future__ import annotations

import threading
import time

import pytest
from cairn.errors import CairnError
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.repository import Repository
from s3server import WeedServer
from storekit import backup, differences, make_tree, restore_and_compare, snapshot, write_random

MIB = 1024 * 1024


class KillDuringPut:
    """Passes everything to `inner`; at pack put number `at` it SIGKILLs the store from another
    thread while that put is in flight. Records every pack body it was asked to store."""

    def __init__(self, inner, server: WeedServer, at: int) -> None:
        self.inner, self.server, self.at = inner, server, at
        self.pack_puts = 0
        self.sent: dict[str, bytes] = {}
        self.killer: threading.Thread | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, kind: str, name: str, data: bytes) -> None:
        if kind == "packs":
            self.sent[name] = bytes(data)
            self.pack_puts += 1
            if self.pack_puts == self.at and self.killer is None:
                self.killer = threading.Thread(target=self.server.kill)
                self.killer.start()
        self.inner.put(kind, name, data)


@pytest.mark.slow
def test_store_killed_during_a_backup(tmp_path, rng):
    src = tmp_path / "src"
    make_tree(str(src), rng, files=12, max_size=256 * 1024)
    server = WeedServer(tmp_path / "weed").start()
    try:
        repo = Repository.init(server.backend("killed"), RepoConfig.new(pack_size=MIB))
        first = backup(repo, str(src))
        before = snapshot(str(src))
        repo.close()
        # New data for a second backup that spans several packs.
        big = src / "big"
        big.mkdir()
        for i in range(6):
            write_random(str(big / f"b{i}.bin"), MIB, rng)
        wrapped = KillDuringPut(server.backend("killed", attempts=2, connect_timeout=2), server, at=3)
        repo = Repository.open(wrapped)
        started = time.monotonic()
        with pytest.raises(CairnError) as info:
            backup(repo, str(src))
        assert time.monotonic() - started < 120
        msg = str(info.value)
        assert "\n" not in msg and ("unreachable" in msg or "unable to" in msg), msg
        assert wrapped.killer is not None
        wrapped.killer.join(60)
        repo.close()

        server.start()  # same directory, same ports
        b = server.backend("killed")
        reopened = Repository.open(b)
        assert [s.id for s in reopened.list_sets()] == [first.id]
        # Every pack the store shows is whole: exactly the bytes that were sent for it.
        for name in b.list("packs"):
            if name in wrapped.sent:
                assert b.get("packs", name) == wrapped.sent[name], f"pack {name} is half-written"
        report = reopened.check(read_data=True)
        assert report.ok, report.errors
        assert reopened.restore(reopened.get_set(first.id), str(tmp_path / "r0")).errors == ()
        assert differences(before, snapshot(str(tmp_path / "r0"))) == []
        second = backup(reopened, str(src))
        restore_and_compare(reopened, reopened.get_set(second.id), str(src), str(tmp_path / "restored"))
        assert reopened.check(read_data=True).ok
    finally:
        server.stop()
