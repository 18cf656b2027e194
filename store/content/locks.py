"""Repository locks: shared for backups, WAL pushes and garbage collection.

Garbage collection (store/maintenance/prune.py) runs beside backups: its lock is shared but marked "gc",
and two gc locks conflict, so only one collector runs at a time (two would each rewrite the
index and could drop what the other keeps). Backups keep taking shared locks because the
collector reads them: a pack marked for deletion is deleted only once every lock held when it
was marked is gone (see docs/format.md). An exclusive lock still excludes everything; nothing
in the store takes one today.

A lock is a small object under "locks/" naming host, pid, pid space, mode and time. A lock is
stale when its process is gone (same host and pid space: same kernel boot and pid namespace, as
machines and containers may share a host name) or its object has not been written for STALE_AFTER
seconds (any host); stale locks are removed by whoever finds them (a read-only handle only
leaves them out: it writes nothing to the store). That age is told by the
storage's clock, never by the hosts' own: the object's last-modified time against the storage's
"now", which a process holding a lock reads off its own lock object (its last-modified time plus
the time since this process wrote it, on the monotonic clock). A process holding none tells ages
by its wall clock only to show them: it removes no lock for its age (a verify, which holds none,
would otherwise break a running backup's lock on a host whose clock is ahead), and `break_locks`
(`cairn unlock`) holds a lock for the while to read the storage's clock. A host whose clock is
hours off thus neither has its live locks taken for stale by others nor takes others' live locks
for stale; the locks a process lists carry, as
"time", when the storage last wrote them on that process's clock (what `describe` and `cairn
unlock` show), not the "time" field their holder's clock wrote. A taker writes its lock before
it looks for conflicts, so that it judges them with that reference. Adds take shared locks and
never block each other (content addressing makes them idempotent); only prune excludes
everything else.
Taking a lock may wait for a conflicting one, retrying with bounded, jittered exponential backoff
(until its owner sets `stopping`: then the wait ends with AbortedError). A
held lock may carry more about its holder (`annotate`): a backup names the set it builds on, and
prune keeps that set while the backup runs (store/maintenance/prune.py). A
held lock is refreshed by a thread; when refreshing fails REFRESH_TRIES times in a row, or the
lock was removed by someone else, the lock is lost: the holder is told (`on_lost`, and the
handle's `lost` event) and must stop before its next write. A released lock whose object could
not be deleted (the store was unreachable) is deleted by the same Locks object the next time it
lists or takes locks, rather than left to go stale, which would hold up garbage collection;
until then that Locks object does not count it as held (its own verify and prune neither say
that a backup runs nor wait for one); to other processes it is live until it goes stale.
No refresh writes a lock's object after its release has begun: one already on its way when the
release gives up waiting for it deletes what it wrote.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import AbortedError, CairnError, CorruptionError, FailedPreconditionError, LockedError, NotFoundError
from ..storage.backend import Backend

STALE_AFTER = 30 * 60
REFRESH_EVERY = 5 * 60
REFRESH_TRIES = 3  # failed refreshes in a row before the lock counts as lost
REFRESH_RETRY = 10.0  # seconds between refresh attempts after a failure
RELEASE_WAIT = 5.0  # a release waits this long for a refresh in flight, then deletes the object anyway
BACKOFF_FIRST = 0.05  # seconds before the first retry of a conflicting lock; doubles each time
BACKOFF_MAX = 2.0


def pid_space() -> str:
    """Which process ids a pid in a lock refers to: this kernel's boot id and this process's pid
    namespace. Machines (or containers) may share a host name; only a lock written in the same
    pid space can be judged by whether its pid is alive. Empty when it cannot be told."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockHandle:
    """A lock being held. `lost` is set (and the holder's `on_lost` called) when the lock could
    not be refreshed or was removed by someone else: the operation holding it must stop."""

    def __init__(self, name: str, purpose: str, doc: dict | None = None) -> None:
        self.name = name
        self.purpose = purpose
        self.lost = threading.Event()
        self.reason = ""
        self.doc: dict = doc if doc is not None else {}  # what the lock object says (without its time)
        self.mutex = threading.Lock()  # one writer of the object at a time (annotate, refresh)

    def check(self) -> None:
        """Raise LockedError if the lock was lost."""
        if self.lost.is_set():
            raise LockedError(f"{self.purpose} stopped: {self.reason}",
                              hint="the repository lock could not be kept; run it again")


def holder(doc: dict) -> str:
    """The host a lock belongs to, as sets name hosts ([daemon] host; the machine's name for
    locks written before locks carried it). `cairn unlock --host H` matches this."""
    return str(doc.get("daemon_host") or doc.get("host") or "?")


