"""The backstop scan: proof that the change journal missed nothing, without writing a set.

Every `daemon.backstop_interval` (and on demand, `Backstop.run_now`) each watched source is
walked and compared by metadata with the tree of its latest set: entries present or absent,
kind, size, mtime_ns, ctime_ns, inode, mode, owner and symlink target (`compare_tree`, a dry compare:
it reads directories and stat data, never file content, and stores nothing; a ctime that moved
on a file with several names is not a difference: a link count change, or a rename of another
name, touches every name's ctime and inotify reports it for one name only). A difference is
expected when the journal holds a pending change that covers it (the path itself, or a
directory pending a walk above it); every other difference is a change the journal missed.
Those are counted in `cairn_journal_backstop_found_total` and their directories are marked
for rescan, so the next set walks them and picks the changes up. Excludes apply as in the walk
(`SourceConfig.path_excludes`: patterns anchored at a source path apply under that path only).
The files with several hard links the walk meets are handed to the tracker (`note_links`):
another name, perhaps outside the source, can change them without an event, so every later
set re-checks them.

What always holds: a source is only judged while its journal is trusted against its latest
set, and the journal is read after the walk (everything the walk saw changed is then either
journaled or truly missed); a source whose latest set changes during the scan, or which has a
backup running, is skipped for this round, not judged.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cairn.daemon.changes.tracker import has_ancestor_in
from cairn.daemon.runtime.threads import ServiceThread
from cairn.store.model import BackupSet, ChangeHint
from cairn.store.snapshots.backup import kind_of
from cairn.store.snapshots.excludes import Excluder

log = logging.getLogger(__name__)

MAX_SLEEP = 60.0


@dataclass(frozen=True)
class Difference:
    """An entry of the real tree that differs from the set's tree: `what` says how."""

    path: str  # absolute
    what: str  # added, deleted, kind, size, mtime, ctime, inode, target

    def __str__(self) -> str:
        return f"'{self.path}' ({self.what})"


def compare_tree(repo: Any, s: BackupSet, paths: Sequence[str], excludes: Sequence[str] = (),
                 one_file_system: bool = False,
                 root_excludes: Sequence[tuple[str, Sequence[str]]] = (),
                 linked: set[str] | None = None) -> list[Difference]:
    """Every difference between the directories `paths` and the tree of set `s`, by metadata.

    `excludes` apply under every path, `root_excludes` ((path, patterns), ...) under that path
    only, after them (as the walker matches them: `BackupRequest.root_excludes`). The regular
    files with several names met on the way are added to `linked` when it is given."""
    root = bytes.fromhex(s.tree)
    out: list[Difference] = []
    if len(paths) == 1:
        roots = [(paths[0], root)]
    else:
        top = {e.name: e for e in repo.load_tree(root)}
        roots = []
        for p in paths:
            e = top.get(os.fsencode(os.path.basename(os.path.normpath(p))))
            roots.append((p, e.subtree if e is not None and e.kind == "dir" else None))
    for path, tree in roots:
        bpath = os.path.normpath(os.fsencode(os.path.abspath(path)))
        try:
            dev = os.stat(bpath).st_dev
        except OSError:
            out.append(Difference(os.fsdecode(bpath), "deleted"))
            continue
        if tree is None:
            out.append(Difference(os.fsdecode(bpath), "added"))
            continue
        own = next((pats for p, pats in root_excludes if os.path.normpath(p) == os.path.normpath(path)), ())
        excluder = Excluder(tuple(excludes) + tuple(own))
        _Compare(repo, excluder, one_file_system, dev, out, linked).dir(bpath, b"", tree)
    return out


class _Compare:
    def __init__(self, repo: Any, excluder: Excluder, one_fs: bool, dev: int, out: list[Difference],
                 linked: set[str] | None = None) -> None:
        self.repo = repo
        self.excluder = excluder
        self.one_fs = one_fs
        self.dev = dev
        self.out = out
        self.linked = linked

    def dir(self, path: bytes, rel: bytes, tree: bytes) -> None:
        base = {e.name: e for e in self.repo.load_tree(tree)} if tree else {}
        try:
            scan = list(os.scandir(path))
        except OSError as e:
            log.debug("backstop: unable to list '%s': %s", os.fsdecode(path), e.strerror)
            return
        for d in scan:
            name = os.fsencode(d.name)
            child = path + b"/" + name
            crel = rel + b"/" + name if rel else name
            try:
                st = d.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished since listed: a change of the parent, seen there
            kind = kind_of(st.st_mode)
            if kind is None or self.excluder.excluded(crel, kind == "dir"):
                continue
            if self.linked is not None and kind == "file" and st.st_nlink > 1:
                self.linked.add(os.fsdecode(child))
            old = base.pop(name, None)
            if old is None:
                self.out.append(Difference(os.fsdecode(child), "added"))
                continue
            what = _what_differs(old, st, kind, child)
            if what:
                self.out.append(Difference(os.fsdecode(child), what))
            if kind == "dir" and old.kind == "dir" and not (self.one_fs and st.st_dev != self.dev):
                self.dir(child, crel, old.subtree)
        for name in base:
            self.out.append(Difference(os.fsdecode(path + b"/" + name), "deleted"))


