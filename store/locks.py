"""Repository locks: shared for backups and WAL pushes, exclusive for prune.

A lock is a small object under "locks/" naming host, pid, mode and time. A lock is stale when
its process is gone (same host) or it has not been refreshed for STALE_AFTER seconds (any
host); stale locks are removed by whoever finds them. Adds take shared locks and never block
each other (content addressing makes them idempotent); only prune excludes everything else.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .backend import Backend
from .errors import LockedError, NotFoundError

STALE_AFTER = 30 * 60
REFRESH_EVERY = 5 * 60


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Locks:
    """Takes and releases locks on one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.host = socket.gethostname()

    def _read(self, name: str) -> dict | None:
        try:
            doc = json.loads(self.backend.get("locks", name))
            return doc if isinstance(doc, dict) else None
        except (NotFoundError, ValueError):
            return None

    def _stale(self, doc: dict | None) -> bool:
        if doc is None:
            return True
        if doc.get("host") == self.host and not _alive(int(doc.get("pid", 0))):
            return True
        return time.time() - float(doc.get("time", 0)) > STALE_AFTER

    def others(self, mine: str = "") -> list[dict]:
        """Live locks held by others; stale ones are removed on the way."""
        out = []
        for name in list(self.backend.list("locks")):
            if name == mine:
                continue
            doc = self._read(name)
            if self._stale(doc):
                try:
                    self.backend.delete("locks", name)
                except NotFoundError:
                    pass
                continue
            out.append(doc)
        return out

    def _conflict(self, exclusive: bool, mine: str) -> dict | None:
        for doc in self.others(mine):
            if exclusive or doc.get("exclusive"):
                return doc
        return None

    @contextmanager
    def hold(self, purpose: str, exclusive: bool = False) -> Iterator[None]:
        """Hold a lock for the duration of the block; LockedError on conflict."""
        self._raise_conflict(self._conflict(exclusive, ""))
        name = os.urandom(16).hex()
        doc = {"host": self.host, "pid": os.getpid(), "exclusive": exclusive, "purpose": purpose}
        self._write(name, doc)
        clash = self._conflict(exclusive, name)
        if clash is not None:
            self._remove(name)
            self._raise_conflict(clash)
        stop = threading.Event()
        refresher = threading.Thread(target=self._refresh, args=(name, doc, stop), daemon=True)
        refresher.start()
        try:
            yield
        finally:
            stop.set()
            refresher.join(timeout=5)
            self._remove(name)

    def _write(self, name: str, doc: dict) -> None:
        self.backend.put("locks", name, json.dumps({**doc, "time": time.time()}).encode())

    def _refresh(self, name: str, doc: dict, stop: threading.Event) -> None:
        while not stop.wait(REFRESH_EVERY):
            self._write(name, doc)

    def _remove(self, name: str) -> None:
        try:
            self.backend.delete("locks", name)
        except NotFoundError:
            pass

    @staticmethod
    def _raise_conflict(doc: dict | None) -> None:
        if doc is None:
            return
        kind = "exclusive" if doc.get("exclusive") else "shared"
        raise LockedError(f"repository is locked ({kind}, {doc.get('purpose', '?')}) by pid {doc.get('pid')} "
                          f"on {doc.get('host')}", hint="wait for it to finish; stale locks expire by themselves")
