"""Fixtures for the change journal tests: real trackers on real inotify in temporary trees."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import watcher_hooks
from cairn.daemon.changes.tracker import ChangeTracker
from cairn.daemon.runtime.config import SourceConfig

watcher_hooks.install()  # hold the inotify reader, inject an overflow (tests/watcher_hooks.py)


@dataclass(frozen=True)
class Src:
    """A SourceConfig-like object."""

    name: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    watch: bool = True
    own_dirs: tuple[str, ...] = ()  # (SourceConfig's: the daemon's own directories below the paths)

    def path_excludes(self) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
        return SourceConfig.path_excludes(self)  # type: ignore[arg-type]  (the daemon's own split)


@dataclass
class Env:
    root: str
    state: str
    src: str
    trackers: list[ChangeTracker] = field(default_factory=list)

    def tracker(self, sources: list[Src] | None = None, max_watches: int | None = None,
                on_change: Callable[[str], None] | None = None, start: bool = True) -> ChangeTracker:
        t = ChangeTracker(self.state, sources if sources is not None else [Src("app", (self.src,))],
                          max_watches=max_watches, on_change=on_change)
        self.trackers.append(t)
        if start:
            t.start()
        return t

    @staticmethod
    def source(name: str, paths: tuple[str, ...], exclude: tuple[str, ...] = (), watch: bool = True) -> Src:
        return Src(name, paths, exclude, watch)

    def p(self, *parts: str) -> str:
        return os.path.join(self.src, *parts)

    @staticmethod
    def trust(tracker: ChangeTracker, source: str = "app", set_id: str = "F1") -> None:
        """Take a pretend full set so the journal is trusted from here on."""
        hint, token = tracker.prepare(source, "full", None, None)
        assert hint is None
        tracker.committed(source, "full", set_id, token)

    @staticmethod
    def wait_until(pred: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> object:
        return wait_until(pred, timeout, what)


def wait_until(pred: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> object:
    """Poll `pred` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def env(tmp_path) -> Iterator[Env]:
    src = tmp_path / "src"
    src.mkdir()
    e = Env(root=str(tmp_path), state=str(tmp_path / "state"), src=str(src))
    yield e
    for t in e.trackers:
        try:
            t.stop()
        except Exception:
            pass