def _what_differs(old: Any, st: os.stat_result, kind: str, path: bytes) -> str:
    if old.kind != kind:
        return "kind"
    if kind == "file" and old.size != st.st_size:
        return "size"
    if old.mtime_ns != st.st_mtime_ns:
        return "mtime"
    if old.ctime_ns != st.st_ctime_ns and not _link_count_only(old, st, kind):
        return "ctime"
    if old.ino != st.st_ino:
        return "inode"
    if kind == "symlink":
        try:
            if os.readlink(path) != old.target:
                return "target"
        except OSError:
            return ""
    if stat.S_IMODE(st.st_mode) != stat.S_IMODE(old.mode):
        return "mode"
    if (old.uid, old.gid) != (st.st_uid, st.st_gid):
        return "owner"
    return ""


def _link_count_only(old: Any, st: os.stat_result, kind: str) -> bool:
    """True for a file with several names whose ctime moved (its link count changed, or another
    name was renamed): inotify reports that only for the name used, and nothing a restore shows
    changed (content, size, mtime, mode and owner are compared on their own)."""
    return kind == "file" and (bool(old.hardlink) or st.st_nlink > 1)


def unexplained(diffs: Iterable[Difference], hint: ChangeHint) -> list[Difference]:
    """The differences no pending journal entry covers (the path, or a rescan directory above it)."""
    return [d for d in diffs if d.path not in hint.paths and not has_ancestor_in(d.path, hint.rescan)]


def rescan_dirs(missed: Iterable[Difference], roots: Sequence[str]) -> list[str]:
    """The directories to walk again: the parent of every missed entry (its listing holds it)."""
    absroots = [os.path.abspath(r) for r in roots]
    dirs = set()
    for d in missed:
        parent = d.path if d.path in absroots else os.path.dirname(d.path)
        dirs.add(parent)
    return sorted(d for d in dirs if not has_ancestor_in(os.path.dirname(d), dirs - {d}))


class Backstop(ServiceThread):
    """Runs the backstop scan of every watched source every `interval()` seconds."""

    def __init__(self, repo: Any, tracker: Any, sources: Callable[[], Sequence[Any]],
                 interval: Callable[[], float], running: Callable[[], set[str]], metrics: Any = None,
                 host: Callable[[], str] | None = None) -> None:
        super().__init__("backstop")
        self.repo = repo
        self._host = host  # the host whose sets are compared (hosts sharing a repository share source names)
        self.tracker = tracker
        self._sources = sources
        self._interval = interval
        self._running = running
        self.metrics = metrics
        self._lock = threading.Lock()
        self.last_run: float | None = None
        self.last_found: dict[str, list[Difference]] = {}

    def run_safe(self) -> None:
        start = time.monotonic()
        while not self.stopping:
            left = start + self._interval() - time.monotonic()
            if left > 0:
                if self.wait(min(left, MAX_SLEEP)):
                    return
                continue
            try:
                self.run_now()
            except Exception:
                log.exception("backstop scan failed")
            start = time.monotonic()

    def run_now(self) -> dict[str, list[Difference]]:
        """Scan every watched source now; return {source: differences the journal missed}."""
        with self._lock:
            found: dict[str, list[Difference]] = {}
            for src in self._sources():
                if self.stopping:
                    break
                missed = self.scan_source(src)
                if missed is not None:
                    found[src.name] = missed
            self.last_run = time.time()
            self.last_found = found
            return found

    def scan_source(self, src: Any) -> list[Difference] | None:
        """The missed changes of one source (None: not judged this round), marked for rescan."""
        if not src.watch or src.name in self._running():
            return None
        base = self._latest(src.name)
        if base is None:
            return None
        common, anchored = src.path_excludes()
        linked: set[str] = set()
        diffs = compare_tree(self.repo, base, src.paths, common, src.one_file_system, anchored, linked)
        note_links = getattr(self.tracker, "note_links", None)
        if note_links is not None:
            note_links(src.name, linked)
        latest = self._latest(src.name)
        if src.name in self._running() or latest is None or latest.id != base.id:
            return None
        hint, _token = self.tracker.prepare(src.name, "incremental", base.id, base.level)
        if hint is None:
            return None  # the journal is not trusted anyway: the next set walks
        missed = unexplained(diffs, hint)
        if missed:
            self._report(src, missed)
        else:
            log.info("backstop scan of source '%s': the journal missed nothing", src.name)
        return missed

    def _latest(self, name: str) -> BackupSet | None:
        sets = self.repo.list_sets(name)
        if self._host is not None:
            host = self._host()
            sets = [s for s in sets if s.hostname == host]
        return sets[-1] if sets else None

    def _report(self, src: Any, missed: list[Difference]) -> None:
        sample = ", ".join(str(d) for d in missed[:3])
        log.warning("backstop scan of source '%s' found %d changes the journal missed: %s",
                    src.name, len(missed), sample, extra={"source": src.name})
        if self.metrics is not None:
            self.metrics.record_backstop_found(src.name, len(missed))
        reason = f"backstop scan found {len(missed)} changes the journal missed, e.g. {missed[0]}"
        for d in rescan_dirs(missed, src.paths):
            self.tracker.mark_rescan(src.name, d, reason)
