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
- `status(source)` reports the journal's state ('complete', or 'rescan' with reasons: every
  one, and a summary for people in which the directories of one cause beyond SHOWN_DIRECTORIES
  are counted, not listed), the age of the oldest unprotected change, the count of pending entries and watches in use;
  `oldest_unprotected(source)` gives that change's time for RPO decisions (a kept multi-link
  file whose stat moved since the last committed set counts, at its ctime); `on_change(source)`
  is called (from the tracker's flush thread) whenever new changes of the source were journaled.
- `mark_rescan(source, path, reason)` lets others (e.g. the backstop scan) distrust a subtree;
  `note_links(source, paths)` hands it files with several hard links another walk met.

What always holds: a hint never omits a path that changed after the base's token unless the
source is marked for rescan (whole or subtree) with a reason; a source without a trusted
journal gets None. Paths in a hint may no longer exist (they were deleted or moved away).
Excludes are the walker's, per root (`root_excludes`: anchored patterns re-rooted).
Files with several hard links: a write through one name changes the others, which inotify
does not report, so a change to such a file marks the whole source for rescan; and since a
name outside the source changes it without any event, every hint lists each such file the
tracker knows of (from events, its own census of what the watcher did not see, and
`note_links`), or, beyond MAX_LINKED_FILES of them, rescans the source paths whole.
What raises no event is polled (`check_roots`, every ROOT_CHECK_INTERVAL and at each prepare
and status): a root that now resolves elsewhere starts its source over (walked whole), and a
file system mounted or unmounted below a root is watched afresh and rescanned. An unwatched
directory stays in every hint until a committed set walked it and it is gone or watched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import queue
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cairn.daemon.changes.journal import WRITTEN, Change, Journal, JournalError, Pending, describe, open_journal
from cairn.daemon.changes.watcher import Watcher
from cairn.daemon.runtime.threads import ServiceThread
from cairn.fsio.names import shown
from cairn.store.model import ChangeHint, check_level
from cairn.store.snapshots.excludes import Excluder

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05
RETRY_INTERVAL = 1.0          # how often the flush thread retries a journal it could not write
MAX_HELD_CHANGES = 100_000    # changes kept in memory while the journal cannot be written (beyond: per source, one)
WATCH_RETRY = 60.0  # seconds between tries to watch a source whose watch failed
ROOT_CHECK_INTERVAL = 1.0     # how often the roots' real paths and the mounts below them are compared
MAX_LINKED_FILES = 10000      # files with several hard links kept per source (beyond: walk the roots)
SHOWN_DIRECTORIES = 3         # directories of one cause a status summary names (the others are counted)
MOUNTINFO = "/proc/self/mountinfo"
BARRIER_TIMEOUT = 5.0
JOURNAL_FILE = "journal.sqlite"
BARRIER_DIR = "watch-barrier"


class SourceLike(Protocol):
    name: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...]
    watch: bool

    def path_excludes(self) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]: ...


@dataclass(frozen=True)
class ChangeToken:
    """What a prepare() covered: journal entries of `source` up to `seq`."""

    source: str
    level: str
    seq: int
    prepared_at: float
    unwatched: frozenset[str] = frozenset()  # unwatched directories the set walks (see committed)
    linked: tuple[tuple[str, tuple[int, ...] | None], ...] = ()  # multi-link files and their stat then


def _fingerprint(src: SourceLike) -> str:
    """What decides which files a set of the source holds: a change of it (a reload) makes the
    next set walk. Keys added later count only when set, so an unchanged source keeps its print."""
    doc: dict[str, Any] = {"paths": sorted(os.path.abspath(p) for p in src.paths),
                           "exclude": list(src.exclude), "watch": bool(src.watch)}
    aux = sorted(os.path.abspath(p) for p in getattr(src, "aux_paths", ()))
    if aux:
        doc["aux_paths"] = aux
    if getattr(src, "one_file_system", False):
        doc["one_file_system"] = True
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:32]


def unwatched_aux(src: SourceLike) -> list[str]:
    """The source's aux_paths outside its watched paths: captured by every set (windows/capture.py)
    but not watched, so every set walks them (they are meant to be small: configuration, keys)."""
    roots = [os.path.abspath(p) for p in src.paths]
    return [a for a in (os.path.abspath(p) for p in getattr(src, "aux_paths", ()))
            if not any(_under(a, r) for r in roots)]


def root_excludes(src: SourceLike, root: str) -> tuple[str, ...]:
    """The exclude patterns that apply under `root`, exactly as the walker matches them: the
    source's common patterns, then those anchored at that root, re-rooted at it
    (`SourceConfig.path_excludes`: '<root>/cache/' is '/cache/' under `root`)."""
    common, anchored = src.path_excludes()
    own = next((pats for path, pats in anchored if os.path.normpath(path) == os.path.normpath(root)), ())
    return tuple(common) + tuple(own)


