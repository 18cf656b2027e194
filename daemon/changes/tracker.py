"""The change tracker: what changed in each source since a given base set, and whether to trust it.

`ChangeTracker` glues the watcher (inotify, `cairn.daemon.changes.watcher`), the durable journal
(`cairn.daemon.changes.journal`, SQLite in the state directory) and the store's `ChangeHint`.
The backup service uses it like this, once per set:

    tracker = ChangeTracker(state_dir, config.sources, max_watches=config.daemon.max_watches,
                            on_change=lambda source: scheduler.poke(source))
    tracker.start()                                    # marks every watched source for rescan
    hint, token = tracker.prepare(source, level, base.id if base else None,
                                  base.level if base else None)
    s = repo.backup(BackupRequest(..., level=level, changes=hint))
    tracker.committed(source, s.level, s.id, token)    # only after the set is committed
    ...
    tracker.reload(new_config.sources)                 # SIGHUP
    tracker.stop()

- `prepare` waits until every event that happened before the call is in the journal, then
  reads the journal's sequence number into the token. The hint is None (walk everything and
  compare with the base's metadata) when the level is 'full', the source is not watched
  (`watch = false`, a database directory, a root that could not be watched), the base is not
  the latest full or latest set the tracker saw committed, or the journal lost track of the
  whole source since that base (daemon restart, queue overflow, ...). Otherwise it is the
  union of every change recorded since the base: since the latest full for a differential,
  since the latest set for an incremental (whatever `base_set_id` names).
- `committed` marks protected exactly what the token covered; changes journaled after
  `prepare` stay pending for the next set. Pass the level the set was actually taken at
  (`BackupSet.level`: a set with no usable base is taken as a full). A set that fails or is
  abandoned is simply never committed: nothing is lost.
- `status(source)` reports the journal's state ('complete', or 'rescan' with reasons),
  the age of the oldest unprotected change, the count of pending entries and watches in use;
  `oldest_unprotected(source)` gives that change's time for RPO decisions; `on_change(source)`
  is called (from the tracker's flush thread) whenever new changes of the source were journaled.
- `mark_rescan(source, path, reason)` lets others (e.g. the backstop scan) distrust a subtree.

What always holds: a hint never omits a path that changed after the base's token unless the
source is marked for rescan (whole or subtree) with a reason; a source without a trusted
journal gets None. Paths in a hint may no longer exist (they were deleted or moved away).
Files with several hard links: a write through one name changes the others, which inotify
does not report, so a change to such a file marks the whole source for rescan.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cairn.daemon.changes.journal import Change, Journal
from cairn.daemon.changes.watcher import Watcher
from cairn.daemon.runtime.threads import ServiceThread
from cairn.store.model import ChangeHint, check_level
from cairn.store.snapshots.excludes import Excluder

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05
BARRIER_TIMEOUT = 5.0
JOURNAL_FILE = "journal.sqlite"
BARRIER_DIR = "watch-barrier"


class SourceLike(Protocol):
    name: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...]
    watch: bool


@dataclass(frozen=True)
class ChangeToken:
    """What a prepare() covered: journal entries of `source` up to `seq`."""

    source: str
    level: str
    seq: int
    prepared_at: float


def _fingerprint(src: SourceLike) -> str:
    data = json.dumps({"paths": sorted(os.path.abspath(p) for p in src.paths),
                       "exclude": list(src.exclude), "watch": bool(src.watch)})
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def _name(source: str | SourceLike) -> str:
    return source if isinstance(source, str) else source.name


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _minimal_dirs(dirs: Iterable[str]) -> list[str]:
    """Drop every directory that lies under another one of the set."""
    every = set(dirs)

    def covered(d: str) -> bool:
        parent = os.path.dirname(d)
        return parent != d and has_ancestor_in(parent, every)

    return sorted(d for d in every if not covered(d))


def has_ancestor_in(path: str, dirs: set[str] | frozenset[str]) -> bool:
    """True when `path` or one of its ancestors is in `dirs`."""
    """True if `path` or one of its ancestors is in `dirs`."""
    while True:
        if path in dirs:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


class _Excludes:
    """Excludes of one source root, on absolute paths (the store's matcher, relative to the root)."""

    def __init__(self, root: str, patterns: Sequence[str]) -> None:
        self.root = os.path.abspath(root)
        self.ex = Excluder(tuple(patterns))

    def __call__(self, path: str, is_dir: bool) -> bool:
        if not self.ex or not _under(path, self.root) or path == self.root:
            return False
        return self.ex.excluded(path[len(self.root.rstrip("/")) + 1:], is_dir)


class _Flusher(ServiceThread):
    def __init__(self, tracker: ChangeTracker) -> None:
        super().__init__("change-journal")
        self.tracker = tracker

    def run_safe(self) -> None:
        while not self.wait(FLUSH_INTERVAL):
            self.tracker.flush()
        self.tracker.flush()


@dataclass(frozen=True)
class JournalStatus:
    """The journal's view of one source: can it vouch for the next set, and what waits."""

    state: str  # "complete", or "rescan" when the next set must walk (the reasons say why)
    reasons: tuple[str, ...]
    oldest_unprotected_age: float | None  # seconds since the oldest change no set holds yet
    pending_paths: int
    watches: int


class ChangeTracker:
    """Per-source change tracking for incremental and differential sets (see the module doc)."""

    def __init__(self, state_dir: str, sources: Sequence[SourceLike], max_watches: int | None = None,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.state_dir = state_dir
        self.max_watches = max_watches
        self.on_change = on_change
        self._sources: dict[str, SourceLike] = {s.name: s for s in sources}
        self._batch: list[tuple[Change, bool]] = []
        self._batch_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._unwatched: dict[str, dict[str, str]] = {}   # source -> subtree -> reason (sticky)
        self._not_watched: dict[str, str] = {}           # source -> why it has no trusted watch
        self._journal: Journal | None = None
        self._watcher: Watcher | None = None
        self._flusher: _Flusher | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the journal, mark every watched source for rescan (gap unknown), start watching."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self._journal = Journal(os.path.join(self.state_dir, JOURNAL_FILE))
        previous = self._journal.begin_session()
        if previous is None:
            gap = "first start of the change journal"
        elif previous.clean:
            gap = "daemon restarted: changes while it was not running are unknown"
        else:
            gap = "daemon restarted after an unclean stop: changes while it was not running are unknown"
        self._watcher = Watcher(self, os.path.join(self.state_dir, BARRIER_DIR), self.max_watches)
        self._watcher.start()
        for src in list(self._sources.values()):
            known = self._journal.marks(src.name).known
            self._begin_source(src, gap if known else "source was never watched")
        self.flush()
        self._flusher = _Flusher(self)
        self._flusher.start()

    def stop(self) -> None:
        """Stop watching, flush what is pending and record a clean stop."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        self.flush()
        if self._journal is not None:
            self._journal.end_session()
            self._journal.close()
            self._journal = None
        self._watcher = None

    def reload(self, sources: Sequence[SourceLike]) -> None:
        """Apply a new source list: new or changed sources start over with a rescan."""
        new = {s.name: s for s in sources}
        with self._state_lock:
            old = self._sources
            self._sources = new
        journal = self._require_journal()
        for name in old:
            if name not in new:
                self._end_source(name)
        for name, src in new.items():
            prev = old.get(name)
            if prev is not None and _fingerprint(prev) == _fingerprint(src) and name not in self._not_watched:
                continue
            if prev is not None:
                self._end_source(name)
            reason = "source configuration changed" if prev is not None else "source was not watched before"
            if not journal.marks(name).known:
                reason = "source was never watched"
            self._begin_source(src, reason)
        self.flush()

    def _begin_source(self, src: SourceLike, reason: str) -> None:
        """Start tracking one source: rescan first, then watch its roots."""
        journal = self._require_journal()
        watcher = self._require_watcher()
        journal.set_fingerprint(src.name, _fingerprint(src))
        with self._state_lock:
            self._unwatched.pop(src.name, None)
            self._not_watched.pop(src.name, None)
        if not src.watch:
            with self._state_lock:
                self._not_watched[src.name] = "not watched (watch = false)"
            return
        self._add(Change(src.name, "source", "", time.time(), reason), False)
        for root in src.paths:
            try:
                watcher.watch(src.name, root, _Excludes(root, src.exclude))
            except OSError as e:
                why = f"unable to watch '{root}': {e.strerror or e}"
                log.warning("%s (source '%s')", why, src.name)
                with self._state_lock:
                    self._not_watched[src.name] = why
                watcher.unwatch(src.name)
                return

    def _end_source(self, name: str) -> None:
        if self._watcher is not None:
            self._watcher.unwatch(name)
        with self._state_lock:
            self._unwatched.pop(name, None)
            self._not_watched.pop(name, None)

    # -- WatchSink (inotify thread) ----------------------------------------------------------------
    def changed(self, source: str, path: str, written: bool) -> None:
        self._add(Change(source, "path", path, time.time()), written)

    def new_directory(self, source: str, path: str) -> None:
        self._add(Change(source, "tree", path, time.time(), "new directory"), False)

    def unwatched(self, source: str, path: str, reason: str) -> None:
        text = f"{reason}: '{path}' is not watched"
        with self._state_lock:
            self._unwatched.setdefault(source, {})[path] = text
        self._add(Change(source, "rescan", path, time.time(), text), False)

    def rescan(self, source: str, path: str | None, reason: str) -> None:
        kind = "source" if path is None else "rescan"
        self._add(Change(source, kind, path or "", time.time(), reason), False)

    def _add(self, change: Change, written: bool) -> None:
        with self._batch_lock:
            self._batch.append((change, written))

    # -- flushing ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the pending batch to the journal (the flush thread does this every 50 ms)."""
        with self._flush_lock:
            touched = self._flush_locked()
        self._notify(touched)

    def _flush_locked(self) -> dict[str, int]:
        with self._batch_lock:
            batch, self._batch = self._batch, []
        if not batch or self._journal is None:
            return {}
        changes = [c for c, _ in batch]
        changes.extend(self._link_checks(batch))
        return self._journal.record(changes)

    def _notify(self, touched: dict[str, int]) -> None:
        if self.on_change is None:
            return
        for source in touched:
            try:
                self.on_change(source)
            except Exception:
                log.exception("change callback failed for source '%s'", source)

    def _link_checks(self, batch: list[tuple[Change, bool]]) -> list[Change]:
        """A written file with several names changed its other names too: distrust the source."""
        seen: set[tuple[str, str]] = set()
        out: list[Change] = []
        for c, written in batch:
            if not written or (c.source, c.path) in seen:
                continue
            seen.add((c.source, c.path))
            try:
                st = os.lstat(c.path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                why = f"file with {st.st_nlink} hard links changed: '{c.path}' (other names unknown)"
                out.append(Change(c.source, "source", "", c.time, why))
        return out

    # -- the backup protocol ------------------------------------------------------------------------
    def prepare(self, source: str | SourceLike, level: str, base_set_id: str | None,
                base_level: str | None = None) -> tuple[ChangeHint | None, ChangeToken]:
        """Return (hint or None, token) for a set of `source` at `level` against `base_set_id`."""
        name = _name(source)
        check_level(level)
        journal = self._require_journal()
        src = self._sources.get(name)
        if src is not None and src.watch:
            self._rewatch_if_needed(src)
        watched = src is not None and self._is_watched(name)
        barrier_ok = watched and self._watcher is not None and self._watcher.barrier(BARRIER_TIMEOUT)
        if watched and not barrier_ok:
            log.warning("change watcher did not answer in time; source '%s' is walked", name)
        # Read the sequence and the entries with no flush in between: nothing recorded before
        # the token can be missed (a row moved past the token by a newer event is still read).
        with self._flush_lock:
            touched = self._flush_locked()
            token = ChangeToken(name, level, journal.seq, time.time())
            marks = journal.marks(name)
            since = marks.set_seq if base_set_id == marks.set_id else \
                marks.full_seq if base_set_id == marks.full_id else None
            usable = level != "full" and watched and barrier_ok and base_set_id is not None
            entries = journal.entries_after(name, since) if usable and since is not None else None
        self._notify(touched)
        if entries is None or src is None:
            return None, token
        return self._hint(src, entries), token

    def _rewatch_if_needed(self, src: SourceLike) -> None:
        """A source whose watch failed or whose root vanished is watched again when possible."""
        lost = self._watcher.lost(src.name) if self._watcher is not None else []
        if src.name not in self._not_watched and not lost:
            return
        if not all(os.path.isdir(p) for p in src.paths):
            return
        self._end_source(src.name)
        self._begin_source(src, "source was not watched for a while")

    def _hint(self, src: SourceLike, entries: list[Any]) -> ChangeHint | None:
        roots = [os.path.abspath(p) for p in src.paths]
        paths: set[str] = set()
        dirs: set[str] = set()
        for e in entries:
            if e.kind == "source":
                return None
            if e.kind == "path":
                paths.add(e.path)
            else:
                dirs.add(e.path)
        with self._state_lock:
            dirs.update(self._unwatched.get(src.name, {}))
        rescan = {d for d in _minimal_dirs(dirs) if any(_under(d, r) for r in roots)}
        keep = {p for p in paths if any(_under(p, r) for r in roots) and not has_ancestor_in(p, rescan)}
        return ChangeHint(paths=frozenset(keep), rescan=frozenset(rescan))

    def committed(self, source: str | SourceLike, level: str, set_id: str, token: ChangeToken) -> None:
        """Record that set `set_id` (taken at `level`) covering `token` is committed."""
        name = _name(source)
        check_level(level)
        if token.source != name:
            raise ValueError(f"change token of source '{token.source}' used for source '{name}'")
        self._require_journal().commit(name, level, set_id, token.seq)

    # -- status --------------------------------------------------------------------------------------
    def mark_rescan(self, source: str | SourceLike, path: str | None, reason: str) -> None:
        """Distrust `path` (a directory of the source; None or a root: the whole source)."""
        name = _name(source)
        src = self._sources.get(name)
        roots = [os.path.abspath(p) for p in src.paths] if src is not None else []
        if path is None or os.path.abspath(path) in roots:
            self._add(Change(name, "source", "", time.time(), reason), False)
        else:
            self._add(Change(name, "rescan", os.path.abspath(path), time.time(), reason), False)
        self.flush()

    def oldest_unprotected(self, source: str | SourceLike) -> float | None:
        """Epoch time of the oldest change not yet in a committed set (None if none or not watched)."""
        name = _name(source)
        if not self._is_watched(name):
            return None
        self.flush()
        return self._require_journal().pending(name).oldest

    def status(self, source: str | SourceLike) -> JournalStatus:
        """The journal's view of `source`, for `cairn status`."""
        name = _name(source)
        self.flush()
        pending = self._require_journal().pending(name)
        reasons: list[str] = []
        with self._state_lock:
            if name in self._not_watched:
                reasons.append(self._not_watched[name])
            sticky = dict(self._unwatched.get(name, {}))
        if self._watcher is not None:
            reasons.extend(f"watched root '{r}' is gone" for r in self._watcher.lost(name))
        for e in pending.trust:
            if e.kind == "source":
                text = f"{e.reason} (whole source)"
            else:
                text = e.reason if e.path in e.reason else f"{e.reason}: '{e.path}'"
            if text not in reasons:
                reasons.append(text)
        for reason in sticky.values():
            if reason not in reasons:
                reasons.append(reason)
        oldest = pending.oldest if self._is_watched(name) else None
        return JournalStatus(
            state="rescan" if reasons else "complete",
            reasons=tuple(reasons),
            oldest_unprotected_age=max(0.0, time.time() - oldest) if oldest is not None else None,
            pending_paths=pending.count,
            watches=self._watcher.watches(name) if self._watcher is not None else 0,
        )

    def watches(self) -> int:
        """Watches in use across all sources."""
        return self._watcher.watches() if self._watcher is not None else 0

    # -- helpers ---------------------------------------------------------------------------------------
    def _is_watched(self, name: str) -> bool:
        src = self._sources.get(name)
        return src is not None and src.watch and name not in self._not_watched

    def _require_journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError("change tracker is not started")
        return self._journal

    def _require_watcher(self) -> Watcher:
        if self._watcher is None:
            raise RuntimeError("change tracker is not started")
        return self._watcher

    @property
    def watcher(self) -> Watcher:
        """The underlying watcher."""
        return self._require_watcher()
