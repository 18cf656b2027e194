"""The change journal: a durable record, per source, of what changed and what is protected.

One SQLite database in the daemon's state directory, readable by its owner only (0600, and
so its -wal and -shm files: it names every changed path), in WAL mode (synchronous=NORMAL: a
committed batch survives a crash of the daemon; on power loss the newest batches may be lost,
which the restart rule below covers). Tables:

- `entries(source, path, kind, seq, first_seen, reason)`, one row per (source, kind, path):
  kind 'path' (the entry at `path` may have changed; reason 'written' once an event since the
  set that last protected it was about the entry itself: written, closed after writing,
  created or its metadata changed, not only named), 'tree' (the directory at `path` is new:
  walk all of it), 'rescan' (events under `path` were lost: walk all of it) and 'source'
  (`path` empty: the whole source must be walked). Recording the same (source, kind, path)
  again keeps one row: `seq` becomes the newest, `first_seen` stays the time it was first
  seen unprotected.
- `sources(name, ...)`: per source the sequence numbers and ids of the last committed set
  (`set_seq`, `set_id`) and of the last committed full (`full_seq`, `full_id`), and a
  fingerprint of its watched configuration.
- `meta`: format version, the sequence counter and the current daemon session.

What always holds:
- Sequence numbers grow strictly over the life of the database; every recorded batch gets
  numbers greater than any `set_seq`/`full_seq` already stored.
- An entry is unprotected while its seq > its source's set_seq; a set commit only moves the
  marks to the seq its caller read before the set started, so what arrived later stays.
- An unprotected entry's `first_seen` is never older than the start of the last committed set
  (the time its token was read): a path changed before that set and again while it ran keeps
  one row, and the commit moves its `first_seen` up to the token's time, the earliest its
  newer change can be. So the oldest unprotected change is never understated and never older
  than the protecting set (a file written continuously does not age without bound).
- Entries with seq <= full_seq are deleted: no usable base (latest full, latest set) can need
  them. Entries between full_seq and set_seq are kept for the next differential.
- Paths are stored as bytes (file names need not be UTF-8).
- A batch that fails to be written (a full disk, an I/O error) leaves nothing of itself behind
  and uses up no sequence number: `record` raises the SQLite error and the caller keeps the batch.
- A damaged database (not a database, malformed) is never used: `Journal` refuses it with
  `JournalDamaged`, and `open_journal` moves it aside (`<name>.corrupt-<time>`, with its -wal
  and -shm files) and starts a fresh one, which knows no source, so every source is walked.
  Any other failure to open or to record a session is a `JournalError` (a `CairnError`, one line).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from cairn.errors import CairnError
from cairn.fsio.names import text_safe

KINDS = ("path", "tree", "rescan", "source")
WRITTEN = "written"  # the reason of a 'path' entry whose file itself was written (a later set reads it)
FORMAT_VERSION = 1
TRUST_KINDS = ("rescan", "source")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL DEFAULT '',
    set_id TEXT, set_seq INTEGER NOT NULL DEFAULT 0, set_time REAL,
    full_id TEXT, full_seq INTEGER NOT NULL DEFAULT 0, full_time REAL
);
CREATE TABLE IF NOT EXISTS entries (
    source TEXT NOT NULL, kind TEXT NOT NULL, path BLOB NOT NULL,
    seq INTEGER NOT NULL, first_seen REAL NOT NULL, reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (source, kind, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_seq ON entries (source, seq);
"""

_UPSERT = """
INSERT INTO entries (source, kind, path, seq, first_seen, reason) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (source, kind, path) DO UPDATE SET
    first_seen = CASE WHEN entries.seq <= ? THEN excluded.first_seen ELSE entries.first_seen END,
    reason = CASE WHEN entries.seq <= ? THEN excluded.reason
                  WHEN entries.kind = 'path' AND excluded.reason = 'written' THEN excluded.reason
                  ELSE entries.reason END,
    seq = excluded.seq
"""


SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


class JournalError(CairnError):
    """The journal database cannot be used (unreadable, newer format, disk full at start)."""


