"""The daemon's configuration: the TOML file (or command-line defaults) as frozen dataclasses.

Everything is validated when loaded, so the rest of the daemon can trust a `Config`: every
key is known ("unknown key 'daemon.sockt'" otherwise), types and ranges are right, durations
are float seconds, cron expressions parse, source names are unique, a source's database
names a [[database]], a TCP listener has TLS and a token, and the metrics endpoint is on a
loopback address. Relative paths are taken relative to the config file's directory and all
paths are made absolute. Errors are `ConfigError` with one line naming the key, and the line of
the file it is written on where that can be told (daemon/runtime/config_lines.py).

What a valid file is (tables, keys, types, defaults, rules) is declared once, as a schema, in
daemon/runtime/config_schema.py; this module reads the file, has it validated there, and builds the
dataclasses the rest of the daemon imports from here.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import tomlkit
from cairn import protocol
from cairn.daemon.runtime import config_schema as schema
from cairn.daemon.runtime.config_lines import line_of
from cairn.daemon.runtime.config_schema import (  # noqa: F401  (the names other modules import from here)
    DAEMON_KEYS,
    DATABASE_KEYS,
    DATABASE_KINDS,
    HOOK_KEYS,
    LOG_LEVELS,
    QUIESCE_KEYS,
    QUIESCE_MODES,
    REPOSITORY_KEYS,
    S3_KEYS,
    SOURCE_KEYS,
    TOP_KEYS,
    DecimalInt,
    is_loopback,
    split_address,
)
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.locations import S3Options, is_s3
from cairn.store.model import PrunePolicy
from cairn.store.snapshots.excludes import Excluder

DEFAULT_SOCKET_NAME = protocol.SOCKET_NAME
ROOT_RUNTIME_DIR = protocol.ROOT_RUNTIME_DIR


class ConfigError(InvalidArgumentError):
    """The configuration is malformed; `key` names the offending key ('' for the whole file)."""

    code = "invalid_config"

    def __init__(self, origin: str | None, key: str, detail: str, line: int | None = None) -> None:
        where = f"invalid config '{origin}'" if origin else "invalid configuration"
        at = f" (line {line})" if line else ""
        super().__init__(f"{where}: {key}: {detail}{at}" if key else f"{where}: {detail}{at}")
        self.key = key
        self.detail = detail
        self.line = line


@dataclass(frozen=True)
class RepositoryConfig:
    path: str  # a local directory (absolute) or s3://bucket/prefix
    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    credentials_file: str | None = None
    stall_timeout: float | None = None  # seconds an object-store operation may wait unanswered (None: default)
    gc: str | None = None  # cron of scheduled retention + garbage collection
    wal_keep: float | None = None  # seconds of WAL kept for point-in-time recovery (None: all)
    gc_grace: float | None = None  # seconds a pack marked by garbage collection waits (None: store default)
    passphrase_file: str | None = None  # what opens an encrypted (format 2) repository;
    key_file: str | None = None  # with both, the passphrase is tried first
    uploads: int | None = None  # pack uploads in flight per backup (None: the backend's default)
    cache_size: int | None = None  # bytes of index/tree/set objects cached in the state dir (None: default)

    def s3_options(self) -> S3Options | None:
        """The object-store options, None when none was given."""
        options = S3Options(self.endpoint, self.region, self.path_style, self.credentials_file, self.stall_timeout)
        return None if options == S3Options() else options


@dataclass(frozen=True)
class DaemonConfig:
    socket: str
    state_dir: str
    socket_mode: int = 0o660
    socket_group: str | None = None
    listen: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None
    metrics: str | None = None
    read_only: bool = False
    shutdown_timeout: float = 30.0
    backstop_interval: float = 86400.0
    archiver_interval: float = 60.0  # how often each PostgreSQL server's archiver is sampled (0: never)
    max_watches: int | None = None
    log_level: str = "info"
    max_wal_size: int = 1 << 30  # largest WAL file a push may carry (PostgreSQL's largest segment)
    host: str | None = None  # the host name recorded in sets (None: the machine's)
    skip_unchanged: bool = True  # daemon/changes/skip.py


@dataclass(frozen=True)
class HookLevel:
    """One level of a window's hook stack: its freeze commands run in order when the window
    opens; if any of them ran, its thaw commands run (in order) when the window closes."""

    freeze: tuple[tuple[str, ...], ...] = ()
    thaw: tuple[tuple[str, ...], ...] = ()
    timeout: float = 60.0
    required: bool = True


@dataclass(frozen=True)
class QuiesceConfig:
    mode: str
    freeze: tuple[tuple[str, ...], ...] = ()
    thaw: tuple[tuple[str, ...], ...] = ()
    timeout: float = 60.0
    max_window: float = 900.0
    required: bool = True
    hooks: tuple[HookLevel, ...] = ()          # the explicit stack form (quiesce.hooks)
    on_success: tuple[tuple[str, ...], ...] = ()
    on_failure: tuple[tuple[str, ...], ...] = ()

    def levels(self) -> tuple[HookLevel, ...]:
        """The hook stack, lowest level first: levels freeze in this order and thaw in reverse.

        `hooks` gives it explicitly. From `freeze`/`thaw`: with as many freeze as thaw commands
        (more than one), freeze[i] pairs with thaw[i]; otherwise they form one level (its thaw
        commands run in the order written)."""
        if self.hooks:
            return self.hooks
        if not self.freeze and not self.thaw:
            return ()
        if len(self.freeze) == len(self.thaw) > 1:
            return tuple(HookLevel((f,), (t,), self.timeout, self.required)
                         for f, t in zip(self.freeze, self.thaw, strict=True))
        return (HookLevel(self.freeze, self.thaw, self.timeout, self.required),)


@dataclass(frozen=True)
class SourceConfig:
    name: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    watch: bool = True
    rpo: float | None = None
    schedule: dict[str, str] = field(default_factory=dict, hash=False)
    database: str | None = None                # the first of `databases` (kept for older callers)
    quiesce: QuiesceConfig | None = None
    one_file_system: bool = False
    aux_paths: tuple[str, ...] = ()
    keep: PrunePolicy | None = None  # retention policy of the source's sets
    databases: tuple[str, ...] = ()            # every database captured with the source, in order
    capture_first: tuple[str, ...] = ()        # sub-paths captured first, kept at their place
    tags: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # level -> strftime tags
    # The daemon's own directories below one of `paths` (its state directory, a local
    # repository): never watched, never captured (see keep_out_own_dirs).
    own_dirs: tuple[str, ...] = ()

    def path_excludes(self) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
        """(patterns for every path, ((path, patterns anchored to that path), ...)).

        A pattern that starts with one of the source's paths and a '/' applies under that path
        only, anchored at it ('/srv/app/data/cache/' is '/cache/' under '/srv/app/data')."""
        common: list[str] = []
        anchored: dict[str, list[str]] = {}
        for pattern in self.exclude:
            neg, body = ("!", pattern[1:]) if pattern.startswith("!") else ("", pattern)
            root = anchor_of(body, self.paths)
            if root is None:
                common.append(pattern)
            else:
                anchored.setdefault(root, []).append(neg + body[len(root.rstrip("/")):])
        for own in self.own_dirs:  # last, so that no pattern of the operator's brings them back
            placed = _place_below(own, self.paths)
            if placed is not None:
                anchored.setdefault(placed[0], []).append("/" + _literal_pattern(placed[1]) + "/")
        return tuple(common), tuple((p, tuple(v)) for p, v in anchored.items())

    def scheduled_tags(self, level: str, when: float) -> tuple[str, ...]:
        """The tags of a set taken by the schedule at `level`, strftime fields filled in (local time)."""
        stamp = datetime.fromtimestamp(when)
        return tuple(stamp.strftime(t) for t in self.tags.get(level, ()))


def _place_below(directory: str, paths: Sequence[str]) -> tuple[str, str] | None:
    """(the path of `paths` that `directory` lies strictly below, the relative path from it), links
    resolved on both sides; None when it lies below none."""
    real = os.path.realpath(directory)
    for path in sorted(paths, key=len, reverse=True):
        base = os.path.realpath(path)
        if real.startswith(base.rstrip("/") + "/"):
            return path, os.path.relpath(real, base)
    return None


def _literal_pattern(relative: str) -> str:
    """A gitignore pattern that matches `relative` literally (wildcards and spaces escaped)."""
    return "".join("\\" + c if c in "\\*?[] " else c for c in relative)


def keep_out_own_dirs(config: Config) -> Config:
    """`config` with each source's `own_dirs`: the daemon's state directory and a local repository
    when they lie below one of the source's paths (the embedded default's state directory
    ~/.local/share/cairn is inside a source of $HOME). The daemon writes there all the time
    (its journal, window records, dump work directories, packs), so watching them would feed
    the change journal its own writes, make every cold window look written to, and every set
    would hold the daemon's live state and the repository's packs again."""
    own = [config.daemon.state_dir]
    if not is_s3(config.repository.path):
        own.append(config.repository.path)
    sources = []
    for src in config.sources:
        inside = tuple(d for d in own if d and _place_below(d, src.paths) is not None)
        sources.append(replace(src, own_dirs=inside) if inside != src.own_dirs else src)
    return replace(config, sources=tuple(sources))


def overlapping_paths(sources: Sequence[SourceConfig]) -> list[tuple[str, str]]:
    """(key, detail) of each path of a source that is a path of an earlier source, or lies inside
    one (or holds one) that the outer source does not exclude: its files are captured, watched and
    restored by both sources. Allowed (a cold nightly source and a hot hourly one over the same
    tree are a reason to), and warned of at start (preflight.warn_overlapping_sources), since
    it is more often a mistake."""
    found: list[tuple[str, str]] = []
    for later, source in enumerate(sources):
        for position, path in enumerate(source.paths):
            key = f"source[{later}].paths[{position}]"
            mine = os.path.realpath(path)
            for earlier, other in enumerate(sources[:later]):
                for their in other.paths:
                    theirs = os.path.realpath(their)
                    name = f"source '{other.name}' (source[{earlier}])"
                    if mine == theirs:
                        found.append((key, f"'{path}' is also a path of {name}: its files are in both sources' "
                                           "sets (meant for, say, a cold and a hot source of one tree; else "
                                           "give each directory to one source)"))
                    elif _under(mine, theirs) and not _excludes(other, their, os.path.relpath(mine, theirs)):
                        found.append((key, f"'{path}' lies inside path '{their}' of {name}: its files are in "
                                           f"both sources' sets (unless meant, exclude it there "
                                           f"('{path.rstrip('/')}/') or drop it here)"))
                    elif _under(theirs, mine) and not _excludes(source, path, os.path.relpath(theirs, mine)):
                        found.append((key, f"'{path}' holds path '{their}' of {name}: its files are in both "
                                           f"sources' sets (unless meant, exclude it here ('{their.rstrip('/')}/') "
                                           "or drop it there)"))
    return found


def _under(path: str, root: str) -> bool:
    """`path` lies strictly below directory `root` (both normalised)."""
    return path != root and path.startswith(root.rstrip("/") + "/")


def _excludes(source: SourceConfig, root: str, rel: str) -> bool:
    """`source` leaves out directory `rel` (or a directory above it) under its path `root`."""
    common, anchored = source.path_excludes()
    own = next((patterns for path, patterns in anchored if path == root), ())
    return Excluder((*common, *own)).excluded(rel, is_dir=True)


def anchor_of(pattern: str, paths: Sequence[str]) -> str | None:
    """The source path an exclude pattern is anchored to, or None for an unanchored pattern."""
    if not pattern.startswith("/"):
        return None
    for path in sorted(paths, key=len, reverse=True):
        if pattern.startswith(path.rstrip("/") + "/") and len(pattern) > len(path.rstrip("/")) + 1:
            return path
    return None


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    dsn: str = ""
    pgdata: str = ""            # kind 'postgres' only
    wal_timeout: float = 600.0  # how long a set waits after the window for its WAL to be archived
    kind: str = "postgres"      # one of DATABASE_KINDS (the engine that captures it: daemon/databases/)
    dump: tuple[str, ...] = ()     # kind 'command': argv of the dump ({dir}: the dump is that directory)
    restore: tuple[str, ...] = ()  # kind 'command': argv of the restore ({target}: the --target-dsn text)
    check: tuple[str, ...] = ()    # kind 'command': argv run before the window; failing, it fails the set
    timeout: float = 3600.0     # dump engines: bound of one dump (the window's max_window bounds it too)
    jobs: int = 2               # kind 'pg_dump': parallel jobs of pg_dump and pg_restore


@dataclass(frozen=True)
class Config:
    repository: RepositoryConfig
    daemon: DaemonConfig
    sources: tuple[SourceConfig, ...] = ()
    databases: tuple[DatabaseConfig, ...] = ()
    path: str | None = None

    def source(self, name: str) -> SourceConfig:
        """The source called `name`; NotFoundError if there is none."""
        for source in self.sources:
            if source.name == name:
                return source
        raise NotFoundError(f"unknown source '{name}'")

    def database(self, name: str) -> DatabaseConfig:
        """The database called `name`; NotFoundError if there is none."""
        for database in self.databases:
            if database.name == name:
                return database
        raise NotFoundError(f"unknown database '{name}'")

    def schedules(self) -> dict[str, dict[str, str]]:
        """{source: {level: cron}} for the sources that have a schedule (the scheduler's input)."""
        return {source.name: dict(source.schedule) for source in self.sources if source.schedule}


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str) -> Config:
    """Read, parse and validate the TOML file at `path`."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(path, "", f"unable to read file: {exc.strerror or exc}") from exc
    return parse_config(raw, path, os.path.dirname(os.path.abspath(path)))


def parse_config(raw: bytes, origin: str | None, base_dir: str) -> Config:
    """Parse and validate the TOML text `raw` of the file `origin` (None: not from a file);
    relative paths are taken from `base_dir`."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(origin, "", f"not valid TOML: not UTF-8 ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(origin, "", f"not valid TOML: {exc}") from exc
    _mark_decimal_mode(data, raw)
    try:
        return _Loader(origin, base_dir).config(data)
    except ConfigError as exc:
        # the line the key is written on, when the file writes it in a form config_lines follows
        unknown = re.fullmatch(r"unknown key '(.+)'", exc.detail) if not exc.key else None
        line = line_of(raw.decode("utf-8"), exc.key or (unknown.group(1) if unknown else ""))
        if line is None or exc.line is not None:
            raise
        raise ConfigError(origin, exc.key, exc.detail, line) from None


