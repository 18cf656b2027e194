"""The inotify watcher: turns kernel events under the watched roots into journal facts.

This is the only module that imports watchdog. It uses watchdog's inotify machinery for what
it does well (one inotify descriptor read by one thread, recursive watches that follow
directory moves, rebuilding the watches after a queue overflow) and taps the raw event stream
where watchdog hands it to each watch group, in kernel order, on the descriptor's thread.
watchdog's own event objects are never built: the journal needs paths, not event classes.

What it reports, through a `WatchSink`, for a root watched on behalf of a source:
- `changed(source, path, written)`: `path` (absolute) may differ from what the last set saw.
  `written` is true when the entry itself was created, written or had its metadata changed
  (so the receiver can look at it, e.g. for extra hard links), false when only its name
  appeared or vanished (delete, move) or it is the parent directory of such a name.
- `new_directory(source, path)`: a directory was created or moved in; what is in it may
  predate its watch (mkdir -p, mv from elsewhere), so all of it must be walked.
- `unwatched(source, path, reason)`: no watch could be added for directory `path`, which
  exists; nothing under it is observed for as long as the watcher runs. A directory that is
  gone before its watch could be added is not reported: it needs none (its parent's events
  report its removal or move).
- `rescan(source, path, reason)`: events under directory `path` were lost (`path` None: the
  whole source).

What always holds:
- Events are reported in kernel order, on the inotify thread, before `barrier()` returns for
  any barrier requested after them: `barrier()` touches a file in a private directory watched
  through the same descriptor and waits until that event has been handled.
- Whatever the watcher could not observe is reported as a rescan with a reason: a queue
  overflow (every source, whole; the kernel's queue, or the backlog of events read but not yet
  handled growing past MAX_BACKLOG bytes, whose excess is dropped, so memory stays bounded), a
  directory whose watch could not be added (that subtree; the `max_watches` cap counts watches
  across all roots), a watched root deleted or moved (whole source), an event whose watch it
  cannot place (whole source). A root whose watch is gone is `lost()` until it is watched again.
- Excluded paths (the root's `excluded(abs_path, is_dir)` predicate) are neither reported nor
  watched.
- A root's real path (symlinks resolved) is fixed when it is watched; `retargeted()` says
  which roots now resolve elsewhere (inotify raises no event for that), and `rewatch()` watches
  a subtree afresh (a file system mounted over or unmounted from it raises none either): the
  tracker polls for both.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any, Protocol

from watchdog.events import FileSystemEventHandler
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import (
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)

log = logging.getLogger(__name__)

# What the journal needs: names appearing, vanishing and moving, content and metadata writes,
# and the loss of a watched directory. No open/close-nowrite/access noise (a backup reading
# the tree would otherwise flood the queue with its own reads).
EVENT_MASK = Mask(
    InotifyConstants.IN_MODIFY
    | InotifyConstants.IN_ATTRIB
    | InotifyConstants.IN_CLOSE_WRITE
    | InotifyConstants.IN_MOVED_FROM
    | InotifyConstants.IN_MOVED_TO
    | InotifyConstants.IN_CREATE
    | InotifyConstants.IN_DELETE
    | InotifyConstants.IN_DELETE_SELF
    | InotifyConstants.IN_MOVE_SELF
    | InotifyConstants.IN_DONT_FOLLOW
)
_WRITTEN = InotifyConstants.IN_MODIFY | InotifyConstants.IN_ATTRIB | InotifyConstants.IN_CLOSE_WRITE
# The events watchdog's own bookkeeping acts on: moves (it pairs IN_MOVED_FROM with IN_MOVED_TO
# to move watches), a directory's creation or deletion (it adds or drops watches), a watched
# directory's own fate. Every other event (a file written, made or removed: nearly all of an
# application's) is handled above and not handed to watchdog, whose move queue it would only
# lengthen (watchdog scans that queue on every move and a thread drains it) at a writer's rate.
_WATCHDOG_NEEDS = (InotifyConstants.IN_MOVED_FROM | InotifyConstants.IN_MOVED_TO | InotifyConstants.IN_ISDIR
                   | InotifyConstants.IN_DELETE_SELF | InotifyConstants.IN_MOVE_SELF | InotifyConstants.IN_UNMOUNT
                   | InotifyConstants.IN_IGNORED | InotifyConstants.IN_Q_OVERFLOW)
_NAMED = InotifyConstants.IN_DELETE | InotifyConstants.IN_MOVED_FROM

Excluded = Callable[[str, bool], bool]

# Events read from the descriptor but not yet handled, in bytes of raw inotify records (about 40
# bytes an event): about 200,000 events, a few seconds of handling. watchdog's reader thread
# queues what it reads without bound; a writer faster than the handling would grow the daemon
# without limit. Past this, what is read is dropped and reported as a queue overflow, as the
# kernel does past max_queued_events.
MAX_BACKLOG = 8 << 20
_OVERFLOW_RECORD = struct.pack("iIII", -1, InotifyConstants.IN_Q_OVERFLOW, 0, 0)


class WatchSink(Protocol):
    """Receives what the watcher learns; called on the inotify thread, so it must be quick."""

    def changed(self, source: str, path: str, written: bool) -> None: ...

    def new_directory(self, source: str, path: str) -> None: ...

    def unwatched(self, source: str, path: str, reason: str) -> None: ...

    def rescan(self, source: str, path: str | None, reason: str) -> None: ...


class WatchLimitError(OSError):
    """The configured cap on watches (or the kernel's limit) does not allow one more watch."""


class _Budget:
    """Counts watches across all groups against an optional cap."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.used = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.cap is not None and self.used >= self.cap:
                return False
            self.used += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.used = max(0, self.used - 1)


@dataclass
class _Root:
    """One watched root directory of a source, as the watcher keeps it."""

    source: str
    root: str            # the path reported (as configured, absolute)
    real: str            # the path watched (symlinks resolved)
    excluded: Excluded
    watch: ObservedWatch | None = None
    lost: bool = False
    groups: list[_Group] = field(default_factory=list)

    def report_path(self, real_path: bytes) -> str:
        """Map a watched (real) path back under the configured root."""
        text = os.fsdecode(real_path)
        if self.real == self.root:
            return text
        return self.root + text[len(self.real):]


class _Group(InotifyWatchGroup):
    """A watchdog watch group that reports raw events to the Watcher and counts its watches."""

    owner: Watcher
    root_info: _Root | None

    def bind(self, owner: Watcher, root_info: _Root | None) -> None:
        self.owner = owner
        self.root_info = root_info

    # -- watch accounting ------------------------------------------------------------------
    def _add_callback(self, path: bytes) -> None:
        info = getattr(self, "root_info", None)
        owner: Watcher | None = getattr(self, "owner", None)
        is_root = path == self.path
        if owner is None or info is None:  # the barrier directory: not a source, not counted
            return super()._add_callback(path)
        if not is_root and info.excluded(info.report_path(path), True):
            return None
        if self._watched_inode(path):
            return None  # already watched (mkdir -p reports each level again): nothing to add
        if not owner.budget.acquire():
            if is_root:
                raise WatchLimitError(errno.ENOSPC, f"watch limit of {owner.budget.cap} reached")
            if _is_dir(path):
                owner.unwatched(info, path, f"watch limit of {owner.budget.cap} reached")
            return None
        self.__dict__.pop("_displaced", None)
        # The directory's inode, also from before the add: a directory renamed the instant its watch
        # was added (a loaded machine) is gone from `path` when it is looked at afterwards, and a
        # watch whose inode is unknown cannot be recognised when a walk meets it at its new path.
        inode_before = _inode(path)
        try:
            super()._add_callback(path)
        except OSError:
            owner.budget.release()
            raise
        displaced = self.__dict__.pop("_displaced", None)  # by this add's node (_insert_node)
        wd = self._wd_of(path)
        if wd is None or wd < 0:
            owner.budget.release()
            # A directory that is gone (or is no directory any more) needs no watch: its
            # parent's events report its removal. Only one that exists unwatched is a gap.
            if _is_dir(path):
                owner.unwatched(info, path, "could not add a watch")
            return None
        if displaced is not None and wd not in self._inodes():
            # inotify answered with a watch another node holds, whose directory was never known (not
            # at its path when its watch was added, before nor after). The answer says which it is:
            # the directory at `path`. Left unknown, the two nodes shared the watch, and dropping
            # the other one (drop_stale, once its path was gone) dropped this one's watch unseen.
            inode = _inode(path)
            if inode is None:  # gone again: which directory the watch follows cannot be told
                owner.budget.release()  # counted when it was first watched
                owner.unwatched(info, path, "renamed while its events were still queued")
                owner.torn(info)
                return None
            self._inodes()[wd] = inode
        if wd in self._inodes() and displaced is not None and not self._reachable(displaced) \
                and self._same_inode(path, wd):
            # The same directory again, whose node watchdog had detached: a deletion read late at
            # this path (a directory of this name made, removed and made again before the events
            # were read: an application's temporary directories) was taken for this one's. It
            # is placed here again; no watch was lost, nothing was renamed.
            owner.budget.release()  # counted when it was first watched
            return None
        if wd in self._inodes():
            # inotify answered with a watch this group holds under another path: the directory
            # was renamed and its move event is still queued (`mkdir Z; mv A Z/B` read late: the
            # walk of Z reached B). The kernel's watch already follows it: its node (with those
            # below it) is moved here now, as handling the move would, and the move, read later,
            # finds it in place (_move_watches). Its new path is walked by the next set, as are
            # its old path's and both parents' listings; no watch is dropped, nothing is torn.
            owner.budget.release()  # counted when it was first watched
            old_path = self._path_of(displaced) if displaced is not None else None
            if displaced is not None and old_path is not None and self._same_inode(path, wd) \
                    and self._relocate(displaced, path, wd):
                owner.renamed_early(info, old_path, path)
                return None
            # not a plain rename of a node this tree holds: handling the move later may drop the
            # watch (and those below it) for good, and not every such loss shows
            owner.unwatched(info, path, "renamed while its events were still queued")
            owner.torn(info)
            return None
        inode = _inode(path)
        if inode is None:
            # Renamed (or removed) right after its watch was added, before this look: the watch is
            # on the directory that was here just before (the kernel answered the add with a watch,
            # so one was there). Without its inode, a walk meeting it at its new path (the same watch)
            # left a second node on that watch at the old path, and the next barrier's tidying
            # (drop_stale) dropped the watch with that node, silently, while the journal said
            # 'complete'.
            inode = inode_before
        if inode is not None:
            self._inodes()[wd] = inode
        return None

    def _insert_node(self, path: bytes, wd: WatchDescriptor):  # type: ignore[no-untyped-def]
        """watchdog's, noting the node that held `wd` before, if another (for _add_callback)."""
        before = self._nodes_by_wd.get(wd)
        node = super()._insert_node(path, wd)
        self.__dict__["_displaced"] = before if before is not None and before is not node else None
        return node

    def _path_of(self, node) -> bytes | None:  # type: ignore[no-untyped-def]
        """The path of `node` in the tree; None when it is detached (or the root)."""
        if node is self._root or not self._reachable(node):
            return None
        return self._reconstruct_path_iterative(node)

    def _relocate(self, node, path: bytes, wd: WatchDescriptor) -> bool:  # type: ignore[no-untyped-def]
        """Put `node` (with the nodes below it) in place of the fresh node watchdog just made for
        `wd` at `path`: the move of that directory to `path`, applied before its event is read.
        False (nothing changed) when the fresh node is not a plain leaf or `path` lies below
        `node` in the tree."""
        fresh = self._nodes_by_wd.get(wd)
        if fresh is None or fresh is node or fresh.children or fresh.parent is None:
            return False
        parent = fresh.parent
        up = parent
        while up is not None:
            if up is node:
                return False
            up = up.parent
        if parent.children.get(fresh.name) is not fresh:
            return False
        old_parent = node.parent
        if old_parent is not None and old_parent.children.get(node.name) is node:
            old_parent.children.pop(node.name, None)
        fresh.parent = None
        node.name = fresh.name
        node.parent = parent
        parent.children[fresh.name] = node
        self._nodes_by_wd[wd] = node
        return True

    def _move_watches(self, move_src_path: bytes, move_dst_path: bytes) -> bool:
        """watchdog's, but a move whose directory is already in place (moved here when a walk met
        it at its new path, see _add_callback) is done: watchdog would take the node found at the
        destination for another directory moved over it and drop its watches."""
        if self._find_node_by_path(move_src_path) is None:
            node = self._find_node_by_path(move_dst_path)
            if node is not None and node is not self._root and self._nodes_by_wd.get(node.wd) is node \
                    and node.wd in self._inodes() and self._same_inode(move_dst_path, node.wd):
                return True
        return super()._move_watches(move_src_path, move_dst_path)

    def _reachable(self, node) -> bool:  # type: ignore[no-untyped-def]
        """Whether `node` is in the tree: each node on the way up is its parent's child."""
        while node is not self._root:
            parent = node.parent
            if parent is None or parent.children.get(node.name) is not node:
                return False
            node = parent
        return True

    def _same_inode(self, path: bytes, wd: WatchDescriptor) -> bool:
        try:
            return os.stat(path).st_ino == self._inodes()[wd]
        except OSError:
            return False

    def _wd_of(self, path: bytes) -> WatchDescriptor | None:
        """The watch this group holds for `path` (a walk down its tree, not a scan of every watch)."""
        node = self._find_node_by_path(path)
        if node is None or node.wd < 0 or self._nodes_by_wd.get(node.wd) is not node:
            return None
        return node.wd

    def _inodes(self) -> dict[WatchDescriptor, int]:
        inodes = self.__dict__.get("_inode_of_wd")
        if inodes is None:
            inodes = self.__dict__["_inode_of_wd"] = {}
        return inodes

    def _watched_inode(self, path: bytes) -> bool:
        """True if `path` is watched and still the same directory as when its watch was added."""
        wd = self._wd_of(path)
        if wd is None or wd not in self._inodes():
            return False
        try:
            return os.stat(path).st_ino == self._inodes()[wd]
        except OSError:
            return False

    def _remove_watch_internally(self, wd: WatchDescriptor) -> None:
        super()._remove_watch_internally(wd)
        self._inodes().pop(wd, None)
        if getattr(self, "root_info", None) is not None:
            self.owner.budget.release()

    def _remove_node_and_watches(self, node, path: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
        """watchdog drops the watches of a subtree (moved out, deleted, or tidied after a move it
        read late): any directory of it still there, the same inode at the same path, lost its
        watch while it exists, and is reported unwatched (walked by every set until watched)."""
        watched: list[tuple[bytes, int]] = []
        inodes = self._inodes()
        stack = [(node, path)]
        while stack:
            curr, curr_path = stack.pop()
            if curr.wd in inodes:
                watched.append((curr_path, inodes[curr.wd]))
            stack.extend((child, os.path.join(curr_path, name)) for name, child in curr.children.items())
        removed = super()._remove_node_and_watches(node, path)
        info, owner = getattr(self, "root_info", None), getattr(self, "owner", None)
        if info is None or owner is None or not self.is_active:
            return removed
        for p, inode in watched:
            try:
                st = os.stat(p, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_ino == inode and self._wd_of(p) is None \
                    and not info.excluded(info.report_path(p), True):
                owner.unwatched(info, p, "its watch was dropped while it still exists")
                owner.torn(info)
        return removed

    def rewatch(self, path: bytes) -> None:
        """Drop the watches at and below directory `path` and watch what is there now (a file
        system mounted over it or unmounted from it: the old watches see nothing of it)."""
        with self._lock:
            if not self.is_active:
                return
            node = self._find_node_by_path(path)
            if node is not None and node is not self._root:
                self._remove_node_and_watches(node, path)
            if _is_dir(path):
                self._add_all_callbacks(path)

    def on_queue_overflow(self) -> None:
        """After lost events, watch the directories made meanwhile, without removing a watch
        first. watchdog drops every watch and adds them all again; each removal queues an
        IN_IGNORED event, and with more directories than the kernel's max_queued_events those
        overflow the queue again, and so on for ever: the journal never left rescan and the
        inotify thread rebuilt without end. A watch kept is still good (a watch follows its
        directory); one whose directory left its path is dropped after the next barrier
        (drop_stale), and a directory renamed unseen keeps its watches, moved to its new path when
        the walk meets it there (_add_callback); the rescan the overflow reported covers what was
        lost."""
        with self._lock:
            if not self.is_active or not self.is_recursive:
                return
            log.warning("inotify queue overflow: watching the directories made meanwhile below '%s'",
                        os.fsdecode(self.path))
            try:
                self._add_all_callbacks(self.path)
            except OSError as e:  # the root itself: the source is lost and reported as such
                log.warning("unable to watch '%s' again after an overflow: %s", os.fsdecode(self.path), e)

    def drop_stale(self) -> list[bytes]:
        """Drop the watches of directories that are no longer at their path: moved out of the
        tree, or deleted while a process keeps them (an open file pins the inode, and the kernel
        keeps its watch). watchdog keeps such watches (an unpaired move-out is left as it is),
        so their events would go on naming paths of the source: changes that are not there,
        and RPO sets of an unchanged source. Called after a barrier, when every move within the
        tree has been read (its watches moved with it). Returns the paths dropped."""
        dropped: list[bytes] = []
        with self._lock:
            if not self.is_active or self._root is None:
                return dropped
            inodes = self._inodes()
            stack = [(self._root, self.path)]
            stale = []
            reached = set()
            while stack:
                node, path = stack.pop()
                reached.add(node.wd)
                if node is not self._root and node.wd in inodes and not os.path.lexists(path):
                    # gone from its path (another directory at the path is left to the torn-watch
                    # checks: this one may have moved within the tree unseen, and must stay watched)
                    stale.append((node, path))
                    continue  # its subtree goes with it
                stack.extend((child, os.path.join(path, name)) for name, child in node.children.items())
            for node, path in stale:
                self._remove_node_and_watches(node, path)
                dropped.append(path)
            # directories deleted while pinned: watchdog detached them and waits for IN_IGNORED,
            # which the kernel sends only once the last reference goes
            orphans = [wd for wd in self._nodes_by_wd if wd not in reached and wd >= 0]
            if orphans:
                self._remove_callbacks(orphans)
                dropped += [b"(deleted directory)"] * len(orphans)
        return dropped

    def of_deleted_directory(self, event: InotifyEvent) -> bool:
        """True when `event` (which has no path) is about a directory this group saw deleted:
        watchdog detaches a directory's node when its parent reports the deletion and keeps the
        watch until the kernel sends IN_IGNORED, which it does only once the last reference goes
        (a process holding a file open inside, or its working directory there). Until then the
        kernel reports that directory's own events (writes through the open file, its
        IN_DELETE_SELF): they concern nothing in the tree, and the deletion itself was reported
        through the parent. Placed by the same tree that places every other event."""
        with self._lock:
            node = self._nodes_by_wd.get(event.wd)
            while node is not None and node is not self._root:
                parent = node.parent
                if parent is None:
                    return False
                if parent.children.get(node.name) is not node:
                    return True  # detached by the deletion of this directory (or of one above)
                node = parent
            return False

    def watches_path(self, path: bytes) -> bool:
        """True when directory `path` has a watch of this group."""
        with self._lock:
            node = self._find_node_by_path(path)
            return node is not None and node.wd in self._nodes_by_wd

    def _add_all_callbacks(self, path: bytes) -> None:
        """watchdog's, but never through a symlink below the root: a directory made in the source
        and replaced by a link before its creation was read was watched at its path, through
        the link, with every directory of the tree the link names (their writes then counted as
        the source's, and a large tree used up the watch limit). A link is an entry of its
        directory, whose watch reports it; the source root itself may be a link."""
        if path != self.path and os.path.islink(path):
            return
        super()._add_all_callbacks(path)

    def _recursive_simulate(self, src_path: bytes) -> list[InotifyEvent]:
        # watchdog walks new directories to fake creation events for their content; the
        # journal instead marks a new directory for rescan, so this walk is not needed.
        return []

    def watch_count(self) -> int:
        return len(self._active_callbacks_by_watch)

    # -- raw events --------------------------------------------------------------------------
    def on_event(self, event: InotifyEvent) -> None:
        with self._lock:
            path = self._build_event_source_path(event) if self.is_active else None
            active = self.is_active
        if active:
            try:
                self.owner.raw_event(self, event, path)
            except Exception:  # the inotify thread must survive; the source loses trust instead
                log.exception("change watcher failed to handle an event")
                if self.root_info is not None:
                    self.owner.sink.rescan(self.root_info.source, None, "the watcher failed on an event")
        if event.mask & _WATCHDOG_NEEDS or not active:
            super().on_event(event)
        if active and event.is_moved_to and event.is_directory and self.is_recursive:
            self._watch_moved_tree(event)

    def _watch_moved_tree(self, event: InotifyEvent) -> None:
        """Watch every directory under a directory moved to here that is not watched yet.

        watchdog moves the watches of a tree moved within the source, but a directory inside it
        that could not be watched at its old path (moved in, then its parent renamed before the
        event was read: the old path no longer existed) would stay unwatched for good."""
        with self._lock:
            dst = self._build_event_source_path(event) if self.is_active else None
            if dst is not None and os.path.isdir(dst):
                self._add_all_callbacks(dst)


def _inode(path: bytes) -> int | None:
    """The inode of what `path` names, symlinks followed as the watches' bookkeeping does (None:
    nothing there)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _is_dir(path: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class _Emitter(InotifyEmitter):
    """Runs one watch group; watchdog's event objects are not built (the group reports raw)."""

    def __init__(self, *args, owner: Watcher, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._owner = owner

    def on_thread_start(self) -> None:
        path = os.fsencode(self.watch.path)
        group = _Group.__new__(_Group)
        group.bind(self._owner, self._owner.root_for_watch(self.watch))
        # dataclass __init__ runs __post_init__, which adds the watches: bind first.
        _Group.__init__(group, self._inotify_fd, path, is_recursive=self.watch.is_recursive,
                        event_mask=EVENT_MASK, follow_symlink=False)
        self._inotify = group
        if group.root_info is not None:
            group.root_info.groups.append(group)

    def build_and_queue_event(self, event, *, full_events: bool = False) -> None:  # type: ignore[no-untyped-def]
        return None


class _Backlog:
    """The raw event buffers between watchdog's reader and dispatcher threads (in place of its
    unbounded queue), at most `limit` bytes. A buffer that does not fit is dropped; an overflow
    record takes its place in the stream (one until the dispatcher has taken it), so whatever
    was dropped is covered by the rescan the overflow causes, before any later event is handled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0  # buffers dropped
        self.peak = 0  # most bytes held
        self._queue: SimpleQueue[bytes] = SimpleQueue()
        self._lock = threading.Lock()
        self._bytes = 0
        self._overflow_queued = False

    def put(self, buffer: bytes) -> None:
        if buffer:  # (an empty buffer tells the dispatcher to stop: always queued)
            with self._lock:
                if self._bytes + len(buffer) > self.limit:
                    self.dropped += 1
                    if self._overflow_queued:
                        return
                    self._overflow_queued = True
                    buffer = _OVERFLOW_RECORD
                self._bytes += len(buffer)
                self.peak = max(self.peak, self._bytes)
        self._queue.put(buffer)

    def get(self) -> bytes:
        return self._taken(self._queue.get())

    def get_nowait(self) -> bytes:
        return self._taken(self._queue.get_nowait())

    def _taken(self, buffer: bytes) -> bytes:
        with self._lock:
            self._bytes -= len(buffer)
            if buffer is _OVERFLOW_RECORD:
                self._overflow_queued = False
        return buffer


class _FD(InotifyFD):
    """The inotify descriptor; tells the Watcher about queue overflows, in order."""

    def __init__(self, owner: Watcher) -> None:
        super().__init__()
        self._owner = owner
        if isinstance(getattr(self, "_raw_queue", None), SimpleQueue):
            self._raw_queue = _Backlog(MAX_BACKLOG)  # type: ignore[assignment]
        else:
            log.warning("this watchdog version queues inotify events differently: the backlog of "
                        "events not yet handled is not bounded")

    def _add_callback(self, path: bytes, mask: Mask, callback, id_) -> WatchDescriptor:  # type: ignore[no-untyped-def]
        """watchdog's, without its warning when a group adds a watch it already holds: the kernel
        answers a watch added at a directory's new path with the watch the directory has (a rename
        still queued, met by a walk), which the group then places (_Group._add_callback), and its
        callback is the group itself, the one already registered: nothing is overwritten.
        watchdog warned (a RuntimeWarning in the daemon's log) for every such directory. Another
        callback under the same id is still left to watchdog, and its warning."""
        watch = self._get_or_create_watch(path, mask)
        if watch.callbacks.get(id_, callback) is not callback:
            return super()._add_callback(path, mask, callback, id_)
        watch.callbacks[id_] = callback
        return watch.wd

    def handle_event(self, event: InotifyEvent) -> None:
        if event.is_queue_overflow:
            self._owner.overflowed()
        super().handle_event(event)


class _RootWatch(ObservedWatch):
    """The watch of one source's root. Its source is part of its identity, so two sources over
    one directory get a group each: watchdog would otherwise hand the second source the first
    one's watch (equal by path), whose group reports to the first source only. The kernel's
    watches are shared all the same (one descriptor: a group adds its own callback to a watch
    another group holds, and a watch goes when its last callback does)."""

    def __init__(self, path: str, source: str) -> None:
        super().__init__(path, recursive=True)
        self.source = source

    @property
    def key(self) -> tuple[Any, ...]:  # type: ignore[override]
        return (*super().key, self.source)


class _Observer(BaseObserver):
    def __init__(self, fd: _FD, owner: Watcher) -> None:
        super().__init__(_Emitter, inotify_fd=fd, owner=owner)
        self._fd = fd

    def schedule_root(self, handler: FileSystemEventHandler, watch: _RootWatch) -> _RootWatch:
        """watchdog's `schedule` for a watch made by the caller (a `_RootWatch`, one per source)."""
        with self._lock:
            if watch not in self._emitter_for_watch:
                emitter = self._emitter_class(self.event_queue, watch, timeout=self.timeout, event_filter=None,
                                              **self._emitter_kwargs)
                if self.is_alive():
                    emitter.start()
                self._add_emitter(emitter)
            self._add_handler_for_watch(handler, watch)
            self._watches.add(watch)
        return watch

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._fd.stop()
        self._fd.join()


class Watcher:
    """Watches roots on behalf of sources and reports to a WatchSink (see the module doc)."""

    def __init__(self, sink: WatchSink, barrier_dir: str, max_watches: int | None = None) -> None:
        self.sink = sink
        self.budget = _Budget(max_watches)
        self._barrier_dir = os.path.abspath(barrier_dir)
        self._barrier_watch: ObservedWatch | None = None
        self._barrier_lost = False  # its directory went (removed by hand): to be made and watched again
        self._roots: dict[tuple[str, str], _Root] = {}
        self._torn: set[str] = set()  # sources that lost watches in renames read late (take_torn)
        self._torn_lock = threading.Lock()  # its own: taken under a group's lock, never the other way
        self._by_watch: dict[ObservedWatch, _Root] = {}
        self._lock = threading.RLock()
        self._barrier_lock = threading.Lock()
        self._barrier_waiters: dict[str, threading.Event] = {}
        self._barrier_n = 0
        self._fd: _FD | None = None
        self._observer: _Observer | None = None
        self._handler = FileSystemEventHandler()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the inotify thread and watch the barrier directory."""
        os.makedirs(self._barrier_dir, exist_ok=True)
        for name in os.listdir(self._barrier_dir):
            try:
                os.unlink(os.path.join(self._barrier_dir, name))
            except OSError:
                pass
        self._fd = _FD(self)
        self._fd.start()
        self._observer = _Observer(self._fd, self)
        self._observer.start()
        self._barrier_watch = self._observer.schedule(self._handler, self._barrier_dir, recursive=False)

    def stop(self) -> None:
        """Remove every watch and stop the threads."""
        obs, self._observer = self._observer, None
        if obs is not None:
            obs.stop()
            obs.join()
        with self._lock:
            self._roots.clear()
            self._by_watch.clear()
        self._release_barriers()

    @property
    def running(self) -> bool:
        return self._fd is not None and self._fd.is_alive() and self._observer is not None

    # -- roots ----------------------------------------------------------------------------------
    def watch(self, source: str, root: str, excluded: Excluded) -> None:
        """Watch `root` recursively for `source`. Raises OSError if the root cannot be watched."""
        if self._observer is None:
            raise RuntimeError("watcher is not started")
        root = os.path.abspath(root)
        info = _Root(source=source, root=root, real=os.path.realpath(root), excluded=excluded)
        if not os.path.isdir(info.real):  # the caller names the root: the error only says what is wrong
            what = "not a directory" if os.path.lexists(info.real) else "no such directory"
            raise FileNotFoundError(errno.ENOENT, what, root)
        watch = _RootWatch(info.real, source)
        with self._lock:
            self._roots[(source, root)] = info
            self._by_watch[watch] = info
        try:
            info.watch = self._observer.schedule_root(self._handler, watch)
        except Exception:
            with self._lock:
                self._roots.pop((source, root), None)
                self._by_watch.pop(watch, None)
            raise

    def unwatch(self, source: str) -> None:
        """Stop watching every root of `source`."""
        with self._lock:
            infos = [i for k, i in self._roots.items() if k[0] == source]
            for i in infos:
                self._roots.pop((i.source, i.root), None)
        for info in infos:
            if info.watch is not None and self._observer is not None:
                try:
                    self._observer.unschedule(info.watch)
                except KeyError:
                    pass
                with self._lock:
                    self._by_watch.pop(info.watch, None)

    def root_for_watch(self, watch: ObservedWatch) -> _Root | None:
        with self._lock:
            return self._by_watch.get(watch)

    def watches(self, source: str | None = None) -> int:
        """Watches in use by `source` (all sources if None)."""
        with self._lock:
            infos = [i for i in self._roots.values() if source is None or i.source == source]
        return sum(g.watch_count() for i in infos for g in i.groups)

    def roots(self, source: str) -> list[tuple[str, str]]:
        """(root as configured, real path watched) of every root of `source`."""
        with self._lock:
            return [(i.root, i.real) for i in self._roots.values() if i.source == source]

    def retargeted(self, source: str) -> list[tuple[str, str]]:
        """(root, real path now) of every root of `source` that now resolves to another directory
        than the one watched (a symlinked root retargeted): nothing of the new one is observed."""
        out = []
        for root, real in self.roots(source):
            now = os.path.realpath(root)
            if now != real:
                out.append((root, now))
        return out

    def rewatch(self, source: str, path: str) -> None:
        """Watch directory `path` of `source` afresh (see `_Group.rewatch`)."""
        for info, real in self._placed(source, path):
            for group in list(info.groups):
                group.rewatch(real)

    def drop_stale(self, source: str) -> int:
        """Drop the watches of `source`'s directories that left their path (see _Group.drop_stale)."""
        with self._lock:
            infos = [i for i in self._roots.values() if i.source == source]
        dropped = [p for i in infos for g in list(i.groups) for p in g.drop_stale()]
        for p in dropped:
            log.debug("watches below '%s' dropped: the directory left its path", os.fsdecode(p))
        return len(dropped)

    def is_watched(self, source: str, path: str) -> bool:
        """True when directory `path` of `source` has a watch."""
        return any(g.watches_path(real) for info, real in self._placed(source, path) for g in list(info.groups))

    def _placed(self, source: str, path: str) -> list[tuple[_Root, bytes]]:
        """The roots of `source` that hold `path`, with `path` as watched there."""
        with self._lock:
            infos = [i for i in self._roots.values() if i.source == source]
        out = []
        for i in infos:
            top = i.root.rstrip("/")
            if path == i.root or path.startswith(top + "/"):
                out.append((i, os.fsencode(i.real.rstrip("/") + path[len(top):] or "/")))
        return out

    def lost(self, source: str) -> list[str]:
        """Roots of `source` whose watch is gone (deleted or moved away)."""
        with self._lock:
            return [i.root for i in self._roots.values() if i.source == source and i.lost]

    # -- barrier --------------------------------------------------------------------------------
    def barrier(self, timeout: float = 5.0) -> bool:
        """Wait until every event that happened before this call has been reported."""
        if not self.running:
            return False
        with self._barrier_lock:
            self._barrier_n += 1
            name = f"b{os.getpid()}-{self._barrier_n}"
            done = threading.Event()
            self._barrier_waiters[name] = done
        path = os.path.join(self._barrier_dir, name)
        if self._barrier_lost:
            self._rearm_barrier()
        try:
            try:
                open(path, "wb").close()
            except OSError:  # its directory was removed (by hand): made and watched again, then tried once more
                if not self._rearm_barrier():
                    return False
                try:
                    open(path, "wb").close()
                except OSError as e:
                    log.warning("change watcher barrier '%s' cannot be used: %s", self._barrier_dir, e)
                    return False
            ok = done.wait(timeout)
        finally:
            with self._barrier_lock:
                self._barrier_waiters.pop(name, None)
            try:
                os.unlink(path)
            except OSError:
                pass
        return ok

    def _rearm_barrier(self) -> bool:
        """Make the barrier directory again and watch it (the old watch went with the old one)."""
        obs = self._observer
        if obs is None:
            return False
        try:
            os.makedirs(self._barrier_dir, exist_ok=True)
            with contextlib.suppress(Exception):  # gone with its directory, or never there
                obs.unschedule(self._barrier_watch)
            self._barrier_lost = False
            self._barrier_watch = obs.schedule(self._handler, self._barrier_dir, recursive=False)
        except Exception as e:  # noqa: BLE001 - the barrier fails, the set walks; never the backup
            log.warning("unable to watch the change watcher's barrier '%s' again: %s", self._barrier_dir, e)
            return False
        log.warning("change watcher barrier '%s' was removed: made and watched again", self._barrier_dir)
        return True

    def _release_barriers(self) -> None:
        with self._barrier_lock:
            for ev in self._barrier_waiters.values():
                ev.set()

    # -- called on the inotify thread -----------------------------------------------------------
    def overflowed(self) -> None:
        with self._lock:
            sources = sorted({i.source for i in self._roots.values()})
        for s in sources:
            self.sink.rescan(s, None, "inotify queue overflow: events were lost")
        # Every event before the overflow is either reported or covered by the rescan above,
        # and a barrier event may itself have been dropped: let waiting barriers go.
        self._release_barriers()

    def unwatched(self, info: _Root | None, path: bytes, reason: str) -> None:
        if info is None:
            return
        self.sink.unwatched(info.source, info.report_path(path), reason)

    def renamed_early(self, info: _Root | None, old_path: bytes, new_path: bytes) -> None:
        """A watched directory met at its new path before its move was read (its watches moved
        there): its new path is walked by the next set, its old name and both parents' listings
        are looked at, as the move's own events will report them too."""
        if info is None:
            return
        new, old = info.report_path(new_path), info.report_path(old_path)
        self.sink.new_directory(info.source, new)
        self.sink.changed(info.source, os.path.dirname(new), False)
        if not info.excluded(old, True):
            self.sink.changed(info.source, old, False)
        self.sink.changed(info.source, os.path.dirname(old), False)

    def torn(self, info: _Root | None) -> None:
        """A watch of `info`'s source was lost in a rename read late: where one was, others may be
        (not every such loss shows), so the source is to be watched anew (take_torn)."""
        if info is not None:
            with self._torn_lock:
                self._torn.add(info.source)

    def take_torn(self, source: str) -> bool:
        """Whether `source` lost watches in renames read late since the last call (then cleared)."""
        with self._torn_lock:
            if source in self._torn:
                self._torn.discard(source)
                return True
            return False

    def raw_event(self, group: _Group, event: InotifyEvent, path: bytes | None) -> None:
        info = group.root_info
        if info is None:
            self._barrier_event(event)
            return
        if path is None:
            if group.of_deleted_directory(event):
                return
            self.sink.rescan(info.source, None, f"an event the watcher could not place ({event!r})")
            return
        if event.mask & InotifyConstants.IN_UNMOUNT:
            info.lost = True
            self.sink.rescan(info.source, None, f"file system under '{info.root}' was unmounted")
            return
        if not event.name:
            # An event about a watched directory itself; its parent reports names, so only
            # the root's own fate and metadata matter here.
            if path == group.path:
                self._root_event(info, event)
            elif event.mask & _WRITTEN:
                self.sink.changed(info.source, info.report_path(path), True)
            return
        self._name_event(info, event, info.report_path(path))

    def _root_event(self, info: _Root, event: InotifyEvent) -> None:
        if event.is_delete_self or event.is_move_self:
            info.lost = True
            what = "deleted" if event.is_delete_self else "moved away"
            self.sink.rescan(info.source, None, f"watched root '{info.root}' was {what}")
        elif event.mask & _WRITTEN:
            self.sink.changed(info.source, info.root, True)

    def _name_event(self, info: _Root, event: InotifyEvent, path: str) -> None:
        is_dir = bool(event.mask & InotifyConstants.IN_ISDIR)
        parent = os.path.dirname(path)
        if info.excluded(path, is_dir):
            if event.is_create or event.is_moved_to or event.mask & _NAMED:
                # the name is not stored, but it changed its directory's mtime, which is stored
                self.sink.changed(info.source, parent, False)
            return
        if event.is_create or event.is_moved_to:
            if is_dir:
                # Its content may predate its watch (mkdir -p, mv from elsewhere): walk it.
                self.sink.new_directory(info.source, path)
                self.sink.changed(info.source, parent, False)
            else:
                self.sink.changed(info.source, path, event.is_create)
                self.sink.changed(info.source, parent, False)
        elif event.mask & _NAMED:
            self.sink.changed(info.source, path, False)
            self.sink.changed(info.source, parent, False)
        elif event.mask & _WRITTEN:
            self.sink.changed(info.source, path, True)

    def _barrier_event(self, event: InotifyEvent) -> None:
        if event.is_delete_self or event.is_move_self or event.is_ignored:
            self._barrier_lost = True  # the next barrier makes it and watches it again (one waiting now times out)
            return
        if not event.is_create:
            return
        name = os.fsdecode(event.name)
        with self._barrier_lock:
            done = self._barrier_waiters.get(name)
        if done is not None:
            done.set()
