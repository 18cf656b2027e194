from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Progress(_message.Message):
    __slots__ = ("phase", "files_done", "files_total", "bytes_done", "bytes_total", "current_path", "totals_estimated")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PATH_FIELD_NUMBER: _ClassVar[int]
    TOTALS_ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    phase: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    current_path: bytes
    totals_estimated: bool
    def __init__(self, phase: _Optional[str] = ..., files_done: _Optional[int] = ..., files_total: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., current_path: _Optional[bytes] = ..., totals_estimated: _Optional[bool] = ...) -> None: ...

class SetStats(_message.Message):
    __slots__ = ("files", "dirs", "bytes_total", "added", "modified", "deleted", "bytes_read", "bytes_added", "chunks_added", "fuzzy", "files_walked")
    FILES_FIELD_NUMBER: _ClassVar[int]
    DIRS_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_ADDED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_ADDED_FIELD_NUMBER: _ClassVar[int]
    FUZZY_FIELD_NUMBER: _ClassVar[int]
    FILES_WALKED_FIELD_NUMBER: _ClassVar[int]
    files: int
    dirs: int
    bytes_total: int
    added: int
    modified: int
    deleted: int
    bytes_read: int
    bytes_added: int
    chunks_added: int
    fuzzy: int
    files_walked: int
    def __init__(self, files: _Optional[int] = ..., dirs: _Optional[int] = ..., bytes_total: _Optional[int] = ..., added: _Optional[int] = ..., modified: _Optional[int] = ..., deleted: _Optional[int] = ..., bytes_read: _Optional[int] = ..., bytes_added: _Optional[int] = ..., chunks_added: _Optional[int] = ..., fuzzy: _Optional[int] = ..., files_walked: _Optional[int] = ...) -> None: ...