def _unescape(field: bytes) -> bytes:
    """A mountinfo field with its octal escapes (space, tab, newline, backslash) decoded."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def mount_points(mountinfo: str = MOUNTINFO) -> list[tuple[str, str]] | None:
    """Every mount this process sees, as (mount point, mount): the mount is its id and device
    ("36 0:52"), so a file system mounted over another at the same point (a stack), or one
    unmounted from such a stack, changes the table although the set of points stays the same
    (None when the mount table cannot be read)."""
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4:
            out.append((os.fsdecode(_unescape(fields[4])), f"{fields[0].decode()} {fields[2].decode()}"))
    return out


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _link_sig(path: str) -> tuple[int, ...] | None:
    """What a change through another name moves: inode, size, mtime, ctime (None: gone)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _multi_link(path: str) -> bool:
    """True for a regular file with more than one name."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1


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
        next_check = time.monotonic() + ROOT_CHECK_INTERVAL
        next_try = 0.0
        while not self.wait(FLUSH_INTERVAL):
            if time.monotonic() >= next_try:  # a journal that cannot be written is retried less often
                self.tracker.flush()
                next_try = time.monotonic() + RETRY_INTERVAL if self.tracker.write_failure else 0.0
            if time.monotonic() >= next_check:
                try:
                    self.tracker.check_roots()
                except Exception:  # the flush must go on; the next round checks again
                    log.exception("checking the watched roots failed")
                next_check = time.monotonic() + ROOT_CHECK_INTERVAL
        self.tracker.flush()


class _Census(ServiceThread):
    """Looks for files with several hard links in subtrees whose past the watcher did not see
    (a source starting to be watched, a lost stream, a new directory), so they can be re-checked
    by every set: another name of such a file, outside the source, changes it unseen."""

    def __init__(self, tracker: ChangeTracker) -> None:
        super().__init__("change-links")
        self.tracker = tracker
        self.jobs: queue.SimpleQueue[tuple[str, str | None]] = queue.SimpleQueue()

    def run_safe(self) -> None:
        while not self.stopping:
            try:
                first = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            whole = {src for src, path in batch if path is None}
            for src in sorted(whole):
                self.tracker.census(src, None, lambda: self.stopping)
            by_source: dict[str, set[str]] = {}
            for src, path in batch:
                if path is not None and src not in whole:
                    by_source.setdefault(src, set()).add(path)
            for src, paths in by_source.items():
                for path in _minimal_dirs(paths):
                    self.tracker.census(src, path, lambda: self.stopping)


@dataclass(frozen=True)
class JournalStatus:
    """The journal's view of one source: can it vouch for the next set, and what waits."""

    state: str  # "complete", or "rescan" when the next set must walk (the reasons say why)
    reasons: tuple[str, ...]  # every reason, a directory not watched (or to walk) one each
    oldest_unprotected_age: float | None  # seconds since the oldest change no set holds yet
    pending_paths: int    # journal entries no set holds yet, plus multi-link files changed unseen
    watches: int
    linked_files: int = 0  # files with several hard links every set re-checks
    last_set: str | None = None  # the newest set the journal recorded: what "nothing pending" is measured from
    summary: tuple[str, ...] = ()  # the reasons for people: a cause of many directories is one, naming a few


def unwatched_text(cause: str, path: str) -> str:
    """The reason of one directory that is not watched."""
    return f"{cause}: '{shown(path)}' is not watched"


class _Reasons:
    """Why a source must be walked, each reason once and in order: all of them, and a summary in
    which the directories of one cause are one reason once they are more than SHOWN_DIRECTORIES
    (thousands of directories past a watch cap would be thousands of reasons)."""

    def __init__(self) -> None:
        self.all: list[str] = []
        self._order: list[str | tuple[str, bool]] = []  # a reason, or the (cause, unwatched) of a group
        self._groups: dict[tuple[str, bool], list[tuple[str, str]]] = {}  # -> [(path, its reason)]

    def add(self, text: str) -> None:
        if text not in self.all:
            self.all.append(text)
            self._order.append(text)

    def add_directory(self, cause: str, path: str, unwatched: bool) -> None:
        """Directory `path` is not watched (`unwatched`) or must be walked, because of `cause`."""
        text = unwatched_text(cause, path) if unwatched else f"{cause}: '{path}'"
        if text in self.all:
            return
        self.all.append(text)
        key = (cause, unwatched)
        if key not in self._groups:
            self._groups[key] = []
            self._order.append(key)
        self._groups[key].append((path, text))

    def summary(self) -> list[str]:
        out: list[str] = []
        for item in self._order:
            if isinstance(item, str):
                out.append(item)
                continue
            members = self._groups[item]
            if len(members) <= SHOWN_DIRECTORIES:
                out.extend(text for _, text in members)
                continue
            cause, unwatched = item
            named = ", ".join(f"'{path}'" for path in sorted(path for path, _ in members)[:SHOWN_DIRECTORIES])
            what = "directories are not watched" if unwatched else "directories"
            out.append(f"{cause}: {len(members)} {what}: {named} and {len(members) - SHOWN_DIRECTORIES} more")
        return out