class JournalDamaged(JournalError):
    """The journal database is damaged (not a database, malformed): it must be replaced."""


def damaged(exc: BaseException) -> bool:
    """True when `exc` says the database file itself is damaged (not a full disk, not an I/O error)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc)
    return "not a database" in text or "malformed" in text


def describe(exc: BaseException, path: str | None = None) -> str:
    """The one-line reason of a SQLite or OS error; with `path`, a full file system under it is
    named (SQLite reports one as "disk I/O error" when it cannot grow its -shm file)."""
    if isinstance(exc, OSError):
        why = exc.strerror or str(exc)
    else:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if path is not None and "full" not in why and "No space" not in why:
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        except OSError:
            return why
        if st.f_bavail == 0 or (st.f_files and st.f_favail == 0):
            why += " (No space left on device)"
    return why


@dataclass(frozen=True)
class Change:
    """One fact to record: `path` ('' for kind 'source') of `source` changed at `time`."""

    source: str
    kind: str
    path: str
    time: float
    reason: str = ""


@dataclass(frozen=True)
class Entry:
    """One journal row."""

    source: str
    kind: str
    path: str
    seq: int
    first_seen: float
    reason: str


@dataclass(frozen=True)
class Marks:
    """What the journal knows of a source's committed sets."""

    name: str
    known: bool = False
    fingerprint: str = ""
    set_id: str | None = None
    set_seq: int = 0
    set_time: float | None = None
    full_id: str | None = None
    full_seq: int = 0
    full_time: float | None = None


@dataclass(frozen=True)
class Pending:
    """Unprotected entries of a source (seq > set_seq)."""

    count: int
    oldest: float | None
    trust: tuple[Entry, ...]


@dataclass(frozen=True)
class Session:
    """The previous daemon session as recorded in the journal."""

    started: float
    stopped: float | None
    pid: int

    @property
    def clean(self) -> bool:
        return self.stopped is not None