def _mark_decimal_mode(data: dict[str, Any], raw: bytes) -> None:
    # tomllib gives 0o660 and 432 alike; the literal as written decides. tomlkit keeps it. An
    # integer whose literal cannot be recovered counts as decimal: refused, never misread.
    table = data.get("daemon")
    if not isinstance(table, dict):
        return
    value = table.get("socket_mode")
    if isinstance(value, bool) or not isinstance(value, int):
        return
    try:
        literal = tomlkit.parse(raw.decode("utf-8"))["daemon"]["socket_mode"].as_string()
    except Exception:  # tomlkit and tomllib disagreeing is no reason to guess
        literal = ""
    if not literal.lstrip("+").startswith("0o"):
        table["socket_mode"] = DecimalInt(value)


def config_from_args(repo: str, sources: Sequence[str], read_only: bool, home: str | None = None) -> Config:
    """The embedded-defaults configuration of `cairnd --repo DIR [--source DIR ...]`.

    State lives in `home` (default: see default_home()); the socket in
    $XDG_RUNTIME_DIR/cairn, else /run/cairn when running as root, else in `home`. Each
    source directory becomes a watched source named after its basename ("data", "data-2"
    when two directories share one); a directory given twice is one source.
    """
    state_dir = os.path.abspath(os.path.expanduser(home or default_home()))
    daemon = DaemonConfig(socket=default_socket(state_dir), state_dir=state_dir, read_only=read_only)
    built: list[SourceConfig] = []
    seen_paths: set[str] = set()
    names: set[str] = set()
    for index, directory in enumerate(sources):
        if not isinstance(directory, str) or not directory:
            raise ConfigError(None, f"--source[{index}]", f"expected a directory, got {directory!r}")
        path = os.path.abspath(os.path.expanduser(directory))
        if path in seen_paths:
            continue
        seen_paths.add(path)
        name = _unique_name(_name_for(path), names)
        names.add(name)
        built.append(SourceConfig(name=name, paths=(path,)))
    if not repo:
        raise ConfigError(None, "--repo", "expected a repository directory")
    for source in built:
        for other in built:
            if _under(os.path.realpath(source.paths[0]), os.path.realpath(other.paths[0])):
                raise ConfigError(None, "--source", f"'{source.paths[0]}' lies inside '{other.paths[0]}', also given: "
                                  "its files would be in both sources' sets; give only one of them")
    repository = RepositoryConfig(path=repo if is_s3(repo) else os.path.abspath(os.path.expanduser(repo)))
    return keep_out_own_dirs(Config(repository=repository, daemon=daemon, sources=tuple(built), databases=(),
                                    path=None))