class ChangeTracker:
    """Per-source change tracking for incremental and differential sets (see the module doc)."""

    def __init__(self, state_dir: str, sources: Sequence[SourceLike], max_watches: int | None = None,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.state_dir = state_dir
        self.max_watches = max_watches
        self.on_change = on_change
        self._sources: dict[str, SourceLike] = {s.name: s for s in sources}
        self._batch: list[tuple[Change, bool]] = []
        self._batched: set[tuple[str, str, bool]] = set()  # the batch's (source, path, written) reports
        self._batch_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._unwatched: dict[str, dict[str, str]] = {}   # source -> subtree -> why it is not watched (sticky)
        self._not_watched: dict[str, str] = {}           # source -> why it has no trusted watch
        self._watch_failed_at: dict[str, float] = {}     # source -> when its watch failed (until it works)
        self._watch_retry_at: dict[str, float] = {}      # source -> when to try watching it again (monotonic)
        self._excludes: dict[tuple[str, str], _Excludes] = {}       # (source, root) -> its excludes
        # (source, root) -> (real, {(mount point, mount)} below it)
        self._mounts: dict[tuple[str, str], tuple[str, frozenset[tuple[str, str]]]] = {}
        self._links: dict[str, set[str]] = {}            # source -> files with several hard links
        self._links_full: dict[str, str] = {}            # source -> why its roots are walked instead
        self._links_held: dict[str, dict[str, tuple[int, ...] | None]] = {}  # source -> stat the last set saw
        self._watch_lock = threading.RLock()             # starting, ending and re-watching sources
        self._census: _Census | None = None
        self._journal: Journal | None = None
        # Changes the journal could not record (a full disk): kept, in order, and written first by
        # the next flush. Replaced, never changed in place; written under _flush_lock.
        self._held: list[Change] = []
        self._write_failure: str | None = None           # why, while _held is not empty
        self._read_failure: tuple[str, float] | None = None  # why the journal could not be read, since when
        self._watcher: Watcher | None = None
        self._flusher: _Flusher | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the journal, mark every watched source for rescan (gap unknown), start watching.
        A damaged journal is moved aside and started afresh (every source walked); JournalError
        (a CairnError) when none can be opened, e.g. on a full disk."""
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise JournalError(f"unable to create state directory '{self.state_dir}': {describe(e)}") from None
        journal, replaced = open_journal(os.path.join(self.state_dir, JOURNAL_FILE))
        try:
            previous = journal.begin_session()
        except JournalError:
            journal.close()
            raise
        self._journal = journal
        if replaced is not None:
            log.warning("%s; every source is walked by its next set", replaced)
            gap = "the change journal was damaged and started afresh"
        elif previous is None:
            gap = "first start of the change journal"
        elif previous.clean:
            gap = "daemon restarted: changes while it was not running are unknown"
        else:
            gap = "daemon restarted after an unclean stop: changes while it was not running are unknown"
            # Said in the log as well: the source's whole-source reason in `status` is replaced
            # by the next one (a hard-linked file written, an overflow) before an operator looks.
            watched = [s.name for s in self._sources.values() if s.watch]
            if watched:
                log.warning("the previous daemon did not stop cleanly: changes made while it was not running are "
                            "unknown, so the next set of %s walks the whole source",
                            ", ".join(f"source '{n}'" for n in watched))
        self._watcher = Watcher(self, os.path.join(self.state_dir, BARRIER_DIR), self.max_watches)
        self._watcher.start()
        self._census = _Census(self)
        self._census.start()
        for src in list(self._sources.values()):
            known = self._journal.marks(src.name).known
            self._begin_source(src, gap if known or replaced else "source was never watched")
        self.flush()
        self._flusher = _Flusher(self)
        self._flusher.start()

    def stop(self) -> None:
        """Stop watching, flush what is pending and record a clean stop. Never raises for the
        journal: what cannot be written is logged (one line), the session stays unclean, and the
        next start walks every source anyway."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        if self._census is not None:
            self._census.stop()
            self._census = None
        self.flush()
        journal, self._journal = self._journal, None
        if journal is not None:
            held = self._held
            if held:
                log.error("%s: %d changes were not recorded at stop; the next start walks every source",
                          self._write_failure, len(held))
            else:
                try:
                    journal.end_session()
                except JournalError as e:
                    log.error("%s: the stop is not recorded; the next start walks every source", e.message)
            journal.close()
        self._watcher = None

    @property
    def healthy(self) -> bool:
        """False once a thread of the tracker died of an unexpected error (it is logged, the
        journal no longer records or checks); a journal that cannot be written for now (a full
        disk) is not unhealthy: its changes are held and status says so (`write_failure`)."""
        return all(t is None or t.healthy for t in (self._flusher, self._census))

    @property
    def write_failure(self) -> str | None:
        """Why the journal cannot be written now (its changes are held in memory), else None."""
        return self._write_failure

    def reload(self, sources: Sequence[SourceLike]) -> None:
        """Apply a new source list: new or changed sources start over with a rescan."""
        with self._watch_lock:
            self._reload(sources)
        self.flush()

    def _reload(self, sources: Sequence[SourceLike]) -> None:
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

    def _begin_source(self, src: SourceLike, reason: str) -> None:
        """Start tracking one source: rescan first, then watch its roots."""
        journal = self._require_journal()
        watcher = self._require_watcher()
        try:
            journal.set_fingerprint(src.name, _fingerprint(src))
        except sqlite3.Error as e:  # only makes the source known; the rescan below is held if need be
            log.warning("unable to write change journal '%s': %s (source '%s')", journal.path, describe(e),
                        src.name)
        with self._state_lock:
            self._unwatched.pop(src.name, None)
            self._not_watched.pop(src.name, None)
        if not src.watch:
            with self._state_lock:
                self._not_watched[src.name] = "not watched (watch = false)"
            return
        self._add(Change(src.name, "source", "", time.time(), reason), False)
        mounts = mount_points()
        for root in src.paths:
            excludes = _Excludes(root, root_excludes(src, root))
            key = (src.name, os.path.abspath(root))
            real = os.path.realpath(root)
            with self._state_lock:
                self._excludes[key] = excludes
                if mounts is not None:
                    self._mounts[key] = (real, frozenset(m for m in mounts if _under(m[0], real)))
            try:
                watcher.watch(src.name, root, excludes)
            except OSError as e:
                why = f"unable to watch '{root}': {e.strerror or e}"
                log.warning("%s (source '%s')", why, src.name)
                with self._state_lock:
                    self._not_watched[src.name] = why
                    self._watch_failed_at.setdefault(src.name, time.time())
                watcher.unwatch(src.name)
                return
        with self._state_lock:
            self._watch_failed_at.pop(src.name, None)
        self._census_of(src.name, None)

    def _end_source(self, name: str) -> None:
        if self._watcher is not None:
            self._watcher.unwatch(name)
        with self._state_lock:
            self._unwatched.pop(name, None)
            self._not_watched.pop(name, None)
            self._links.pop(name, None)
            self._links_full.pop(name, None)
            self._links_held.pop(name, None)
            for key in [k for k in self._excludes if k[0] == name]:
                self._excludes.pop(key, None)
            for key in [k for k in self._mounts if k[0] == name]:
                self._mounts.pop(key, None)

    # -- what inotify does not report: retargeted roots, mounts ------------------------------------
    def check_roots(self, only: str | None = None) -> None:
        """Notice what raises no inotify event: a root that now resolves to another directory (a
        symlinked root retargeted: the source starts over, like a lost root) and a file system
        mounted over or unmounted from a directory below a root (that directory is watched
        afresh and walked by the next set). The flush thread calls this every
        ROOT_CHECK_INTERVAL; prepare and status call it for their source."""
        watcher = self._watcher
        if watcher is None:
            return
        mounts: list[str] | None = None
        self._retry_unwatched(only)
        with self._watch_lock:
            for src in list(self._sources.values()):
                if (only is not None and src.name != only) or not self._is_watched(src.name):
                    continue
                moved = watcher.retargeted(src.name)
                if moved:
                    root, now = moved[0]
                    log.info("source path '%s' now leads to '%s': source '%s' is walked", root, now, src.name)
                    self._end_source(src.name)
                    self._begin_source(src, f"source path '{root}' now leads to '{now}'")
                    continue
                if mounts is None:
                    mounts = mount_points()
                    if mounts is None:
                        return
                self._check_mounts(src, mounts)

    def _check_mounts(self, src: SourceLike, mounts: list[tuple[str, str]]) -> None:
        watcher = self._require_watcher()
        for root, real in watcher.roots(src.name):
            key = (src.name, root)
            now = frozenset(m for m in mounts if _under(m[0], real))
            with self._state_lock:
                before_real, before = self._mounts.get(key, (real, now))
                self._mounts[key] = (real, now)
                excluded = self._excludes.get(key)
            if before_real != real or before == now:
                continue
            added = {p for p, _ in now - before}
            for m in sorted(added | {p for p, _ in before - now}):
                what = "mounted at" if m in added else "unmounted from"
                if m == real:
                    self._end_source(src.name)
                    self._begin_source(src, f"a file system was {what} source path '{root}'")
                    return
                path = root.rstrip("/") + m[len(real.rstrip("/")):]
                if not os.path.isdir(m):  # a file mounted over (or unmounted from) a file: its content
                    if excluded is None or not excluded(path, False):  # changed; every set re-checks it
                        self.changed(src.name, path, True)
                    continue
                if excluded is not None and excluded(path, True):
                    continue
                log.info("a file system was %s '%s' (source '%s'): it is walked", what, path, src.name)
                watcher.rewatch(src.name, path)
                self.rescan(src.name, path, f"a file system was {what} '{shown(path)}'")

    def _file_mounts(self, src: SourceLike) -> set[str]:
        """The source's paths at which a single file (not a directory) is mounted."""
        out: set[str] = set()
        with self._state_lock:
            known = [(root, self._mounts.get((src.name, root))) for root in src.paths]
        for root, state in known:
            if state is None:
                continue
            real, mounts = state
            for m in {p for p, _ in mounts}:
                if m != real and os.path.isfile(m):
                    out.add(root.rstrip("/") + m[len(real.rstrip("/")):])
        return out

    # -- files with several hard links ---------------------------------------------------------------
    def _census_of(self, source: str, path: str | None) -> None:
        if self._census is not None:
            self._census.jobs.put((source, path))

    def census(self, source: str, path: str | None, stopping: Callable[[], bool] = lambda: False) -> None:
        """Find the files with several hard links under `path` (None: every root) of `source`."""
        src = self._sources.get(source)
        if src is None or not self._is_watched(source):
            return
        roots = [os.path.abspath(r) for r in src.paths]
        found: set[str] = set()
        for top in roots if path is None else [path]:
            root = next((r for r in roots if _under(top, r)), None)
            if root is None:
                continue
            with self._state_lock:
                excluded = self._excludes.get((source, root))
            if not self._find_links(top, excluded, found, stopping):
                break
        with self._state_lock:
            if path is not None:
                for p in found:
                    self._note_link_locked(source, p)
                return
            old = set(self._links.get(source, ()))
        # A whole census starts the list over: what it found, plus what events added meanwhile,
        # less what has no other name any more.
        stale = {p for p in old if not _multi_link(p)}
        with self._state_lock:
            keep = (self._links.get(source, set()) - stale) | found
            if len(keep) > MAX_LINKED_FILES:
                self._links[source] = set()
                self._links_full[source] = self._links_full_reason()
            else:
                self._links[source] = keep
                self._links_full.pop(source, None)

    @staticmethod
    def _links_full_reason() -> str:
        return f"more than {MAX_LINKED_FILES} files with several hard links: every set walks the source paths"

    @staticmethod
    def _find_links(top: str, excluded: _Excludes | None, found: set[str], stopping: Callable[[], bool]) -> bool:
        """Add the files with several names under directory `top` to `found`; False once more
        than MAX_LINKED_FILES were found (or when stopping)."""
        stack = [top]
        while stack:
            if stopping():
                return False
            d = stack.pop()
            try:
                it = list(os.scandir(d))
            except OSError:
                continue
            for e in it:
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                    if excluded is not None and excluded(e.path, is_dir):
                        continue
                    if is_dir:
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_nlink > 1:
                        found.add(e.path)
                        if len(found) > MAX_LINKED_FILES:
                            return False
                except OSError:
                    continue
        return True

    def note_links(self, source: str | SourceLike, paths: Iterable[str]) -> None:
        """Files with several names that another walk of the source found (the backstop scan):
        re-checked by every later set, like those the tracker finds itself."""
        name = _name(source)
        src = self._sources.get(name)
        if src is None:
            return
        roots = [os.path.abspath(r) for r in src.paths]
        with self._state_lock:
            for p in paths:
                if any(_under(p, r) for r in roots):
                    self._note_link_locked(name, p)

    def _note_link_locked(self, source: str, path: str) -> None:
        if source in self._links_full:
            return
        links = self._links.setdefault(source, set())
        if path in links:
            return
        if len(links) >= MAX_LINKED_FILES:
            links.clear()
            self._links_full[source] = self._links_full_reason()
            return
        links.add(path)

    # -- WatchSink (inotify thread) ----------------------------------------------------------------
    def changed(self, source: str, path: str, written: bool) -> None:
        # A file an application writes thousands of times between two flushes is reported once
        # per flush: the journal keeps a path's first time in a batch anyway.
        key = (source, path, written)
        with self._batch_lock:
            if key in self._batched:
                return
            self._batched.add(key)
            self._batch.append((Change(source, "path", path, time.time(), WRITTEN if written else ""), written))

    def new_directory(self, source: str, path: str) -> None:
        self._add(Change(source, "tree", path, time.time(), "new directory"), False)
        self._census_of(source, path)

    def unwatched(self, source: str, path: str, reason: str) -> None:
        with self._state_lock:
            self._unwatched.setdefault(source, {})[path] = reason
        self._add(Change(source, "rescan", path, time.time(), unwatched_text(reason, path)), False)

    def rescan(self, source: str, path: str | None, reason: str) -> None:
        kind = "source" if path is None else "rescan"
        self._add(Change(source, kind, path or "", time.time(), reason), False)
        self._census_of(source, path)

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
        """Write the held changes and the batch. On failure (a full disk, ...) nothing is lost:
        the changes are held and retried (while held, every set walks its source whole)."""
        with self._batch_lock:
            batch, self._batch = self._batch, []
            self._batched = set()
        journal = self._journal
        if journal is None:
            return {}
        changes = [c for c, _ in batch]
        changes.extend(self._link_checks(batch))
        changes = self._held + changes
        if not changes:
            return {}
        try:
            touched = journal.record(changes)
        except (sqlite3.Error, OSError) as e:
            self._hold(changes, f"unable to write change journal '{journal.path}': {describe(e, journal.path)}")
            return {}
        if self._held:
            log.warning("change journal '%s' is written again: %d changes held in memory are recorded",
                        journal.path, len(self._held))
            self._held, self._write_failure = [], None
        return touched

    def _hold(self, changes: list[Change], why: str) -> None:
        """Keep `changes` for the next flush; beyond MAX_HELD_CHANGES, one whole-source rescan per
        source stands for them (first seen at the oldest)."""
        if self._write_failure is None:
            log.error("%s: changes are held in memory and written when it can be; until then sets walk "
                      "their sources", why)
        if len(changes) > MAX_HELD_CHANGES:
            oldest: dict[str, float] = {}
            for c in changes:
                oldest[c.source] = min(oldest.get(c.source, c.time), c.time)
            changes = [Change(src, "source", "", t, f"more than {MAX_HELD_CHANGES} changes could not be "
                              "written to the change journal") for src, t in oldest.items()]
        self._write_failure = why
        self._held = changes

    def _held_of(self, name: str) -> list[Change]:
        return [c for c in self._held if c.source == name]

    def _notify(self, touched: dict[str, int]) -> None:
        if self.on_change is None:
            return
        for source in touched:
            try:
                self.on_change(source)
            except Exception:
                log.exception("change callback failed for source '%s'", source)

    def _link_checks(self, batch: list[tuple[Change, bool]]) -> list[Change]:
        """Every changed file with several names is kept for re-checking by every later set (a
        name outside the source can change it unseen); a written one changed its other names
        too: distrust the source."""
        seen: set[tuple[str, str]] = set()
        out: list[Change] = []
        for c, written in batch:
            if c.kind != "path" or (c.source, c.path) in seen:
                continue
            seen.add((c.source, c.path))
            try:
                st = os.lstat(c.path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                with self._state_lock:
                    self._note_link_locked(c.source, c.path)
                if written:
                    why = f"file with {st.st_nlink} hard links changed: '{shown(c.path)}' (other names unknown)"
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
            self.check_roots(name)
            self._rewatch_if_needed(src)
        watched = src is not None and self._is_watched(name)
        barrier_ok = watched and self._watcher is not None and self._watcher.barrier(BARRIER_TIMEOUT)
        if src is not None and src.watch:
            self._rewatch_if_torn(src)  # after the barrier: what the events up to now tore
        if barrier_ok and self._watcher is not None:
            self._watcher.drop_stale(name)  # directories moved out or deleted but pinned: their events are not ours
        if watched and not barrier_ok:
            log.warning("change watcher did not answer in time; source '%s' is walked", name)
        # Read the sequence and the entries with no flush in between: nothing recorded before
        # the token can be missed (a row moved past the token by a newer event is still read).
        # Changes the journal could not record (held) are in no entry: the set walks the source.
        with self._flush_lock:
            touched = self._flush_locked()
            with self._state_lock:
                unwatched = frozenset(self._unwatched.get(name, {}))
            token = ChangeToken(name, level, journal.seq, time.time(), unwatched)
            usable = level != "full" and watched and barrier_ok and base_set_id is not None and not self._held
            entries = None
            try:
                marks = journal.marks(name)
                since = marks.set_seq if base_set_id == marks.set_id else \
                    marks.full_seq if base_set_id == marks.full_id else None
                entries = journal.entries_after(name, since) if usable and since is not None else None
                self._read_failure = None
            except sqlite3.Error as e:
                self._note_read_failure(journal, e)
        self._notify(touched)
        with self._state_lock:
            links = sorted(self._links.get(name, ()))
        token = dataclasses.replace(token, linked=tuple((p, _link_sig(p)) for p in links))
        if entries is None or src is None:
            return None, token
        return self._hint(src, entries), token

    def changed_after(self, source: str | SourceLike, token: ChangeToken) -> list[str] | None:
        """The paths of `source` the journal saw written, created, removed or moved after `token`
        (the events read up to now: a barrier first), oldest first; None when it cannot tell (the
        source is not watched, the watcher did not answer, changes could not be recorded, or the
        journal cannot be read). Rescans the journal asks for itself are no change and not listed."""
        name = _name(source)
        journal = self._require_journal()
        if token.source != name or not self._is_watched(name) or self._watcher is None \
                or not self._watcher.barrier(BARRIER_TIMEOUT):
            return None
        with self._flush_lock:
            touched = self._flush_locked()
            entries = None
            if not self._held:
                try:
                    entries = journal.entries_after(name, token.seq)
                except sqlite3.Error as e:
                    self._note_read_failure(journal, e)
        self._notify(touched)
        if entries is None:
            return None
        return [e.path for e in entries if e.kind in ("path", "tree")]

    def _rewatch_if_torn(self, src: SourceLike) -> None:
        """A source that lost watches in renames the watcher read late is watched anew, and the
        set walks it: not every directory that lost its watch so can be told (watcher.py)."""
        if self._watcher is None or not self._watcher.take_torn(src.name):
            return
        with self._watch_lock:
            if not all(os.path.isdir(p) for p in src.paths):
                return
            self._end_source(src.name)
            self._begin_source(src, "directories lost their watch in renames read late: watched anew")

    def _retry_unwatched(self, only: str | None) -> None:
        """Try again, every WATCH_RETRY seconds, to watch a source whose watch failed (a watch
        limit reached, a root missing at start): not only when its next set is prepared, which
        for a source taken by RPO alone never comes while nothing counts as pending."""
        now = time.monotonic()
        for src in list(self._sources.values()):
            if (only is not None and src.name != only) or not src.watch:
                continue
            with self._state_lock:
                failed = src.name in self._not_watched
                due = now >= self._watch_retry_at.get(src.name, 0.0)
            if failed and due:
                with self._state_lock:
                    self._watch_retry_at[src.name] = now + WATCH_RETRY
                self._rewatch_if_needed(src)

    def _rewatch_if_needed(self, src: SourceLike) -> None:
        """A source whose watch failed or whose root vanished is watched again when possible."""
        with self._watch_lock:
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
        written: set[str] = set()
        dirs: set[str] = set()
        for e in entries:
            if e.kind == "source":
                return None
            if e.kind == "path":
                paths.add(e.path)
                if e.reason == WRITTEN:
                    written.add(e.path)
            else:
                dirs.add(e.path)
        with self._state_lock:
            dirs.update(self._unwatched.get(src.name, {}))
            links = set(self._links.get(src.name, ()))
            if src.name in self._links_full:
                dirs.update(roots)
        # Files with several names: one outside the source may have changed them unseen; the
        # walker stats each and reads it if its stat data moved. Those no longer linked go.
        paths |= links
        # Files that are mount points (a file bind-mounted over one of the source, as containers
        # do with resolv.conf): their dentry lies outside the watched tree, so writes to them raise
        # no event here. Every set re-checks them the same way.
        paths |= self._file_mounts(src)
        gone = {p for p in links if not _multi_link(p)}
        if gone:
            with self._state_lock:
                self._links.get(src.name, set()).difference_update(gone)
        aux = unwatched_aux(src)  # no events come from them: walked (a directory) or stat'ed (a file) each time
        dirs.update(a for a in aux if os.path.isdir(a))
        paths.update(a for a in aux if not os.path.isdir(a))
        roots += aux
        rescan = {d for d in _minimal_dirs(dirs) if any(_under(d, r) for r in roots)}
        keep = {p for p in paths if any(_under(p, r) for r in roots) and not has_ancestor_in(p, rescan)}
        return ChangeHint(paths=frozenset(keep), rescan=frozenset(rescan), written=frozenset(written & keep))

    def committed(self, source: str | SourceLike, level: str, set_id: str, token: ChangeToken) -> None:
        """Record that set `set_id` (taken at `level`) covering `token` is committed."""
        name = _name(source)
        check_level(level)
        if token.source != name:
            raise ValueError(f"change token of source '{token.source}' used for source '{name}'")
        journal = self._require_journal()
        try:
            journal.commit(name, level, set_id, token.seq, prepared_at=token.prepared_at)
        except sqlite3.Error as e:
            # The journal still names the previous set: the next set (based on this one) walks.
            log.error("unable to write change journal '%s': %s: set %s of source '%s' is not recorded in "
                      "it; the next set walks the source", journal.path, describe(e), set_id[:12], name)
            return
        with self._state_lock:
            self._links_held[name] = dict(token.linked)
        # The set walked every unwatched directory of its token: one that is gone or has a
        # watch by now is no longer a gap.
        for path in token.unwatched:
            if not _is_dir(path) or (self._watcher is not None and self._watcher.is_watched(name, path)):
                with self._state_lock:
                    self._unwatched.get(name, {}).pop(path, None)

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
        self._census_of(name, None if path is None or os.path.abspath(path) in roots else os.path.abspath(path))
        self.flush()

    def oldest_unprotected(self, source: str | SourceLike) -> float | None:
        """Epoch time of the oldest change not yet in a committed set (None if none or not watched)."""
        name = _name(source)
        if not self._is_watched(name):
            return self._unwatched_since(name)
        self.flush()
        oldest = self._pending(name).oldest
        held = [c.time for c in self._held_of(name)]
        unread = [self._read_failure[1]] if self._read_failure is not None else []
        return min([t for t in [oldest, *held, *unread, *self._linked_changes(name)] if t is not None], default=None)

    def _unwatched_since(self, name: str) -> float | None:
        """For a source meant to be watched whose watch failed: no change is seen, so whatever
        changed since its newest set may be unprotected (its time; the failure's, before any
        set), and an RPO set (a walk) is due once the RPO has passed. None for watch = false."""
        with self._state_lock:
            since = self._watch_failed_at.get(name)
        if since is None:
            return None
        try:
            newest = self._journal.marks(name).set_time if self._journal is not None else None
        except (sqlite3.Error, JournalError):
            newest = None
        return max(newest, since) if newest is not None else since

    def _pending(self, name: str) -> Pending:
        """The journal's pending summary of `name` (none, with the failure noted, if unreadable)."""
        journal = self._require_journal()
        try:
            pending = journal.pending(name)
        except sqlite3.Error as e:
            self._note_read_failure(journal, e)
            return Pending(0, None, ())
        self._read_failure = None
        return pending

    def _note_read_failure(self, journal: Journal, exc: sqlite3.Error) -> None:
        why = f"unable to read change journal '{journal.path}': {describe(exc)}"
        if self._read_failure is None or self._read_failure[0] != why:
            log.error("%s: sets walk their sources until it can be read", why)
            self._read_failure = (why, self._read_failure[1] if self._read_failure else time.time())

    def _linked_changes(self, name: str) -> list[float]:
        """The ctime of every kept multi-link file whose stat moved since the last committed set
        saw it (or that no committed set saw yet): a change through a name no event reports."""
        with self._state_lock:
            links = list(self._links.get(name, ()))
            held = dict(self._links_held.get(name, {}))
        out = []
        for p in links:
            sig = _link_sig(p)
            if p not in held or sig != held[p]:
                out.append(sig[3] / 1e9 if sig is not None else time.time())
        return out

    def status(self, source: str | SourceLike) -> JournalStatus:
        """The journal's view of `source`, for `cairn status`."""
        name = _name(source)
        self.check_roots(name)
        self.flush()
        pending = self._pending(name)
        held = self._held_of(name) if self._is_watched(name) else []
        reasons = _Reasons()
        for failure in (self._write_failure, self._read_failure[0] if self._read_failure else None):
            if failure is not None and self._is_watched(name):
                reasons.add(f"{failure}: sets walk the source until it can be")
        with self._state_lock:
            if name in self._not_watched:
                reasons.add(self._not_watched[name])
            sticky = dict(self._unwatched.get(name, {}))
            links_full = self._links_full.get(name)
            linked = len(self._links.get(name, ()))
        if self._watcher is not None:
            for r in self._watcher.lost(name):
                reasons.add(f"watched root '{r}' is gone")
        for e in pending.trust:
            not_watched = f": '{e.path}' is not watched"
            if e.kind == "source":
                reasons.add(f"{e.reason} (whole source)")
            elif e.reason.endswith(not_watched):
                reasons.add_directory(e.reason[:-len(not_watched)], e.path, unwatched=True)
            elif e.path in e.reason:
                reasons.add(e.reason)
            else:
                reasons.add_directory(e.reason, e.path, unwatched=False)
        for path, cause in sticky.items():
            reasons.add_directory(cause, path, unwatched=True)
        if links_full:
            reasons.add(links_full)
        linked_changes = self._linked_changes(name) if self._is_watched(name) else []
        oldest = pending.oldest if self._is_watched(name) else None
        oldest = min([t for t in [oldest, *(c.time for c in held), *linked_changes] if t is not None], default=None)
        return JournalStatus(
            state="rescan" if reasons.all else "complete",
            reasons=tuple(reasons.all),
            oldest_unprotected_age=max(0.0, time.time() - oldest) if oldest is not None else None,
            pending_paths=pending.count + len(held) + len(linked_changes),
            watches=self._watcher.watches(name) if self._watcher is not None else 0,
            linked_files=linked,
            last_set=self._last_set(name),
            summary=tuple(reasons.summary()),
        )

    def _last_set(self, name: str) -> str | None:
        try:
            return self._journal.marks(name).set_id if self._journal is not None else None
        except (sqlite3.Error, JournalError):
            return None

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