class SetInfo(_message.Message):
    __slots__ = ("id", "source", "level", "requested_level", "base", "time_start", "time_end", "hostname", "paths", "stats", "tags", "note", "status", "extra_json", "fuzzy_paths")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_LEVEL_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    TIME_START_FIELD_NUMBER: _ClassVar[int]
    TIME_END_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    FUZZY_PATHS_FIELD_NUMBER: _ClassVar[int]
    id: str
    source: str
    level: str
    requested_level: str
    base: str
    time_start: float
    time_end: float
    hostname: str
    paths: _containers.RepeatedScalarFieldContainer[bytes]
    stats: SetStats
    tags: _containers.RepeatedScalarFieldContainer[str]
    note: str
    status: str
    extra_json: str
    fuzzy_paths: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, id: _Optional[str] = ..., source: _Optional[str] = ..., level: _Optional[str] = ..., requested_level: _Optional[str] = ..., base: _Optional[str] = ..., time_start: _Optional[float] = ..., time_end: _Optional[float] = ..., hostname: _Optional[str] = ..., paths: _Optional[_Iterable[bytes]] = ..., stats: _Optional[_Union[SetStats, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., note: _Optional[str] = ..., status: _Optional[str] = ..., extra_json: _Optional[str] = ..., fuzzy_paths: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DaemonInfo(_message.Message):
    __slots__ = ("version", "pid", "started", "repository", "read_only", "config_path", "hostname", "warnings")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    version: str
    pid: int
    started: float
    repository: str
    read_only: bool
    config_path: str
    hostname: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., pid: _Optional[int] = ..., started: _Optional[float] = ..., repository: _Optional[str] = ..., read_only: _Optional[bool] = ..., config_path: _Optional[str] = ..., hostname: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("id", "source", "level", "reason", "started", "progress")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    source: str
    level: str
    reason: str
    started: float
    progress: Progress
    def __init__(self, id: _Optional[str] = ..., source: _Optional[str] = ..., level: _Optional[str] = ..., reason: _Optional[str] = ..., started: _Optional[float] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class LevelSet(_message.Message):
    __slots__ = ("level", "set")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    level: str
    set: SetInfo
    def __init__(self, level: _Optional[str] = ..., set: _Optional[_Union[SetInfo, _Mapping]] = ...) -> None: ...

class NextRun(_message.Message):
    __slots__ = ("level", "time")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    level: str
    time: float
    def __init__(self, level: _Optional[str] = ..., time: _Optional[float] = ...) -> None: ...

class SourceStatus(_message.Message):
    __slots__ = ("name", "paths", "configured", "watch", "journal", "last", "running", "next_runs", "sets", "journal_state", "journal_reasons", "oldest_unprotected_age", "pending_paths", "watches", "last_failure", "rpo", "last_success", "host", "window", "recovered_window", "unprotected_tracked", "unprotected_since")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUNS_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_STATE_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_REASONS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_UNPROTECTED_AGE_FIELD_NUMBER: _ClassVar[int]
    PENDING_PATHS_FIELD_NUMBER: _ClassVar[int]
    WATCHES_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    RPO_FIELD_NUMBER: _ClassVar[int]
    LAST_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNPROTECTED_TRACKED_FIELD_NUMBER: _ClassVar[int]
    UNPROTECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    paths: _containers.RepeatedScalarFieldContainer[bytes]
    configured: bool
    watch: bool
    journal: str
    last: _containers.RepeatedCompositeFieldContainer[LevelSet]
    running: JobInfo
    next_runs: _containers.RepeatedCompositeFieldContainer[NextRun]
    sets: int
    journal_state: str
    journal_reasons: _containers.RepeatedScalarFieldContainer[str]
    oldest_unprotected_age: float
    pending_paths: int
    watches: int
    last_failure: SourceFailure
    rpo: float
    last_success: float
    host: str
    window: QuiesceWindow
    recovered_window: RecoveredWindow
    unprotected_tracked: bool
    unprotected_since: float
    def __init__(self, name: _Optional[str] = ..., paths: _Optional[_Iterable[bytes]] = ..., configured: _Optional[bool] = ..., watch: _Optional[bool] = ..., journal: _Optional[str] = ..., last: _Optional[_Iterable[_Union[LevelSet, _Mapping]]] = ..., running: _Optional[_Union[JobInfo, _Mapping]] = ..., next_runs: _Optional[_Iterable[_Union[NextRun, _Mapping]]] = ..., sets: _Optional[int] = ..., journal_state: _Optional[str] = ..., journal_reasons: _Optional[_Iterable[str]] = ..., oldest_unprotected_age: _Optional[float] = ..., pending_paths: _Optional[int] = ..., watches: _Optional[int] = ..., last_failure: _Optional[_Union[SourceFailure, _Mapping]] = ..., rpo: _Optional[float] = ..., last_success: _Optional[float] = ..., host: _Optional[str] = ..., window: _Optional[_Union[QuiesceWindow, _Mapping]] = ..., recovered_window: _Optional[_Union[RecoveredWindow, _Mapping]] = ..., unprotected_tracked: _Optional[bool] = ..., unprotected_since: _Optional[float] = ...) -> None: ...

class QuiesceWindow(_message.Message):
    __slots__ = ("mode", "state", "opened", "frozen", "deadline", "max_window", "levels", "levels_started", "job", "level")
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOW_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    LEVELS_STARTED_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    mode: str
    state: str
    opened: float
    frozen: float
    deadline: float
    max_window: float
    levels: int
    levels_started: int
    job: str
    level: str
    def __init__(self, mode: _Optional[str] = ..., state: _Optional[str] = ..., opened: _Optional[float] = ..., frozen: _Optional[float] = ..., deadline: _Optional[float] = ..., max_window: _Optional[float] = ..., levels: _Optional[int] = ..., levels_started: _Optional[int] = ..., job: _Optional[str] = ..., level: _Optional[str] = ...) -> None: ...

class RecoveredWindow(_message.Message):
    __slots__ = ("mode", "opened", "thawed", "thaw_hooks", "message")
    MODE_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    THAWED_FIELD_NUMBER: _ClassVar[int]
    THAW_HOOKS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    opened: float
    thawed: float
    thaw_hooks: int
    message: str
    def __init__(self, mode: _Optional[str] = ..., opened: _Optional[float] = ..., thawed: _Optional[float] = ..., thaw_hooks: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SourceFailure(_message.Message):
    __slots__ = ("level", "time", "message", "status")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    level: str
    time: float
    message: str
    status: str
    def __init__(self, level: _Optional[str] = ..., time: _Optional[float] = ..., message: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("daemon", "sources", "archive", "retention")
    DAEMON_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    daemon: DaemonInfo
    sources: _containers.RepeatedCompositeFieldContainer[SourceStatus]
    archive: ArchiveStatus
    retention: RetentionStatus
    def __init__(self, daemon: _Optional[_Union[DaemonInfo, _Mapping]] = ..., sources: _Optional[_Iterable[_Union[SourceStatus, _Mapping]]] = ..., archive: _Optional[_Union[ArchiveStatus, _Mapping]] = ..., retention: _Optional[_Union[RetentionStatus, _Mapping]] = ...) -> None: ...

class RetentionStatus(_message.Message):
    __slots__ = ("schedule", "next_run", "last_run", "last_result", "host")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    schedule: str
    next_run: float
    last_run: float
    last_result: str
    host: str
    def __init__(self, schedule: _Optional[str] = ..., next_run: _Optional[float] = ..., last_run: _Optional[float] = ..., last_result: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class ArchiveStatus(_message.Message):
    __slots__ = ("last_segment", "last_time", "pushed", "failures", "last_failure", "last_failure_time", "segments", "databases", "wal_namespaces")
    LAST_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    LAST_TIME_FIELD_NUMBER: _ClassVar[int]
    PUSHED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_TIME_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    DATABASES_FIELD_NUMBER: _ClassVar[int]
    WAL_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    last_segment: str
    last_time: float
    pushed: int
    failures: int
    last_failure: str
    last_failure_time: float
    segments: int
    databases: _containers.RepeatedCompositeFieldContainer[DatabaseArchive]
    wal_namespaces: int
    def __init__(self, last_segment: _Optional[str] = ..., last_time: _Optional[float] = ..., pushed: _Optional[int] = ..., failures: _Optional[int] = ..., last_failure: _Optional[str] = ..., last_failure_time: _Optional[float] = ..., segments: _Optional[int] = ..., databases: _Optional[_Iterable[_Union[DatabaseArchive, _Mapping]]] = ..., wal_namespaces: _Optional[int] = ...) -> None: ...

class DatabaseArchive(_message.Message):
    __slots__ = ("name", "error", "current_segment", "last_archived", "last_archived_time", "failed_count", "last_failed", "last_failed_time", "lag_segments", "system_id", "namespace_segments", "nothing_archived", "in_recovery", "archive_mode", "archive_command", "archive_library", "archive_foreign", "pending_since", "ready_since", "archive_elsewhere", "ready_unlisted")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    LAST_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    LAST_ARCHIVED_TIME_FIELD_NUMBER: _ClassVar[int]
    FAILED_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILED_TIME_FIELD_NUMBER: _ClassVar[int]
    LAG_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NOTHING_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    IN_RECOVERY_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_MODE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_LIBRARY_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FOREIGN_FIELD_NUMBER: _ClassVar[int]
    PENDING_SINCE_FIELD_NUMBER: _ClassVar[int]
    READY_SINCE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ELSEWHERE_FIELD_NUMBER: _ClassVar[int]
    READY_UNLISTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    error: str
    current_segment: str
    last_archived: str
    last_archived_time: float
    failed_count: int
    last_failed: str
    last_failed_time: float
    lag_segments: int
    system_id: str
    namespace_segments: int
    nothing_archived: bool
    in_recovery: bool
    archive_mode: str
    archive_command: str
    archive_library: str
    archive_foreign: bool
    pending_since: float
    ready_since: float
    archive_elsewhere: str
    ready_unlisted: str
    def __init__(self, name: _Optional[str] = ..., error: _Optional[str] = ..., current_segment: _Optional[str] = ..., last_archived: _Optional[str] = ..., last_archived_time: _Optional[float] = ..., failed_count: _Optional[int] = ..., last_failed: _Optional[str] = ..., last_failed_time: _Optional[float] = ..., lag_segments: _Optional[int] = ..., system_id: _Optional[str] = ..., namespace_segments: _Optional[int] = ..., nothing_archived: _Optional[bool] = ..., in_recovery: _Optional[bool] = ..., archive_mode: _Optional[str] = ..., archive_command: _Optional[str] = ..., archive_library: _Optional[str] = ..., archive_foreign: _Optional[bool] = ..., pending_since: _Optional[float] = ..., ready_since: _Optional[float] = ..., archive_elsewhere: _Optional[str] = ..., ready_unlisted: _Optional[str] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("source", "level", "tags")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    source: str
    level: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source: _Optional[str] = ..., level: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class BackupEvent(_message.Message):
    __slots__ = ("started", "progress", "set")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    started: JobInfo
    progress: Progress
    set: SetInfo
    def __init__(self, started: _Optional[_Union[JobInfo, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., set: _Optional[_Union[SetInfo, _Mapping]] = ...) -> None: ...

class ListSetsRequest(_message.Message):
    __slots__ = ("source", "host")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    source: str
    host: str
    def __init__(self, source: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class ListSetsReply(_message.Message):
    __slots__ = ("sets", "unreadable", "unreadable_advice")
    SETS_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_ADVICE_FIELD_NUMBER: _ClassVar[int]
    sets: _containers.RepeatedCompositeFieldContainer[SetInfo]
    unreadable: _containers.RepeatedScalarFieldContainer[str]
    unreadable_advice: str
    def __init__(self, sets: _Optional[_Iterable[_Union[SetInfo, _Mapping]]] = ..., unreadable: _Optional[_Iterable[str]] = ..., unreadable_advice: _Optional[str] = ...) -> None: ...

class TreeEntry(_message.Message):
    __slots__ = ("path", "name", "kind", "mode", "uid", "gid", "mtime_ns", "size", "target", "mtime_s")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MTIME_S_FIELD_NUMBER: _ClassVar[int]
    path: bytes
    name: bytes
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    target: bytes
    mtime_s: int
    def __init__(self, path: _Optional[bytes] = ..., name: _Optional[bytes] = ..., kind: _Optional[str] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., size: _Optional[int] = ..., target: _Optional[bytes] = ..., mtime_s: _Optional[int] = ...) -> None: ...

class ListTreeRequest(_message.Message):
    __slots__ = ("set", "source", "path", "recursive", "host")
    SET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    set: str
    source: str
    path: bytes
    recursive: bool
    host: str
    def __init__(self, set: _Optional[str] = ..., source: _Optional[str] = ..., path: _Optional[bytes] = ..., recursive: _Optional[bool] = ..., host: _Optional[str] = ...) -> None: ...

class ListTreeReply(_message.Message):
    __slots__ = ("set", "entries", "problems", "dsn_restorable", "dumps_known")
    SET_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    DSN_RESTORABLE_FIELD_NUMBER: _ClassVar[int]
    DUMPS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    set: SetInfo
    entries: _containers.RepeatedCompositeFieldContainer[TreeEntry]
    problems: _containers.RepeatedScalarFieldContainer[str]
    dsn_restorable: _containers.RepeatedScalarFieldContainer[str]
    dumps_known: bool
    def __init__(self, set: _Optional[_Union[SetInfo, _Mapping]] = ..., entries: _Optional[_Iterable[_Union[TreeEntry, _Mapping]]] = ..., problems: _Optional[_Iterable[str]] = ..., dsn_restorable: _Optional[_Iterable[str]] = ..., dumps_known: _Optional[bool] = ...) -> None: ...

class DiffRequest(_message.Message):
    __slots__ = ("a", "b", "source", "host", "grouped")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    GROUPED_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    source: str
    host: str
    grouped: bool
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ..., source: _Optional[str] = ..., host: _Optional[str] = ..., grouped: _Optional[bool] = ...) -> None: ...

class DiffReply(_message.Message):
    __slots__ = ("a", "b", "added", "modified", "deleted")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    a: SetInfo
    b: SetInfo
    added: _containers.RepeatedScalarFieldContainer[bytes]
    modified: _containers.RepeatedScalarFieldContainer[bytes]
    deleted: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, a: _Optional[_Union[SetInfo, _Mapping]] = ..., b: _Optional[_Union[SetInfo, _Mapping]] = ..., added: _Optional[_Iterable[bytes]] = ..., modified: _Optional[_Iterable[bytes]] = ..., deleted: _Optional[_Iterable[bytes]] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("set", "source", "paths", "manifest", "include", "exclude", "local_claim", "target_path", "delta", "quick", "delete", "host")
    SET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CLAIM_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    QUICK_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    set: str
    source: str
    paths: _containers.RepeatedScalarFieldContainer[bytes]
    manifest: bool
    include: _containers.RepeatedScalarFieldContainer[str]
    exclude: _containers.RepeatedScalarFieldContainer[str]
    local_claim: str
    target_path: bytes
    delta: bool
    quick: bool
    delete: bool
    host: str
    def __init__(self, set: _Optional[str] = ..., source: _Optional[str] = ..., paths: _Optional[_Iterable[bytes]] = ..., manifest: _Optional[bool] = ..., include: _Optional[_Iterable[str]] = ..., exclude: _Optional[_Iterable[str]] = ..., local_claim: _Optional[str] = ..., target_path: _Optional[bytes] = ..., delta: _Optional[bool] = ..., quick: _Optional[bool] = ..., delete: _Optional[bool] = ..., host: _Optional[str] = ...) -> None: ...

class RestoreDbRequest(_message.Message):
    __slots__ = ("set", "source", "database", "target_time", "target_lsn", "target_path", "target_timeline", "fetch_with", "target_end", "restore_command", "local_claim", "delta", "quick", "host", "check_only", "check_local", "accept_wal_gap")
    SET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_TIME_FIELD_NUMBER: _ClassVar[int]
    TARGET_LSN_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_TIMELINE_FIELD_NUMBER: _ClassVar[int]
    FETCH_WITH_FIELD_NUMBER: _ClassVar[int]
    TARGET_END_FIELD_NUMBER: _ClassVar[int]
    RESTORE_COMMAND_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CLAIM_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    QUICK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CHECK_ONLY_FIELD_NUMBER: _ClassVar[int]
    CHECK_LOCAL_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_WAL_GAP_FIELD_NUMBER: _ClassVar[int]
    set: str
    source: str
    database: str
    target_time: str
    target_lsn: str
    target_path: bytes
    target_timeline: str
    fetch_with: str
    target_end: bool
    restore_command: str
    local_claim: str
    delta: bool
    quick: bool
    host: str
    check_only: bool
    check_local: bool
    accept_wal_gap: bool
    def __init__(self, set: _Optional[str] = ..., source: _Optional[str] = ..., database: _Optional[str] = ..., target_time: _Optional[str] = ..., target_lsn: _Optional[str] = ..., target_path: _Optional[bytes] = ..., target_timeline: _Optional[str] = ..., fetch_with: _Optional[str] = ..., target_end: _Optional[bool] = ..., restore_command: _Optional[str] = ..., local_claim: _Optional[str] = ..., delta: _Optional[bool] = ..., quick: _Optional[bool] = ..., host: _Optional[str] = ..., check_only: _Optional[bool] = ..., check_local: _Optional[bool] = ..., accept_wal_gap: _Optional[bool] = ...) -> None: ...

class RestoreDbToDsnRequest(_message.Message):
    __slots__ = ("set", "source", "database", "target_dsn", "host")
    SET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_DSN_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    set: str
    source: str
    database: str
    target_dsn: str
    host: str
    def __init__(self, set: _Optional[str] = ..., source: _Optional[str] = ..., database: _Optional[str] = ..., target_dsn: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class RestoreDbToDsnResult(_message.Message):
    __slots__ = ("set", "database", "kind", "tool", "bytes", "seconds")
    SET_FIELD_NUMBER: _ClassVar[int]
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    set: SetInfo
    database: str
    kind: str
    tool: str
    bytes: int
    seconds: float
    def __init__(self, set: _Optional[_Union[SetInfo, _Mapping]] = ..., database: _Optional[str] = ..., kind: _Optional[str] = ..., tool: _Optional[str] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class RestoreDbToDsnEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: RestoreDbToDsnResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[RestoreDbToDsnResult, _Mapping]] = ...) -> None: ...

class Xattr(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    value: bytes
    def __init__(self, name: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class EntryMeta(_message.Message):
    __slots__ = ("path", "kind", "mode", "uid", "gid", "mtime_ns", "size", "xattrs", "target", "link_to", "rdev", "sparse", "mtime_s", "chunks", "chunk_sizes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    XATTRS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LINK_TO_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    MTIME_S_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZES_FIELD_NUMBER: _ClassVar[int]
    path: bytes
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    xattrs: _containers.RepeatedCompositeFieldContainer[Xattr]
    target: bytes
    link_to: bytes
    rdev: int
    sparse: bool
    mtime_s: int
    chunks: _containers.RepeatedScalarFieldContainer[bytes]
    chunk_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, path: _Optional[bytes] = ..., kind: _Optional[str] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., size: _Optional[int] = ..., xattrs: _Optional[_Iterable[_Union[Xattr, _Mapping]]] = ..., target: _Optional[bytes] = ..., link_to: _Optional[bytes] = ..., rdev: _Optional[int] = ..., sparse: _Optional[bool] = ..., mtime_s: _Optional[int] = ..., chunks: _Optional[_Iterable[bytes]] = ..., chunk_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class RestoreRecord(_message.Message):
    __slots__ = ("entry", "data", "hole", "failed", "notice")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HOLE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    entry: EntryMeta
    data: bytes
    hole: int
    failed: str
    notice: str
    def __init__(self, entry: _Optional[_Union[EntryMeta, _Mapping]] = ..., data: _Optional[bytes] = ..., hole: _Optional[int] = ..., failed: _Optional[str] = ..., notice: _Optional[str] = ...) -> None: ...

class RestoreBatch(_message.Message):
    __slots__ = ("set", "records", "local", "delta", "files_total", "bytes_total", "progress", "chunk_id_key")
    SET_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_KEY_FIELD_NUMBER: _ClassVar[int]
    set: SetInfo
    records: _containers.RepeatedCompositeFieldContainer[RestoreRecord]
    local: LocalWriteResult
    delta: DeltaWriteResult
    files_total: int
    bytes_total: int
    progress: Progress
    chunk_id_key: bytes
    def __init__(self, set: _Optional[_Union[SetInfo, _Mapping]] = ..., records: _Optional[_Iterable[_Union[RestoreRecord, _Mapping]]] = ..., local: _Optional[_Union[LocalWriteResult, _Mapping]] = ..., delta: _Optional[_Union[DeltaWriteResult, _Mapping]] = ..., files_total: _Optional[int] = ..., bytes_total: _Optional[int] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., chunk_id_key: _Optional[bytes] = ...) -> None: ...

class DeltaWriteResult(_message.Message):
    __slots__ = ("files_checked", "bytes_checked", "files_written", "bytes_written", "entries_made", "metadata_fixed", "deleted", "extras_kept", "errors")
    FILES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    BYTES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FILES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_MADE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIXED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_KEPT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    files_checked: int
    bytes_checked: int
    files_written: int
    bytes_written: int
    entries_made: int
    metadata_fixed: int
    deleted: int
    extras_kept: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, files_checked: _Optional[int] = ..., bytes_checked: _Optional[int] = ..., files_written: _Optional[int] = ..., bytes_written: _Optional[int] = ..., entries_made: _Optional[int] = ..., metadata_fixed: _Optional[int] = ..., deleted: _Optional[int] = ..., extras_kept: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class LocalWriteResult(_message.Message):
    __slots__ = ("files", "dirs", "links", "bytes", "errors", "notices", "xattrs_skipped")
    FILES_FIELD_NUMBER: _ClassVar[int]
    DIRS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    XATTRS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    files: int
    dirs: int
    links: int
    bytes: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    notices: _containers.RepeatedScalarFieldContainer[str]
    xattrs_skipped: int
    def __init__(self, files: _Optional[int] = ..., dirs: _Optional[int] = ..., links: _Optional[int] = ..., bytes: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ..., notices: _Optional[_Iterable[str]] = ..., xattrs_skipped: _Optional[int] = ...) -> None: ...

class CheckProblem(_message.Message):
    __slots__ = ("message", "object_id", "sets", "paths")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    message: str
    object_id: str
    sets: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, message: _Optional[str] = ..., object_id: _Optional[str] = ..., sets: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CheckReport(_message.Message):
    __slots__ = ("ok", "errors", "warnings", "sets_checked", "packs_checked", "chunks_checked", "bytes_read", "advice", "notes")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    SETS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    PACKS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    ADVICE_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    errors: _containers.RepeatedCompositeFieldContainer[CheckProblem]
    warnings: _containers.RepeatedCompositeFieldContainer[CheckProblem]
    sets_checked: int
    packs_checked: int
    chunks_checked: int
    bytes_read: int
    advice: str
    notes: _containers.RepeatedCompositeFieldContainer[CheckProblem]
    def __init__(self, ok: _Optional[bool] = ..., errors: _Optional[_Iterable[_Union[CheckProblem, _Mapping]]] = ..., warnings: _Optional[_Iterable[_Union[CheckProblem, _Mapping]]] = ..., sets_checked: _Optional[int] = ..., packs_checked: _Optional[int] = ..., chunks_checked: _Optional[int] = ..., bytes_read: _Optional[int] = ..., advice: _Optional[str] = ..., notes: _Optional[_Iterable[_Union[CheckProblem, _Mapping]]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("set", "source", "read_data", "read_data_subset", "host")
    SET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    READ_DATA_FIELD_NUMBER: _ClassVar[int]
    READ_DATA_SUBSET_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    set: str
    source: str
    read_data: bool
    read_data_subset: str
    host: str
    def __init__(self, set: _Optional[str] = ..., source: _Optional[str] = ..., read_data: _Optional[bool] = ..., read_data_subset: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class VerifyEvent(_message.Message):
    __slots__ = ("progress", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    report: CheckReport
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., report: _Optional[_Union[CheckReport, _Mapping]] = ...) -> None: ...

class PruneRequest(_message.Message):
    __slots__ = ("dry_run", "source", "keep_full", "keep_differential", "keep_incremental", "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within", "keep_tags", "host", "wal_keep", "forget")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    KEEP_FULL_FIELD_NUMBER: _ClassVar[int]
    KEEP_DIFFERENTIAL_FIELD_NUMBER: _ClassVar[int]
    KEEP_INCREMENTAL_FIELD_NUMBER: _ClassVar[int]
    KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    KEEP_HOURLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_DAILY_FIELD_NUMBER: _ClassVar[int]
    KEEP_WEEKLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_MONTHLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_YEARLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_WITHIN_FIELD_NUMBER: _ClassVar[int]
    KEEP_TAGS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    WAL_KEEP_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    source: str
    keep_full: int
    keep_differential: int
    keep_incremental: int
    keep_last: int
    keep_hourly: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_yearly: int
    keep_within: str
    keep_tags: _containers.RepeatedScalarFieldContainer[str]
    host: str
    wal_keep: str
    forget: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dry_run: _Optional[bool] = ..., source: _Optional[str] = ..., keep_full: _Optional[int] = ..., keep_differential: _Optional[int] = ..., keep_incremental: _Optional[int] = ..., keep_last: _Optional[int] = ..., keep_hourly: _Optional[int] = ..., keep_daily: _Optional[int] = ..., keep_weekly: _Optional[int] = ..., keep_monthly: _Optional[int] = ..., keep_yearly: _Optional[int] = ..., keep_within: _Optional[str] = ..., keep_tags: _Optional[_Iterable[str]] = ..., host: _Optional[str] = ..., wal_keep: _Optional[str] = ..., forget: _Optional[_Iterable[str]] = ...) -> None: ...

class RetentionDecision(_message.Message):
    __slots__ = ("set", "keep", "reasons", "host", "source", "level", "time")
    SET_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    set: str
    keep: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    host: str
    source: str
    level: str
    time: float
    def __init__(self, set: _Optional[str] = ..., keep: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., host: _Optional[str] = ..., source: _Optional[str] = ..., level: _Optional[str] = ..., time: _Optional[float] = ...) -> None: ...

class PruneReply(_message.Message):
    __slots__ = ("forgotten", "kept", "packs_deleted", "packs_rewritten", "bytes_freed", "dry_run", "decisions", "wal_forgotten", "waiting_packs", "waiting_bytes", "waiting_on")
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    PACKS_DELETED_FIELD_NUMBER: _ClassVar[int]
    PACKS_REWRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    WAL_FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    WAITING_PACKS_FIELD_NUMBER: _ClassVar[int]
    WAITING_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAITING_ON_FIELD_NUMBER: _ClassVar[int]
    forgotten: _containers.RepeatedScalarFieldContainer[str]
    kept: _containers.RepeatedScalarFieldContainer[str]
    packs_deleted: int
    packs_rewritten: int
    bytes_freed: int
    dry_run: bool
    decisions: _containers.RepeatedCompositeFieldContainer[RetentionDecision]
    wal_forgotten: _containers.RepeatedScalarFieldContainer[str]
    waiting_packs: int
    waiting_bytes: int
    waiting_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, forgotten: _Optional[_Iterable[str]] = ..., kept: _Optional[_Iterable[str]] = ..., packs_deleted: _Optional[int] = ..., packs_rewritten: _Optional[int] = ..., bytes_freed: _Optional[int] = ..., dry_run: _Optional[bool] = ..., decisions: _Optional[_Iterable[_Union[RetentionDecision, _Mapping]]] = ..., wal_forgotten: _Optional[_Iterable[str]] = ..., waiting_packs: _Optional[int] = ..., waiting_bytes: _Optional[int] = ..., waiting_on: _Optional[_Iterable[str]] = ...) -> None: ...

class UnlockRequest(_message.Message):
    __slots__ = ("host", "remove_all")
    HOST_FIELD_NUMBER: _ClassVar[int]
    REMOVE_ALL_FIELD_NUMBER: _ClassVar[int]
    host: str
    remove_all: bool
    def __init__(self, host: _Optional[str] = ..., remove_all: _Optional[bool] = ...) -> None: ...

class LockInfo(_message.Message):
    __slots__ = ("name", "host", "pid", "purpose", "time", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    host: str
    pid: int
    purpose: str
    time: float
    description: str
    def __init__(self, name: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., purpose: _Optional[str] = ..., time: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class UnlockReply(_message.Message):
    __slots__ = ("removed", "kept")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedCompositeFieldContainer[LockInfo]
    kept: _containers.RepeatedCompositeFieldContainer[LockInfo]
    def __init__(self, removed: _Optional[_Iterable[_Union[LockInfo, _Mapping]]] = ..., kept: _Optional[_Iterable[_Union[LockInfo, _Mapping]]] = ...) -> None: ...

class RepairIndexRequest(_message.Message):
    __slots__ = ("read_data", "dry_run")
    READ_DATA_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    read_data: bool
    dry_run: bool
    def __init__(self, read_data: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class RepairIndexReport(_message.Message):
    __slots__ = ("packs_listed", "packs_read", "missing_packs", "entries_missing", "damaged_packs", "entries_damaged", "unindexed_packs", "blobs_added", "blobs_indexed", "index_files_replaced", "damaged_index_files", "index_file", "read_data", "dry_run", "blobs_copied", "trees_restored")
    PACKS_LISTED_FIELD_NUMBER: _ClassVar[int]
    PACKS_READ_FIELD_NUMBER: _ClassVar[int]
    MISSING_PACKS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_MISSING_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_PACKS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_DAMAGED_FIELD_NUMBER: _ClassVar[int]
    UNINDEXED_PACKS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_ADDED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_INDEXED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FILES_REPLACED_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_INDEX_FILES_FIELD_NUMBER: _ClassVar[int]
    INDEX_FILE_FIELD_NUMBER: _ClassVar[int]
    READ_DATA_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    BLOBS_COPIED_FIELD_NUMBER: _ClassVar[int]
    TREES_RESTORED_FIELD_NUMBER: _ClassVar[int]
    packs_listed: int
    packs_read: int
    missing_packs: _containers.RepeatedScalarFieldContainer[str]
    entries_missing: int
    damaged_packs: _containers.RepeatedScalarFieldContainer[str]
    entries_damaged: int
    unindexed_packs: _containers.RepeatedScalarFieldContainer[str]
    blobs_added: int
    blobs_indexed: int
    index_files_replaced: int
    damaged_index_files: _containers.RepeatedScalarFieldContainer[str]
    index_file: str
    read_data: bool
    dry_run: bool
    blobs_copied: int
    trees_restored: int
    def __init__(self, packs_listed: _Optional[int] = ..., packs_read: _Optional[int] = ..., missing_packs: _Optional[_Iterable[str]] = ..., entries_missing: _Optional[int] = ..., damaged_packs: _Optional[_Iterable[str]] = ..., entries_damaged: _Optional[int] = ..., unindexed_packs: _Optional[_Iterable[str]] = ..., blobs_added: _Optional[int] = ..., blobs_indexed: _Optional[int] = ..., index_files_replaced: _Optional[int] = ..., damaged_index_files: _Optional[_Iterable[str]] = ..., index_file: _Optional[str] = ..., read_data: _Optional[bool] = ..., dry_run: _Optional[bool] = ..., blobs_copied: _Optional[int] = ..., trees_restored: _Optional[int] = ...) -> None: ...

class RepairIndexEvent(_message.Message):
    __slots__ = ("progress", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    report: RepairIndexReport
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., report: _Optional[_Union[RepairIndexReport, _Mapping]] = ...) -> None: ...

class RepairSetsRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class RemovedSet(_message.Message):
    __slots__ = ("set", "reason")
    SET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    set: str
    reason: str
    def __init__(self, set: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RepairSetsReply(_message.Message):
    __slots__ = ("removed", "kept", "newer", "dry_run", "refused", "restored")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    NEWER_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedCompositeFieldContainer[RemovedSet]
    kept: int
    newer: _containers.RepeatedScalarFieldContainer[str]
    dry_run: bool
    refused: _containers.RepeatedCompositeFieldContainer[RemovedSet]
    restored: _containers.RepeatedCompositeFieldContainer[RemovedSet]
    def __init__(self, removed: _Optional[_Iterable[_Union[RemovedSet, _Mapping]]] = ..., kept: _Optional[int] = ..., newer: _Optional[_Iterable[str]] = ..., dry_run: _Optional[bool] = ..., refused: _Optional[_Iterable[_Union[RemovedSet, _Mapping]]] = ..., restored: _Optional[_Iterable[_Union[RemovedSet, _Mapping]]] = ...) -> None: ...

class RepairWalRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class RemovedWal(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RepairWalReply(_message.Message):
    __slots__ = ("removed", "kept", "refused", "dry_run")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedCompositeFieldContainer[RemovedWal]
    kept: int
    refused: _containers.RepeatedCompositeFieldContainer[RemovedWal]
    dry_run: bool
    def __init__(self, removed: _Optional[_Iterable[_Union[RemovedWal, _Mapping]]] = ..., kept: _Optional[int] = ..., refused: _Optional[_Iterable[_Union[RemovedWal, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class WalPushRequest(_message.Message):
    __slots__ = ("name", "data", "wal_namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WAL_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    wal_namespace: str
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ..., wal_namespace: _Optional[str] = ...) -> None: ...

class WalPushReply(_message.Message):
    __slots__ = ("stored", "wal_namespace")
    STORED_FIELD_NUMBER: _ClassVar[int]
    WAL_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    wal_namespace: str
    def __init__(self, stored: _Optional[bool] = ..., wal_namespace: _Optional[str] = ...) -> None: ...

class WalFetchRequest(_message.Message):
    __slots__ = ("name", "wal_namespace", "local_claim", "target_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WAL_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CLAIM_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    wal_namespace: str
    local_claim: str
    target_path: bytes
    def __init__(self, name: _Optional[str] = ..., wal_namespace: _Optional[str] = ..., local_claim: _Optional[str] = ..., target_path: _Optional[bytes] = ...) -> None: ...

class WalFetchReply(_message.Message):
    __slots__ = ("data", "local_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LOCAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    local_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., local_bytes: _Optional[int] = ...) -> None: ...

class CheckDbRequest(_message.Message):
    __slots__ = ("database", "timeout")
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    database: str
    timeout: float
    def __init__(self, database: _Optional[str] = ..., timeout: _Optional[float] = ...) -> None: ...

class CheckDbStep(_message.Message):
    __slots__ = ("name", "ok", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class CheckDbReply(_message.Message):
    __slots__ = ("ok", "steps", "segment", "seconds")
    OK_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    steps: _containers.RepeatedCompositeFieldContainer[CheckDbStep]
    segment: str
    seconds: float
    def __init__(self, ok: _Optional[bool] = ..., steps: _Optional[_Iterable[_Union[CheckDbStep, _Mapping]]] = ..., segment: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class RestoreChunksRequest(_message.Message):
    __slots__ = ("set", "source", "ids", "host")
    SET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    set: str
    source: str
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    host: str
    def __init__(self, set: _Optional[str] = ..., source: _Optional[str] = ..., ids: _Optional[_Iterable[bytes]] = ..., host: _Optional[str] = ...) -> None: ...

class RestoreChunksReply(_message.Message):
    __slots__ = ("index", "data", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    error: str
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class KeyListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RepositoryKeyInfo(_message.Message):
    __slots__ = ("id", "type", "created", "kdf", "current", "problem", "access")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    KDF_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    created: float
    kdf: str
    current: bool
    problem: str
    access: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., created: _Optional[float] = ..., kdf: _Optional[str] = ..., current: _Optional[bool] = ..., problem: _Optional[str] = ..., access: _Optional[str] = ...) -> None: ...

class KeyListReply(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[RepositoryKeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[RepositoryKeyInfo, _Mapping]]] = ...) -> None: ...

class KeyAddRequest(_message.Message):
    __slots__ = ("passphrase", "key_file", "write_only")
    PASSPHRASE_FIELD_NUMBER: _ClassVar[int]
    KEY_FILE_FIELD_NUMBER: _ClassVar[int]
    WRITE_ONLY_FIELD_NUMBER: _ClassVar[int]
    passphrase: bytes
    key_file: bytes
    write_only: bool
    def __init__(self, passphrase: _Optional[bytes] = ..., key_file: _Optional[bytes] = ..., write_only: _Optional[bool] = ...) -> None: ...

class KeyAddReply(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class KeyRemoveRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class KeyRemoveReply(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CopyRequest(_message.Message):
    __slots__ = ("to", "passphrase", "key_file", "source", "sets", "host")
    TO_FIELD_NUMBER: _ClassVar[int]
    PASSPHRASE_FIELD_NUMBER: _ClassVar[int]
    KEY_FILE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    to: str
    passphrase: bytes
    key_file: bytes
    source: str
    sets: _containers.RepeatedScalarFieldContainer[str]
    host: str
    def __init__(self, to: _Optional[str] = ..., passphrase: _Optional[bytes] = ..., key_file: _Optional[bytes] = ..., source: _Optional[str] = ..., sets: _Optional[_Iterable[str]] = ..., host: _Optional[str] = ...) -> None: ...

class CopySetPair(_message.Message):
    __slots__ = ("source_set", "copied_set")
    SOURCE_SET_FIELD_NUMBER: _ClassVar[int]
    COPIED_SET_FIELD_NUMBER: _ClassVar[int]
    source_set: str
    copied_set: str
    def __init__(self, source_set: _Optional[str] = ..., copied_set: _Optional[str] = ...) -> None: ...

class CopyResult(_message.Message):
    __slots__ = ("copied", "present", "wal_copied", "wal_present", "bytes_read", "bytes_added", "warnings", "failed")
    COPIED_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    WAL_COPIED_FIELD_NUMBER: _ClassVar[int]
    WAL_PRESENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_ADDED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    copied: _containers.RepeatedCompositeFieldContainer[CopySetPair]
    present: _containers.RepeatedCompositeFieldContainer[CopySetPair]
    wal_copied: int
    wal_present: int
    bytes_read: int
    bytes_added: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    failed: _containers.RepeatedCompositeFieldContainer[CopySetFailure]
    def __init__(self, copied: _Optional[_Iterable[_Union[CopySetPair, _Mapping]]] = ..., present: _Optional[_Iterable[_Union[CopySetPair, _Mapping]]] = ..., wal_copied: _Optional[int] = ..., wal_present: _Optional[int] = ..., bytes_read: _Optional[int] = ..., bytes_added: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., failed: _Optional[_Iterable[_Union[CopySetFailure, _Mapping]]] = ...) -> None: ...

class CopySetFailure(_message.Message):
    __slots__ = ("source_set", "error")
    SOURCE_SET_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    source_set: str
    error: str
    def __init__(self, source_set: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class CopyEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: CopyResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[CopyResult, _Mapping]] = ...) -> None: ...