def make_private(path: str) -> None:
    """Create the database file 0600 (SQLite gives its -wal and -shm files the database's mode)
    and take group and other access from an existing database and its -wal/-shm files."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            if os.lstat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass


def _enc(path: str) -> bytes:
    return os.fsencode(path)


def _dec(path: bytes) -> str:
    return os.fsdecode(path)


class Journal:
    """The journal database; thread-safe (one connection behind a lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        db: sqlite3.Connection | None = None
        try:
            if not os.path.lexists(path):  # the -wal or -shm of a database moved aside or deleted
                for suffix in ("-wal", "-shm", "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path + suffix)
            make_private(path)
            self._db = db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            problems = [line for r in db.execute("PRAGMA quick_check(5)").fetchall()
                        for line in str(r[0]).splitlines() if line and not line.startswith("***")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"database disk image is malformed ({problems[0] if problems else '?'})")
            self._db.executescript(_SCHEMA)
            version = self._meta("format")
            if version is None:
                self._set_meta("format", str(FORMAT_VERSION))
            elif not version.isdigit():
                raise sqlite3.DatabaseError(f"database disk image is malformed: format '{version}'")
            elif int(version) > FORMAT_VERSION:
                raise JournalError(f"unable to open change journal '{path}': format {version} is newer than "
                                   f"{FORMAT_VERSION}")
            # Never below a number already handed out (a set's marks included): see record().
            self._seq = max(int(self._meta("seq") or 0), *self._db.execute(
                "SELECT COALESCE(MAX(set_seq), 0), COALESCE(MAX(full_seq), 0) FROM sources").fetchone(),
                self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0])
        except (sqlite3.Error, OSError, ValueError, JournalError) as e:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            if isinstance(e, JournalError):
                raise
            cls = JournalDamaged if damaged(e) or isinstance(e, ValueError) else JournalError
            raise cls(f"unable to open change journal '{path}': {describe(e, path)}") from None

    def close(self) -> None:
        """Close the database (never raises: what was committed is in it or in its -wal file)."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    # -- meta ------------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value", (key, value))

    @property
    def seq(self) -> int:
        """The sequence number of the newest recorded entry (0 if none yet)."""
        with self._lock:
            return self._seq

    def begin_session(self, now: float | None = None) -> Session | None:
        """Record that a daemon session started; return the previous one (None if first).
        Raises JournalError (JournalDamaged for a damaged database) when it cannot be written."""
        try:
            with self._lock:
                raw = self._meta("session")
                self._set_meta("session", json.dumps({"started": now or time.time(), "stopped": None,
                                                      "pid": os.getpid()}))
        except sqlite3.Error as e:
            cls = JournalDamaged if damaged(e) else JournalError
            raise cls(f"unable to write change journal '{self.path}': {describe(e, self.path)}") from None
        try:
            d = json.loads(raw) if raw is not None else None
            if d is None:
                return None
            return Session(started=d["started"], stopped=d.get("stopped"), pid=d.get("pid", 0))
        except (ValueError, KeyError, TypeError):  # unreadable: as if the previous daemon had died
            return Session(started=0.0, stopped=None, pid=0)

    def end_session(self, now: float | None = None) -> None:
        """Record that the current session stopped cleanly (JournalError when it cannot be written)."""
        try:
            with self._lock:
                raw = self._meta("session")
                try:
                    d = json.loads(raw) if raw else None
                except ValueError:
                    d = None
                if not isinstance(d, dict):
                    d = {"started": now or time.time(), "pid": os.getpid()}
                d["stopped"] = now or time.time()
                self._set_meta("session", json.dumps(d))
        except sqlite3.Error as e:
            raise JournalError(f"unable to write change journal '{self.path}': {describe(e, self.path)}") from None

    # -- recording -------------------------------------------------------------------------------
    def record(self, changes: Iterable[Change]) -> dict[str, int]:
        """Record a batch in one transaction; return per source how many rows it touched.
        On failure (sqlite3.Error: a full disk, ...) nothing of the batch is kept, not even the
        sequence numbers it took, so a token read meanwhile never covers the batch's future rows."""
        touched: dict[str, int] = {}
        with self._lock:
            before = self._seq
            try:
                return self._record_locked(changes, touched)
            except BaseException:
                self._seq = before
                raise

    def _record_locked(self, changes: Iterable[Change], touched: dict[str, int]) -> dict[str, int]:
        protected = dict(self._db.execute("SELECT name, set_seq FROM sources").fetchall())
        # One row per (source, kind, path) of the batch, as the upserts one by one would leave it:
        # the first occurrence's time and reason, the last one's sequence number (a path written
        # thousands of times between two flushes is one row, not thousands of upserts).
        rows: dict[tuple[str, str, bytes], tuple] = {}
        for c in changes:
            if c.kind not in KINDS:
                raise ValueError(f"unknown journal entry kind '{c.kind}'")
            self._seq += 1
            p = protected.get(c.source, 0)
            path = _enc(c.path)
            first = rows.pop((c.source, c.kind, path), None)
            when, reason = (first[4], first[5]) if first is not None else (c.time, c.reason)
            if c.kind == "path" and c.reason == WRITTEN:  # written at any time of the batch: read it
                reason = WRITTEN
            # a reason is text for people, kept as TEXT (valid UTF-8): a name in it that is not
            # UTF-8 (a lone surrogate) would fail the whole batch, and the journal's thread with it
            reason = text_safe(reason)
            rows[(c.source, c.kind, path)] = (c.source, c.kind, path, self._seq, when, reason, p, p)
            touched[c.source] = touched.get(c.source, 0) + 1
        if not rows:
            return touched
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_UPSERT, rows.values())
            self._set_meta("seq", str(self._seq))
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return touched

    def _rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already (it does on some errors, such as
        a full disk): the error that failed the transaction is the one that is raised."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    # -- reading ---------------------------------------------------------------------------------
    def marks(self, source: str) -> Marks:
        with self._lock:
            row = self._db.execute(
                "SELECT fingerprint, set_id, set_seq, set_time, full_id, full_seq, full_time "
                "FROM sources WHERE name = ?", (source,)).fetchone()
        if row is None:
            return Marks(name=source)
        return Marks(source, True, *row)

    def entries_after(self, source: str, seq: int, upto: int | None = None) -> list[Entry]:
        """Entries of `source` with seq in (seq, upto]."""
        q = "SELECT kind, path, seq, first_seen, reason FROM entries WHERE source = ? AND seq > ?"
        args: list[object] = [source, seq]
        if upto is not None:
            q += " AND seq <= ?"
            args.append(upto)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY seq", args).fetchall()
        return [Entry(source, k, _dec(p), s, f, r) for k, p, s, f, r in rows]

    def pending(self, source: str) -> Pending:
        """The unprotected entries of `source` in summary."""
        with self._lock:
            row = self._db.execute("SELECT set_seq FROM sources WHERE name = ?", (source,)).fetchone()
            after = row[0] if row else 0
            count, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(first_seen) FROM entries WHERE source = ? AND seq > ?",
                (source, after)).fetchone()
            trust = self._db.execute(
                "SELECT kind, path, seq, first_seen, reason FROM entries WHERE source = ? AND seq > ? "
                "AND kind IN ('rescan', 'source') ORDER BY seq LIMIT 50", (source, after)).fetchall()
        return Pending(count, oldest, tuple(Entry(source, k, _dec(p), s, f, r) for k, p, s, f, r in trust))

    # -- sources and commits -----------------------------------------------------------------------
    def set_fingerprint(self, source: str, fingerprint: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO sources (name, fingerprint) VALUES (?, ?) ON CONFLICT (name) "
                             "DO UPDATE SET fingerprint = excluded.fingerprint", (source, fingerprint))

    def commit(self, source: str, level: str, set_id: str, seq: int, now: float | None = None,
               prepared_at: float | None = None) -> None:
        """Mark entries up to `seq` protected by set `set_id`; a full also drops what it made moot.
        `prepared_at`: when `seq` was read; entries still pending that were first seen before it
        changed again after it, so they count as first seen then (see the module docstring)."""
        now = now or time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO sources (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
                                 (source,))
                self._db.execute("UPDATE sources SET set_id = ?, set_seq = ?, set_time = ? WHERE name = ?",
                                 (set_id, seq, now, source))
                if prepared_at is not None:
                    self._db.execute("UPDATE entries SET first_seen = ? WHERE source = ? AND seq > ? "
                                     "AND first_seen < ?", (prepared_at, source, seq, prepared_at))
                if level == "full":
                    self._db.execute("UPDATE sources SET full_id = ?, full_seq = ?, full_time = ? "
                                     "WHERE name = ?", (set_id, seq, now, source))
                    self._db.execute("DELETE FROM entries WHERE source = ? AND seq <= ?", (source, seq))
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise


def open_journal(path: str, now: float | None = None) -> tuple[Journal, str | None]:
    """Open the journal at `path`; a damaged one is moved aside (with its -wal and -shm files, to
    `<path>.corrupt-<time>`) and a fresh one started in its place. Returns the journal and, when
    it was replaced, a one-line note saying so. Raises JournalError when no journal can be opened
    (a full disk, an I/O error, a newer format)."""
    try:
        return Journal(path), None
    except JournalDamaged as e:
        why = e.message.rsplit("': ", 1)[-1]
        aside = move_aside(path, now)
    return Journal(path), f"change journal '{path}' was damaged ({why}): moved to '{aside}', started afresh"


def move_aside(path: str, now: float | None = None) -> str:
    """Rename the database at `path` and its -wal/-shm files to `<path>.corrupt-<time>[-wal|-shm]`."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now or time.time()))
    aside = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}.corrupt-{stamp}.{n}"
    try:
        for suffix in ("", "-wal", "-shm", "-journal"):  # a -wal left behind is dropped by Journal()
            with contextlib.suppress(FileNotFoundError):
                os.rename(path + suffix, aside + suffix)
    except OSError as e:
        raise JournalError(f"unable to move damaged change journal '{path}' aside: {describe(e)}") from None
    return aside