def where(doc: dict) -> str:
    """'host beta', or 'host beta (machine betabox)' when the two names differ."""
    name, machine = holder(doc), str(doc.get("host") or "?")
    return f"host {name}" if machine == name else f"host {name} (machine {machine})"


class Locks:
    """Takes and releases locks on one backend."""

    def __init__(self, backend: Backend, *, refresh_every: float = REFRESH_EVERY,
                 stale_after: float = STALE_AFTER) -> None:
        self.backend = backend
        self.host = socket.gethostname()  # the machine: with pid_space, where a pid can be checked
        self.daemon_host = self.host  # the name the sets carry ([daemon] host); the owner may set it
        self.pid_space = pid_space()
        self.refresh_every = refresh_every
        self.stale_after = stale_after
        self.held: list[LockHandle] = []  # locks this object holds now
        # A read-only repository handle writes nothing to the store, deletes included: the
        # stale locks it meets are left out of what it lists, not removed.
        self.read_only = False
        # Released locks whose object could not be deleted (the store was unreachable): deleted
        # before this object next lists or takes locks, so that a garbage collector does not
        # wait for them to go stale (they were refreshed until their release).
        self.leftover: set[str] = set()
        self._leftover_mutex = threading.Lock()
        # Set when the owner shuts down: a wait for a conflicting lock ends at once (AbortedError).
        self.stopping = threading.Event()
        # lock objects this object wrote -> monotonic time when it last began writing each one:
        # with the object's last-modified time, the storage's "now" (storage_now)
        self._written: dict[str, float] = {}

    def _read(self, name: str) -> dict | None:
        try:
            doc = json.loads(self.backend.get("locks", name))
            return doc if isinstance(doc, dict) else None
        except (NotFoundError, CorruptionError, ValueError):  # gone, or damaged (sealed: fails to open)
            return None

    def stale(self, doc: dict | None, age: float | None = None) -> bool:
        """A lock is stale when unreadable, when its process is gone (same host), or when it
        was not refreshed for `stale_after` seconds (any host): `age` is how long ago its object
        was written by the storage's clock (see `ages`); without it, the lock's own time field
        against this host's clock."""
        if doc is None:
            return True
        try:
            if doc.get("host") == self.host and doc.get("pid_space", self.pid_space) == self.pid_space \
                    and not _alive(int(doc.get("pid", 0))):
                return True  # (a lock without pid_space was written before it existed: host alone)
            if age is None:
                age = time.time() - float(doc.get("time", 0))
            return age > self.stale_after
        except (TypeError, ValueError):
            return True

    def ages(self) -> dict[str, float]:
        """Every lock object's name -> seconds since it was last written, by the storage's clock:
        its last-modified time against `storage_now`."""
        return self._ages()[0]

    def _ages(self) -> tuple[dict[str, float], bool]:
        """(`ages`, whether they were told by the storage's clock): False when this object holds
        no lock object to read the storage's "now" off, and they were told by this host's clock."""
        listed = {o.name: o.time for o in self.backend.list_info("locks")}
        now = self.storage_now(listed)
        return {name: now - written for name, written in listed.items()}, self._reference(listed)

    def _reference(self, listed: dict[str, float]) -> bool:
        """Whether `listed` holds a lock object this object wrote (what `storage_now` reads)."""
        return any(name in listed for name in list(self._written))

    def now(self) -> float:
        """Now by the storage's clock (`storage_now` of the lock objects listed now)."""
        return self.storage_now({o.name: o.time for o in self.backend.list_info("locks")})

    def storage_now(self, listed: dict[str, float]) -> float:
        """Now by the storage's clock, from `listed` (lock name -> last-modified time): a lock
        object this object wrote, plus the monotonic time since it began that write (never
        ahead of the storage: the write ended after it began); without one, this host's clock."""
        mono = time.monotonic()
        guesses = [listed[name] + (mono - began) for name, began in list(self._written.items()) if name in listed]
        return min(guesses) if guesses else time.time()

    _stale = stale

    def others(self, mine: str = "") -> list[dict]:
        """Live locks held by others; stale ones are removed (broken) on the way."""
        return list(self.others_named(mine).values())

    def others_named(self, mine: str = "") -> dict[str, dict]:
        """Live locks held by others by name (a name is new for every hold); stale ones are
        removed on the way (a `read_only` object only leaves them out). A lock this object
        released but could not delete yet (`leftover`) is held by no one and is not listed. Each
        document's "time" is when the storage last wrote it, on this host's clock (`seen`), not
        what the holder's clock said."""
        self.remove_leftovers()
        with self._leftover_mutex:
            released = set(self.leftover)
        out: dict[str, dict] = {}
        ages, storage_clock = self._ages()
        for name, age in ages.items():
            if name == mine or name in released:
                continue
            doc = self._read(name)
            if self.stale(doc, age) and (storage_clock or self.stale(doc, 0.0)):
                if self.read_only:
                    continue
                try:
                    self.backend.delete("locks", name)
                except NotFoundError:
                    pass
                except FailedPreconditionError:  # a write-only handle deletes none but its own
                    pass
                continue
            out[name] = self.seen(doc, age)
        return out

    @staticmethod
    def seen(doc: dict, age: float) -> dict:
        """`doc` with its "time" replaced by when the storage last wrote it (`age` seconds ago)
        on this host's clock: what `describe` and `cairn unlock` show as its last refresh."""
        return {**doc, "time": time.time() - max(0.0, age)}

    def describe(self, doc: dict) -> str:
        """A lock for people: what holds it, where, and how long ago it was refreshed."""
        age = max(0.0, time.time() - float(doc.get("time", 0) or 0))
        when = f"{age / 60:.0f} min" if age >= 120 else f"{age:.0f} s"
        return (f"{doc.get('purpose', '?')} on {where(doc)} (pid {doc.get('pid', '?')}, refreshed "
                f"{when} ago)")

    def holders(self) -> set[str]:
        """The host of every lock object in the repository (`holder`), stale ones too; nothing is
        removed (a host that is gone keeps its name here until its locks are broken)."""
        return {holder(doc) for doc in (self._read(name) for name in self.backend.list("locks")) if doc}

    def break_locks(self, *, host: str | None = None, everything: bool = False) -> tuple[list[dict], list[dict]]:
        """Remove the stale locks, and with `host` every lock that host holds, with `everything`
        every lock but this object's own: for a holder known to be gone (a host that died) whose
        locks would otherwise stand for `stale_after`. A live holder whose lock is removed finds
        out at its next refresh and stops; prune and backups check what they rely on, so nothing
        is lost, but that operation fails. Returns (removed, kept), each lock's document with
        its "name"."""
        ages, storage_clock = self._ages()
        if not storage_clock:  # the ages need the storage's clock: write a lock object to read it off
            reference = os.urandom(16).hex()
            while not self._create(reference, self._doc("unlock", False, False)):
                reference = os.urandom(16).hex()
            try:
                return self._break(self._ages()[0], {reference}, host, everything)
            finally:
                self._remove(reference)
        return self._break(ages, set(), host, everything)

    def _break(self, ages: dict[str, float], own: set[str], host: str | None,
               everything: bool) -> tuple[list[dict], list[dict]]:
        own = own | {h.name for h in self.held}
        removed: list[dict] = []
        kept: list[dict] = []
        for name, age in sorted(ages.items()):
            if name in own:
                continue
            doc = self._read(name)
            view = {**(self.seen(doc, age) if doc else {"purpose": "an unreadable lock"}), "name": name}
            if self.stale(doc, age) or everything or (host is not None and holder(doc or {}) == host):
                try:
                    self.backend.delete("locks", name)
                except NotFoundError:
                    continue
                removed.append(view)
            else:
                kept.append(view)
        return removed, kept

    def _conflict(self, exclusive: bool, mine: str, gc: bool = False) -> dict | None:
        for doc in self.others(mine):
            if exclusive or doc.get("exclusive") or (gc and doc.get("gc")):
                return doc
        return None

    @contextmanager
    def hold(self, purpose: str, exclusive: bool = False, *, wait: float = 0.0,
             on_lost: Callable[[str], None] | None = None, gc: bool = False) -> Iterator[LockHandle]:
        """Hold a lock for the duration of the block. On conflict, retry with backoff for up to
        `wait` seconds, then raise LockedError. If the lock is lost while held, the handle's
        `lost` is set and `on_lost(reason)` is called (from the refresher thread). A `gc` lock
        is shared but conflicts with other gc locks (one garbage collector at a time)."""
        name = self._acquire(purpose, exclusive, wait, gc)
        handle = LockHandle(name, purpose, self._doc(purpose, exclusive, gc))
        stop = threading.Event()
        refresher = threading.Thread(target=self._refresh, args=(handle, stop, on_lost), daemon=True,
                                     name="lock-refresh")
        refresher.start()
        self.held.append(handle)
        try:
            yield handle
        finally:
            self.held.remove(handle)
            stop.set()
            refresher.join(timeout=RELEASE_WAIT)
            self._remove(name)

    def _doc(self, purpose: str, exclusive: bool, gc: bool) -> dict:
        doc = {"host": self.host, "daemon_host": self.daemon_host, "pid": os.getpid(), "pid_space": self.pid_space,
               "exclusive": exclusive, "purpose": purpose}
        if gc:
            doc["gc"] = True
        return doc

    def _acquire(self, purpose: str, exclusive: bool, wait: float, gc: bool = False) -> str:
        deadline = time.monotonic() + wait
        delay = BACKOFF_FIRST
        while True:
            # written first: its last-modified time is the storage's clock the look at the
            # others judges their age by (storage_now)
            name = os.urandom(16).hex()
            if not self._create(name, self._doc(purpose, exclusive, gc)):
                continue  # a random name already taken: draw another
            clash = self._conflict(exclusive, name, gc)
            if clash is None:
                return name
            self._remove(name)
            left = deadline - time.monotonic()
            if left <= 0:
                self._raise_conflict(clash)
            # jittered: two takers that collide (each sees the other's new lock and withdraws its
            # own) must not retry in step, or they can collide again and again
            if self._pause(min(delay * (0.5 + random.random()), left)):
                raise AbortedError(f"stopped waiting for the repository lock ({purpose}): shutting down")
            delay = min(delay * 2, BACKOFF_MAX)

    def annotate(self, handle: LockHandle, **fields: object) -> None:
        """Add `fields` to a held lock's object now, and to every refresh after: what another
        process must know of this holder (a backup's base set, which prune keeps while the backup
        runs). Raises the store's error if the object cannot be written."""
        with handle.mutex:
            handle.doc.update(fields)
            self._write(handle.name, handle.doc)

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds` before retrying; True when `stopping` was set meanwhile."""
        return self.stopping.wait(seconds)

    def _write(self, name: str, doc: dict) -> None:
        self._written[name] = time.monotonic()  # when the write began (storage_now)
        self.backend.put("locks", name, json.dumps({**doc, "time": time.time()}).encode())

    def confirm(self, handle: LockHandle) -> None:
        """Ask the store now whether `handle`'s lock object is still there, and mark the lock
        lost if it is not (the refresher would tell only at its next round): an operation that
        failed asks, since a removed lock (`cairn unlock`) explains what followed it."""
        try:
            self.backend.stat("locks", handle.name)
        except NotFoundError:
            if not handle.lost.is_set():
                handle.reason = "its repository lock was removed by another process"
                handle.lost.set()

    def _create(self, name: str, doc: dict) -> bool:
        """Write a new lock object; False if one of that name exists (it is someone else's)."""
        began = time.monotonic()
        if not self.backend.put_if_absent("locks", name, json.dumps({**doc, "time": time.time()}).encode()):
            return False
        self._written[name] = began
        return True

    def _refresh(self, handle: LockHandle, stop: threading.Event,
                 on_lost: Callable[[str], None] | None) -> None:
        failures = 0
        pause = self.refresh_every
        while not stop.wait(pause):
            try:
                self.backend.stat("locks", handle.name)
            except NotFoundError:
                self._lose(handle, "its repository lock was removed by another process", on_lost)
                return
            except CairnError:
                pass  # the write below tells
            try:
                with handle.mutex:
                    if stop.is_set():  # released meanwhile: write nothing the release may not see
                        return
                    self._write(handle.name, handle.doc)
                if stop.is_set():  # released while the write was on its way (the release waits only
                    self._remove(handle.name)  # RELEASE_WAIT for it): it must not outlive the release
                    return
                failures, pause = 0, self.refresh_every
            except CairnError as e:
                failures += 1
                if failures >= REFRESH_TRIES:
                    self._lose(handle, f"unable to refresh its repository lock: {e}", on_lost)
                    return
                pause = min(self.refresh_every, REFRESH_RETRY)

    @staticmethod
    def _lose(handle: LockHandle, reason: str, on_lost: Callable[[str], None] | None) -> None:
        handle.reason = reason
        handle.lost.set()
        if on_lost is not None:
            on_lost(reason)

    def _remove(self, name: str) -> None:
        self._written.pop(name, None)
        try:
            self.backend.delete("locks", name)
        except NotFoundError:
            pass
        except CairnError:
            with self._leftover_mutex:
                self.leftover.add(name)  # deleted by remove_leftovers, or it goes stale

    def remove_leftovers(self) -> None:
        """Delete the objects of released locks that an earlier release could not delete."""
        with self._leftover_mutex:
            names = sorted(self.leftover)
        for name in names:
            try:
                self.backend.delete("locks", name)
            except NotFoundError:
                pass
            except CairnError:
                continue  # still unreachable: the next call tries again
            with self._leftover_mutex:
                self.leftover.discard(name)

    @staticmethod
    def _raise_conflict(doc: dict | None) -> None:
        if doc is None:
            return
        kind = "exclusive" if doc.get("exclusive") else "gc" if doc.get("gc") else "shared"
        raise LockedError(f"repository is locked ({kind}, {doc.get('purpose', '?')}) by pid {doc.get('pid')} "
                          f"on {where(doc)}", hint="wait for it to finish; stale locks expire by themselves, "
                                                         "or 'cairn unlock --host H' removes a dead host's")