def default_home() -> str:
    """$CAIRN_HOME, else systemd's $STATE_DIRECTORY, else ~/.local/share/cairn (cairn.protocol)."""
    return protocol.default_home()


def default_socket(home: str) -> str:
    """$XDG_RUNTIME_DIR/cairn/cairnd.sock, /run/cairn/cairnd.sock for root, else in `home`:
    the rule the client follows too (cairn.protocol)."""
    return protocol.default_socket(home)


def _name_for(path: str) -> str:
    base = os.path.basename(path.rstrip("/")) or "root"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")[:64]
    return cleaned or "source"


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, counter = name, 2
    while candidate in taken:
        candidate, counter = f"{name}-{counter}", counter + 1
    return candidate


# ---------------------------------------------------------------------------------------------
# From the validated file to the dataclasses


class _Loader:
    """Turns parsed TOML into a Config: validated against the declared schema (config_schema.py),
    then the defaults that depend on the environment (state directory, socket) filled in."""

    def __init__(self, origin: str | None, base_dir: str) -> None:
        self.origin = origin
        self.base_dir = base_dir

    def config(self, data: Mapping[str, Any]) -> Config:
        try:
            file = schema.validate(data, self.base_dir)
        except schema.SchemaError as exc:
            raise ConfigError(self.origin, exc.key, exc.detail) from None
        sources = tuple(self.source(table) for table in file.source)
        return keep_out_own_dirs(Config(
            repository=self.repository(file.repository),
            daemon=self.daemon(file.daemon),
            sources=sources,
            databases=tuple(self.database(table) for table in file.database),
            path=os.path.abspath(self.origin) if self.origin else None,
        ))

    def repository(self, table: schema.RepositoryTable) -> RepositoryConfig:
        path = table.path
        if not is_s3(path):
            if "\0" in path:
                raise ConfigError(self.origin, "repository.path", "path contains a NUL byte")
            path = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(path)))
        return RepositoryConfig(
            path=path, endpoint=table.endpoint, region=table.region, path_style=table.path_style,
            credentials_file=table.credentials_file, stall_timeout=table.stall_timeout,
            gc=table.gc, wal_keep=table.wal_keep,
            gc_grace=table.gc_grace, passphrase_file=table.passphrase_file, key_file=table.key_file,
            uploads=table.uploads, cache_size=table.cache_size,
        )

    def daemon(self, table: schema.DaemonTable) -> DaemonConfig:
        values = table.model_dump()
        values["state_dir"] = table.state_dir or os.path.abspath(default_home())
        values["socket"] = table.socket or default_socket(values["state_dir"])
        return DaemonConfig(**values)

    def source(self, table: schema.SourceTable) -> SourceConfig:
        return SourceConfig(
            name=table.name,
            paths=table.paths,
            exclude=table.exclude,
            watch=table.watch,
            rpo=table.rpo,
            schedule=dict(table.schedule),
            database=table.database[0] if table.database else None,
            quiesce=None if table.quiesce is None else self.quiesce(table.quiesce),
            one_file_system=table.one_file_system,
            aux_paths=table.aux_paths,
            keep=table.keep,
            databases=table.database,
            capture_first=table.capture_first,
            tags=dict(table.tags),
        )

    def quiesce(self, table: schema.QuiesceTable) -> QuiesceConfig:
        hooks = tuple(
            HookLevel(freeze=level.freeze, thaw=level.thaw,
                      timeout=table.timeout if level.timeout is None else level.timeout,
                      required=table.required if level.required is None else level.required)
            for level in table.hooks
        )
        return QuiesceConfig(
            mode=table.mode, freeze=table.freeze, thaw=table.thaw, timeout=table.timeout,
            max_window=table.max_window, required=table.required, hooks=hooks,
            on_success=table.on_success, on_failure=table.on_failure,
        )

    def database(self, table: schema.DatabaseTable) -> DatabaseConfig:
        return DatabaseConfig(
            name=table.name, dsn=table.dsn or "", pgdata=table.pgdata or "", wal_timeout=table.wal_timeout,
            kind=table.kind, dump=table.dump or (), restore=table.restore or (), check=table.check or (),
            timeout=table.timeout, jobs=table.jobs,
        )
