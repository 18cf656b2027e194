"""Domain types of the repository API: requests, backup sets, progress, reports.

All are frozen dataclasses so they can cross threads and queues safely. Levels are the
three of ARCHITECTURE.md: 'full' (no base, read everything), 'differential' (base = latest
full of the same source) and 'incremental' (base = latest set of any level of the source).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cairn import protocol

from .errors import InvalidArgumentError

LEVELS = protocol.LEVELS  # shared with the client (cairn.protocol)


def check_level(level: str) -> str:
    """Return `level` if it is one of LEVELS, else raise InvalidArgumentError."""
    if level not in LEVELS:
        raise InvalidArgumentError(f"unknown level '{level}': expected one of full, differential, incremental")
    return level


@dataclass(frozen=True)
class ChangeHint:
    """What an outside observer (the daemon's change journal) knows changed since the base.

    `paths` are absolute paths that may have changed (created, written, deleted, moved, or
    metadata); `rescan` are absolute directories whose whole subtree must be walked and
    compared against the base tree. Everything else is carried over from the base unread.
    `written` (among `paths`) are files the observer saw written themselves: each is read even
    when its stat data equals the base's, since writes through a shared mapping into pages
    already dirty change neither mtime nor ctime.
    """

    paths: frozenset[str] = frozenset()
    rescan: frozenset[str] = frozenset()
    written: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BackupRequest:
    """Everything the store needs to take one backup set of one source."""

    source: str
    paths: tuple[str, ...]
    level: str = "full"
    excludes: tuple[str, ...] = ()
    one_file_system: bool = False
    changes: ChangeHint | None = None
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    hostname: str = ""
    fuzzy_retries: int = 3
    # Patterns that apply under one path only: ((path, (pattern, ...)), ...), relative to that path.
    root_excludes: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class SetStats:
    """What a set holds and what changed against its base."""

    files: int = 0
    dirs: int = 0
    bytes_total: int = 0
    added: int = 0
    modified: int = 0
    deleted: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    chunks_added: int = 0
    added_paths: tuple[str, ...] = ()
    modified_paths: tuple[str, ...] = ()
    deleted_paths: tuple[str, ...] = ()
    fuzzy_paths: tuple[str, ...] = ()
    paths_truncated: bool = False
    # Files whose directories this set listed; `files`/`bytes_total` are the whole tree's, carried
    # over subtrees of a journal-driven set included. None: a set from before it was recorded.
    files_walked: int | None = None


@dataclass(frozen=True)
class BackupSet:
    """One committed backup set. `id` is the hex blake3 of its stored object."""

    id: str
    source: str
    level: str
    requested_level: str
    base: str | None
    time_start: float
    time_end: float
    hostname: str
    paths: tuple[str, ...]
    tree: str
    stats: SetStats
    tags: tuple[str, ...] = ()
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, dict[str, Any]] = field(default_factory=dict)


def set_machine(s: BackupSet) -> str:
    """The machine that took `s` (`extra.machine`: systemd's machine id), or '' when it records
    none (sets taken before sets recorded it, or on a machine without an id)."""
    value = s.extra.get("machine") if isinstance(s.extra, dict) else None
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Progress:
    """A progress event of a long operation (backup, restore, check)."""

    phase: str
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    current_path: str = ""


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a set's tree, as listed by `ls`. `path` is relative to the set root."""

    path: str
    name: str
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    target: str = ""


@dataclass(frozen=True)
class SetDiff:
    """Paths added, modified and deleted going from set A to set B."""

    added: tuple[str, ...]
    modified: tuple[str, ...]
    deleted: tuple[str, ...]


@dataclass(frozen=True)
class CheckProblem:
    """One finding of a check: what, where (pack/object), and which sets and paths it hurts."""

    message: str
    object_id: str = ""
    sets: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    """Result of a check: errors make it fail, warnings (a risk worth a look) and notes (what is
    neither damage nor a risk, e.g. packs an interrupted write left) do not."""

    errors: tuple[CheckProblem, ...]
    warnings: tuple[CheckProblem, ...]
    sets_checked: int = 0
    packs_checked: int = 0
    chunks_checked: int = 0
    bytes_read: int = 0
    advice: str = ""  # what to run about the errors found (the repair commands), "" when none applies
    notes: tuple[CheckProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class RestoreStats:
    """What a restore wrote."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    errors: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()  # about entries restored all the same (e.g. shorter than recorded)


@dataclass(frozen=True)
class PrunePolicy:
    """Which sets to keep, applied to each (host, source) group apart (see store/maintenance/retention.py).

    A set is kept when at least one rule keeps it (the rules are a union); a policy with no
    rule keeps every set. Counts of None mean "no such rule"; 0 is a rule that keeps nothing
    (a policy of zeros only is refused by the daemon: retention.keeps_nothing).
    `keep_within` is seconds before the newest set of the group. `host` limits the prune to
    the sets one host took ("" = every host). `sources` gives some sources their own rules
    instead of this policy's (the daemon's per-source `keep`); a source it does not name keeps
    all its sets when `sources` is given. `wal_keep` (seconds) turns WAL retention on: the
    window of point-in-time recovery kept before now (None keeps all WAL, as before). `forget`
    names sets to forget besides (a damaged set no rule would drop alone: `cairn prune --forget`).
    """

    keep_full: int | None = None
    keep_differential: int | None = None
    keep_incremental: int | None = None
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: float | None = None
    keep_tags: tuple[str, ...] = ()
    host: str = ""
    sources: dict[str, PrunePolicy] = field(default_factory=dict, hash=False)
    wal_keep: float | None = None
    forget: tuple[str, ...] = ()  # sets (ids or unique prefixes) forgotten whatever the rules say


@dataclass(frozen=True)
class PruneReport:
    """Sets forgotten and space freed by a prune (or what a dry run would do)."""

    forgotten: tuple[str, ...]
    kept: tuple[str, ...]
    packs_deleted: int = 0
    packs_rewritten: int = 0
    bytes_freed: int = 0
    dry_run: bool = False
    decisions: tuple[RetentionDecision, ...] = ()
    wal_forgotten: tuple[str, ...] = ()
    in_use: tuple[tuple[str, str], ...] = ()  # (set id, holder): kept because a running backup builds on it
    waiting_packs: int = 0  # marked packs a later run deletes once what blocks them ends
    waiting_bytes: int = 0
    waiting_on: tuple[str, ...] = ()  # the locks (described) that were held when they were marked, still held


@dataclass(frozen=True)
class RetentionDecision:
    """Whether one set is kept, and which rules keep it (none: it matched no rule)."""

    set_id: str
    host: str
    source: str
    level: str
    time: float
    keep: bool
    reasons: tuple[str, ...] = ()
