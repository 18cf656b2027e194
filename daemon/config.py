"""The daemon's configuration: the TOML file (or command-line defaults) as frozen dataclasses.

Everything is validated when loaded, so the rest of the daemon can trust a `Config`: every
key is known ("unknown key 'daemon.sockt'" otherwise), types and ranges are right, durations
are float seconds, cron expressions parse, source names are unique, a source's database
names a [[database]], a TCP listener has TLS and a token, and the metrics endpoint is on a
loopback address. Relative paths are taken relative to the config file's directory and all
paths are made absolute. Errors are `ConfigError` with one line naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pathspec
import tomlkit
from cairn.daemon.cron import CronExpr
from cairn.daemon.durations import parse_duration
from cairn.daemon.retention import keep_policy
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.locations import S3Options, is_s3, parse_s3
from cairn.store.model import LEVELS, PrunePolicy

DEFAULT_SOCKET_NAME = "cairnd.sock"
ROOT_RUNTIME_DIR = "/run/cairn"
LOG_LEVELS = ("debug", "info", "warning", "error")
QUIESCE_MODES = ("cold", "hot")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Every key the file may hold, per table; the loaders below read exactly these.
S3_KEYS = ("endpoint", "region", "path_style", "credentials_file")  # only with an s3:// path
REPOSITORY_KEYS = ("path", *S3_KEYS, "gc", "gc_grace", "wal_keep", "passphrase_file", "key_file", "uploads",
                   "cache_size")
MAX_UPLOADS = 64
DAEMON_KEYS = (
    "socket", "state_dir", "socket_mode", "socket_group", "listen", "tls_cert", "tls_key", "token_file",
    "metrics", "read_only", "shutdown_timeout", "backstop_interval", "max_watches", "log_level",
    "max_wal_size", "host",
    "skip_unchanged",
)
SOURCE_KEYS = (
    "name", "paths", "exclude", "watch", "rpo", "schedule", "database", "quiesce", "one_file_system",
    "aux_paths", "keep", "capture_first", "tags",
)
QUIESCE_KEYS = ("mode", "freeze", "thaw", "timeout", "max_window", "required", "hooks", "on_success",
                "on_failure")
HOOK_KEYS = ("freeze", "thaw", "timeout", "required")
DATABASE_KEYS = ("name", "dsn", "pgdata", "wal_timeout", "kind", "dump", "restore", "timeout", "jobs")
DATABASE_KINDS = ("postgres", "pg_dump", "command")  # base backup + WAL; pg_dump over the network; any dump tool
TOP_KEYS = ("repository", "daemon", "source", "database")


class ConfigError(InvalidArgumentError):
    """The configuration is malformed; `key` names the offending key ('' for the whole file)."""

    code = "invalid_config"

    def __init__(self, origin: str | None, key: str, detail: str) -> None:
        where = f"invalid config '{origin}'" if origin else "invalid configuration"
        super().__init__(f"{where}: {key}: {detail}" if key else f"{where}: {detail}")
        self.key = key
        self.detail = detail


@dataclass(frozen=True)
class RepositoryConfig:
    path: str  # a local directory (absolute) or s3://bucket/prefix
    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    credentials_file: str | None = None
    gc: str | None = None  # cron of scheduled retention + garbage collection
    wal_keep: float | None = None  # seconds of WAL kept for point-in-time recovery (None: all)
    gc_grace: float | None = None  # seconds a pack marked by garbage collection waits (None: store default)
    passphrase_file: str | None = None  # what opens an encrypted (format 2) repository;
    key_file: str | None = None  # with both, the passphrase is tried first
    uploads: int | None = None  # pack uploads in flight per backup (None: the backend's default)
    cache_size: int | None = None  # bytes of index/tree/set objects cached in the state dir (None: default)

    def s3_options(self) -> S3Options | None:
        """The object-store options, None when none was given."""
        options = S3Options(self.endpoint, self.region, self.path_style, self.credentials_file)
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
    max_watches: int | None = None
    log_level: str = "info"
    max_wal_size: int = 1 << 30  # largest WAL file a push may carry (PostgreSQL's largest segment)
    host: str | None = None  # the host name recorded in sets (None: the machine's)
    skip_unchanged: bool = True  # daemon/skip.py


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
        return tuple(common), tuple((p, tuple(v)) for p, v in anchored.items())

    def scheduled_tags(self, level: str, when: float) -> tuple[str, ...]:
        """The tags of a set taken by the schedule at `level`, strftime fields filled in (local time)."""
        stamp = datetime.fromtimestamp(when)
        return tuple(stamp.strftime(t) for t in self.tags.get(level, ()))


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
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(path, "", f"unable to read file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: not UTF-8 ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from exc
    _mark_decimal_mode(data, raw)
    return _Loader(path, os.path.dirname(os.path.abspath(path))).config(data)


class _DecimalInt(int):
    """An integer the file wrote in decimal (no `0o` prefix) where a file mode is expected."""


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
        table["socket_mode"] = _DecimalInt(value)


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
    repository = RepositoryConfig(path=repo if is_s3(repo) else os.path.abspath(os.path.expanduser(repo)))
    return Config(repository=repository, daemon=daemon, sources=tuple(built), databases=(), path=None)


def default_home() -> str:
    """$CAIRN_HOME, else systemd's $STATE_DIRECTORY, else ~/.local/share/cairn."""
    state_directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return (
        os.environ.get("CAIRN_HOME")
        or state_directory
        or os.path.join(os.path.expanduser("~"), ".local", "share", "cairn")
    )


def default_socket(home: str) -> str:
    """$XDG_RUNTIME_DIR/cairn/cairnd.sock, /run/cairn/cairnd.sock for root, else in `home`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "cairn", DEFAULT_SOCKET_NAME)
    if os.geteuid() == 0:
        return os.path.join(ROOT_RUNTIME_DIR, DEFAULT_SOCKET_NAME)
    return os.path.join(home, DEFAULT_SOCKET_NAME)


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
# Validation


def split_address(text: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into (host, port); InvalidArgumentError if malformed."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", text or "")
    if not match:
        raise InvalidArgumentError(f"expected an address like '127.0.0.1:7443', got '{text}'")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise InvalidArgumentError(f"expected a port from 0 to 65535, got {port}")
    return host, port


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Loader:
    """Turns parsed TOML into a Config, raising ConfigError with the key's path."""

    def __init__(self, origin: str | None, base_dir: str) -> None:
        self.origin = origin
        self.base_dir = base_dir

    def fail(self, key: str, detail: str) -> ConfigError:
        return ConfigError(self.origin, key, detail)

    def config(self, data: Mapping[str, Any]) -> Config:
        self.keys("", data, TOP_KEYS)
        repository = self.repository(self.table("repository", data.get("repository"), required=True))
        daemon = self.daemon(self.table("daemon", data.get("daemon", {})))
        databases = tuple(
            self.database(f"database[{i}]", table)
            for i, table in enumerate(self.array_of_tables("database", data.get("database", [])))
        )
        self.unique("database", [database.name for database in databases])
        database_names = {database.name for database in databases}
        sources = tuple(
            self.source(f"source[{i}]", table, database_names)
            for i, table in enumerate(self.array_of_tables("source", data.get("source", [])))
        )
        self.unique("source", [source.name for source in sources])
        pgdata = {database.name: database.pgdata for database in databases if database.kind == "postgres"}
        for index, source in enumerate(sources):
            seen: dict[str, str] = {}
            for name in source.databases:
                if name not in pgdata:
                    continue  # a dump engine: no data directory of its own
                other = seen.get(os.path.realpath(pgdata[name]))
                if other is not None:
                    raise self.fail(f"source[{index}].database",
                                    f"databases '{other}' and '{name}' are the same server (pgdata "
                                    f"'{pgdata[name]}'): a [[database]] captures its whole cluster, name it once")
                seen[os.path.realpath(pgdata[name])] = name
        return Config(repository=repository, daemon=daemon, sources=sources, databases=databases,
                      path=os.path.abspath(self.origin) if self.origin else None)

    # -- tables -----------------------------------------------------------------------------

    def repository(self, table: Mapping[str, Any]) -> RepositoryConfig:
        self.keys("repository", table, REPOSITORY_KEYS)
        gc = self.string("repository.gc", table.get("gc"))
        if gc is not None:
            try:
                CronExpr.parse(gc)
            except InvalidArgumentError as exc:
                raise self.fail("repository.gc", exc.message) from exc
        wal_keep = table.get("wal_keep")
        passphrase_file = self.path("repository.passphrase_file", table.get("passphrase_file"))
        key_file = self.path("repository.key_file", table.get("key_file"))
        location = self.repository_location(table) or RepositoryConfig(
            path=self.path("repository.path", table.get("path"), required=True))
        gc_grace = table.get("gc_grace")
        uploads = self.positive_int("repository.uploads", table.get("uploads"))
        if uploads is not None and uploads > MAX_UPLOADS:
            raise self.fail("repository.uploads", f"expected at most {MAX_UPLOADS}, got {uploads}")
        cache_size = table.get("cache_size")
        return replace(location, gc=gc, uploads=uploads,
                       cache_size=None if cache_size is None else self.byte_size("repository.cache_size", cache_size),
                       gc_grace=None if gc_grace is None else self.duration("repository.gc_grace", gc_grace),
                       wal_keep=None if wal_keep is None else self.duration("repository.wal_keep", wal_keep),
                       passphrase_file=passphrase_file, key_file=key_file)

    def repository_location(self, table: Mapping[str, Any]) -> RepositoryConfig | None:
        """An s3:// repository with its object-store keys; None for a local directory (which
        takes none of them)."""
        path = table.get("path")
        s3_keys = [k for k in S3_KEYS if k in table]
        if not (isinstance(path, str) and is_s3(path)):
            if s3_keys:
                raise self.fail(f"repository.{s3_keys[0]}", "needs an s3:// repository.path")
            return None
        try:
            parse_s3(path)
        except InvalidArgumentError as exc:
            raise self.fail("repository.path", str(exc)) from None
        endpoint = self.string("repository.endpoint", table.get("endpoint"))
        if endpoint is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", endpoint):
            raise self.fail("repository.endpoint", f"expected a URL like 'http://127.0.0.1:8333', got '{endpoint}'")
        path_style = table.get("path_style")
        return RepositoryConfig(
            path=path,
            endpoint=endpoint,
            region=self.string("repository.region", table.get("region")),
            path_style=None if path_style is None else self.boolean("repository.path_style", path_style),
            credentials_file=self.path("repository.credentials_file", table.get("credentials_file")),
        )

    def daemon(self, table: Mapping[str, Any]) -> DaemonConfig:
        self.keys("daemon", table, DAEMON_KEYS)
        state_dir = self.path("daemon.state_dir", table.get("state_dir")) or os.path.abspath(default_home())
        values: dict[str, Any] = {
            "socket": self.path("daemon.socket", table.get("socket")) or default_socket(state_dir),
            "state_dir": state_dir,
            "socket_mode": self.mode("daemon.socket_mode", table.get("socket_mode", 0o660)),
            "socket_group": self.string("daemon.socket_group", table.get("socket_group")),
            "listen": self.string("daemon.listen", table.get("listen")),
            "tls_cert": self.path("daemon.tls_cert", table.get("tls_cert")),
            "tls_key": self.path("daemon.tls_key", table.get("tls_key")),
            "token_file": self.path("daemon.token_file", table.get("token_file")),
            "metrics": self.string("daemon.metrics", table.get("metrics")),
            "read_only": self.boolean("daemon.read_only", table.get("read_only", False)),
            "shutdown_timeout": self.duration("daemon.shutdown_timeout", table.get("shutdown_timeout", 30.0)),
            "backstop_interval": self.duration(
                "daemon.backstop_interval", table.get("backstop_interval", 86400.0)
            ),
            "max_watches": self.positive_int("daemon.max_watches", table.get("max_watches")),
            "log_level": self.choice("daemon.log_level", table.get("log_level", "info"), LOG_LEVELS),
            "max_wal_size": self.positive_int("daemon.max_wal_size", table.get("max_wal_size", 1 << 30)),
            "host": self.string("daemon.host", table.get("host")),
            "skip_unchanged": self.boolean("daemon.skip_unchanged", table.get("skip_unchanged", True)),
        }
        if values["host"] is not None and any(c.isspace() for c in values["host"]):
            raise self.fail("daemon.host", f"expected a host name without spaces, got {_show(values['host'])}")
        if values["listen"] is not None:
            self.address("daemon.listen", values["listen"])
            for key in ("tls_cert", "tls_key", "token_file"):
                if values[key] is None:
                    raise self.fail(
                        f"daemon.{key}", "required when daemon.listen is set (TCP needs TLS and a token)"
                    )
        if values["metrics"] is not None:
            host, _ = self.address("daemon.metrics", values["metrics"])
            if not is_loopback(host):
                expected = "expected a loopback address like '127.0.0.1:9721'"
                raise self.fail("daemon.metrics", f"{expected}, got '{values['metrics']}'")
        return DaemonConfig(**values)

    def source(self, key: str, table: Mapping[str, Any], databases: set[str]) -> SourceConfig:
        self.keys(key, table, SOURCE_KEYS)
        name = self.name(f"{key}.name", table.get("name"))
        paths = self.paths(f"{key}.paths", table.get("paths"), required=True)
        self.distinct_basenames(f"{key}.paths", paths)
        watch = self.boolean(f"{key}.watch", table.get("watch", True))
        rpo = table.get("rpo")
        if rpo is not None:
            rpo = self.duration(f"{key}.rpo", rpo, positive=True)
            if not watch:
                raise self.fail(f"{key}.rpo", "needs watch = true (the change journal measures the wait)")
        names = self.database_names(f"{key}.database", table.get("database"), databases)
        quiesce = table.get("quiesce")
        if quiesce is not None:
            quiesce = self.quiesce(f"{key}.quiesce", self.table(f"{key}.quiesce", quiesce))
        aux_paths = self.paths(f"{key}.aux_paths", table.get("aux_paths", []))
        if aux_paths and (quiesce is None or quiesce.mode != "hot"):
            raise self.fail(f"{key}.aux_paths", "only used with quiesce mode 'hot'")
        first = self.paths(f"{key}.capture_first", table.get("capture_first", []))
        for index, sub in enumerate(first):
            if not any(sub.startswith(p.rstrip("/") + "/") for p in paths):
                raise self.fail(f"{key}.capture_first[{index}]",
                                f"'{sub}' is not below one of the source's paths")
        if first and not (names or quiesce):
            raise self.fail(f"{key}.capture_first", "needs a database or a quiesce window to be captured before")
        return SourceConfig(
            name=name,
            paths=paths,
            exclude=self.excludes(f"{key}.exclude", table.get("exclude", [])),
            watch=watch,
            rpo=rpo,
            schedule=self.schedule(f"{key}.schedule", table.get("schedule", {})),
            database=names[0] if names else None,
            quiesce=quiesce,
            one_file_system=self.boolean(f"{key}.one_file_system", table.get("one_file_system", False)),
            aux_paths=aux_paths,
            keep=self.keep(f"{key}.keep", table.get("keep")),
            databases=names,
            capture_first=first,
            tags=self.tags(f"{key}.tags", table.get("tags", [])),
        )

    def database_names(self, key: str, value: Any, databases: set[str]) -> tuple[str, ...]:
        # One name, or a list of names (captured in that order).
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.fail(key, f"expected a database name or a list of names, got {_show(value)}")
        names = tuple(self.string(f"{key}[{i}]" if isinstance(value, list) else key, item, required=True)
                      for i, item in enumerate(items))
        for index, name in enumerate(names):
            where = f"{key}[{index}]" if isinstance(value, list) else key
            if name not in databases:
                raise self.fail(where, f"no [[database]] is named '{name}'")
            if name in names[:index]:
                raise self.fail(where, f"database '{name}' is named twice")
        return names

    def tags(self, key: str, value: Any) -> dict[str, tuple[str, ...]]:
        # A list of tags for every scheduled set, or a table of lists per level.
        table = {level: value for level in LEVELS} if isinstance(value, list) else self.table(key, value)
        out: dict[str, tuple[str, ...]] = {}
        for level, items in table.items():
            where = key if isinstance(value, list) else f"{key}.{level}"
            if level not in LEVELS:
                raise self.fail(where, "unknown level: expected full, differential or incremental")
            tags = self.strings(where, items)
            for index, tag in enumerate(tags):
                try:
                    text = datetime(2001, 2, 3, 4, 5, 6).strftime(tag)
                except ValueError as exc:
                    raise self.fail(f"{where}[{index}]", f"invalid strftime pattern '{tag}': {exc}") from None
                if not text or any(c.isspace() for c in text):
                    raise self.fail(f"{where}[{index}]", f"a tag must not be empty or hold spaces, got '{tag}'")
            if tags:
                out[level] = tags
        return out

    def quiesce(self, key: str, table: Mapping[str, Any]) -> QuiesceConfig:
        self.keys(key, table, QUIESCE_KEYS)
        if "mode" not in table:
            raise self.fail(f"{key}.mode", "required: 'cold' or 'hot'")
        timeout = self.duration(f"{key}.timeout", table.get("timeout", 60.0), positive=True)
        required = self.boolean(f"{key}.required", table.get("required", True))
        hooks = []
        for index, level in enumerate(self.array_of_tables(f"{key}.hooks", table.get("hooks", []))):
            where = f"{key}.hooks[{index}]"
            self.keys(where, level, HOOK_KEYS)
            hooks.append(HookLevel(
                freeze=self.commands(f"{where}.freeze", level.get("freeze", [])),
                thaw=self.commands(f"{where}.thaw", level.get("thaw", [])),
                timeout=self.duration(f"{where}.timeout", level.get("timeout", timeout), positive=True),
                required=self.boolean(f"{where}.required", level.get("required", required))))
        freeze = self.commands(f"{key}.freeze", table.get("freeze", []))
        thaw = self.commands(f"{key}.thaw", table.get("thaw", []))
        if hooks and (freeze or thaw):
            raise self.fail(f"{key}.hooks", "give either hooks or freeze/thaw, not both")
        return QuiesceConfig(
            mode=self.choice(f"{key}.mode", table["mode"], QUIESCE_MODES),
            freeze=freeze,
            thaw=thaw,
            timeout=timeout,
            max_window=self.duration(f"{key}.max_window", table.get("max_window", 900.0), positive=True),
            required=required,
            hooks=tuple(hooks),
            on_success=self.commands(f"{key}.on_success", table.get("on_success", [])),
            on_failure=self.commands(f"{key}.on_failure", table.get("on_failure", [])),
        )

    def database(self, key: str, table: Mapping[str, Any]) -> DatabaseConfig:
        self.keys(key, table, DATABASE_KEYS)
        kind = self.choice(f"{key}.kind", table.get("kind", "postgres"), DATABASE_KINDS)
        only = {"postgres": ("pgdata", "wal_timeout"), "command": ("dump", "restore"), "pg_dump": ("jobs",)}
        for other, keys in only.items():
            for k in keys:
                if other != kind and k in table:
                    raise self.fail(f"{key}.{k}", f"only used with kind = '{other}' (this database is '{kind}')")
        if kind == "command" and "dsn" in table:
            raise self.fail(f"{key}.dsn", "not used with kind = 'command': the dump and restore commands "
                                          "name their server ({target} is the --target-dsn of a restore)")
        if kind == "postgres" and "timeout" in table:
            raise self.fail(f"{key}.timeout", "only used with the dump kinds 'pg_dump' and 'command'")
        dump = self.argv(f"{key}.dump", table.get("dump"), required=kind == "command")
        return DatabaseConfig(
            name=self.name(f"{key}.name", table.get("name")),
            dsn=self.string(f"{key}.dsn", table.get("dsn"), required=kind != "command") or "",
            pgdata=self.path(f"{key}.pgdata", table.get("pgdata"), required=kind == "postgres") or "",
            wal_timeout=self.duration(f"{key}.wal_timeout", table.get("wal_timeout", 600.0), positive=True),
            kind=kind,
            dump=dump,
            restore=self.argv(f"{key}.restore", table.get("restore"), required=kind == "command"),
            timeout=self.duration(f"{key}.timeout", table.get("timeout", 3600.0), positive=True),
            jobs=self.positive_int(f"{key}.jobs", table.get("jobs", 2)) or 2,
        )

    def keep(self, key: str, value: Any) -> PrunePolicy | None:
        if value is None:
            return None
        try:
            return keep_policy(self.table(key, value))
        except ConfigError:
            raise
        except InvalidArgumentError as exc:
            raise self.fail(key, exc.message) from None
    def argv(self, key: str, value: Any, required: bool) -> tuple[str, ...]:
        # One command as a non-empty list of strings.
        if value is None:
            if required:
                raise self.fail(key, "required: a command as a list of strings")
            return ()
        valid = isinstance(value, list) and value and all(isinstance(a, str) and a for a in value)
        if not valid:
            raise self.fail(key, f"expected a command as a non-empty list of strings, got {_show(value)}")
        return tuple(value)

    def schedule(self, key: str, value: Any) -> dict[str, str]:
        table = self.table(key, value)
        result: dict[str, str] = {}
        for level, text in table.items():
            if level not in LEVELS:
                raise self.fail(f"{key}.{level}", "unknown level: expected full, differential or incremental")
            text = self.string(f"{key}.{level}", text, required=True)
            try:
                CronExpr.parse(text)
            except InvalidArgumentError as exc:
                raise self.fail(f"{key}.{level}", exc.message) from exc
            result[level] = text
        return result

    # -- value checks -----------------------------------------------------------------------

    def keys(self, where: str, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in table:
            if key not in allowed:
                full = f"{where}.{key}" if where else key
                raise ConfigError(self.origin, "", f"unknown key '{full}'")

    def table(self, key: str, value: Any, required: bool = False) -> Mapping[str, Any]:
        if value is None and required:
            raise self.fail(key, "required table is missing")
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_show(value)}")
        return value

    def array_of_tables(self, key: str, value: Any) -> list[Mapping[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.fail(key, f"expected [[{key}]] tables, got {_show(value)}")
        return value

    def unique(self, kind: str, names: list[str]) -> None:
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                raise self.fail(f"{kind}[{index}].name", f"duplicate {kind} name '{name}'")
            seen.add(name)

    def string(self, key: str, value: Any, required: bool = False) -> str | None:
        if value is None:
            if required:
                raise self.fail(key, "required")
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {_show(value)}")
        return value

    def name(self, key: str, value: Any) -> str:
        text = self.string(key, value, required=True)
        if not _NAME.match(text):
            raise self.fail(key, f"expected a name of letters, digits, '.', '_' or '-', got '{text}'")
        return text

    def path(self, key: str, value: Any, required: bool = False) -> str | None:
        text = self.string(key, value, required=required)
        if text is None:
            return None
        if "\0" in text:
            raise self.fail(key, "path contains a NUL byte")
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(text)))

    def strings(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of strings, got {_show(value)}")
        return tuple(self.string(f"{key}[{i}]", item, required=True) for i, item in enumerate(value))

    def paths(self, key: str, value: Any, required: bool = False) -> tuple[str, ...]:
        if value is None and required:
            raise self.fail(key, "required: a list of directories")
        items = self.strings(key, value)
        if required and not items:
            raise self.fail(key, "expected at least one path")
        paths = tuple(self.path(f"{key}[{i}]", item) for i, item in enumerate(items))
        for index, path in enumerate(paths):
            if path in paths[:index]:
                raise self.fail(f"{key}[{index}]", f"duplicate path '{path}'")
        return paths

    def distinct_basenames(self, key: str, paths: tuple[str, ...]) -> None:
        # With several paths the set's root holds one subtree per path, named by its basename.
        if len(paths) < 2:
            return
        seen: dict[str, str] = {}
        for path in paths:
            base = os.path.basename(path) or "/"
            if base in seen:
                raise self.fail(key, f"'{seen[base]}' and '{path}' share the name '{base}' in a set's root")
            seen[base] = path

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_show(value)}")
        return value

    def byte_size(self, key: str, value: Any) -> int:
        """A size: a non-negative integer of bytes or a string like "512MiB", "2GiB", "100MB"
        (0 turns the cache off)."""
        units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value) if isinstance(value, str) else None
        if m is None or m.group(2).upper() not in units:
            raise self.fail(key, f"expected a size like \"512MiB\" or a number of bytes, got {_show(value)}")
        return int(m.group(1)) * units[m.group(2).upper()]

    def positive_int(self, key: str, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(key, f"expected a positive integer, got {_show(value)}")
        return value

    def mode(self, key: str, value: Any) -> int:
        # A string of octal digits ("0660", "660", "0o660") or a TOML octal integer (0o660). Any
        # integer written in decimal (660, 400, 432) is refused, whatever its value: 660 would be
        # mode 0o1224 and 400 mode 0o620, never what the operator meant (see _mark_decimal_mode).
        if isinstance(value, str):
            if not re.fullmatch(r"(0o|0)?[0-7]{3}", value):
                raise self.fail(key, f"expected a file mode like \"0660\", got {_show(value)}")
            return int(value[2:] if value.startswith("0o") else value, 8)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, f"expected a file mode like \"0660\", got {_show(value)}")
        if isinstance(value, _DecimalInt):
            raise self.fail(key, f"{int(value)} is not a file mode (a decimal integer, mode {oct(value)}): "
                                 "write it as a string like \"0660\" or as octal 0o660")
        if value > 0o777:
            raise self.fail(key, f"expected a file mode like \"0660\", got {oct(value)} "
                                 "(more than the permission bits 0o777)")
        return value

    def excludes(self, key: str, value: Any) -> tuple[str, ...]:
        # Each pattern compiled alone, so an error names the one that does not parse.
        patterns = self.strings(key, value)
        for index, pattern in enumerate(patterns):
            try:
                pathspec.GitIgnoreSpec.from_lines([pattern])
            except Exception as exc:  # pathspec raises several types for malformed patterns
                raise self.fail(f"{key}[{index}]", f"pattern {_show(pattern)} does not parse: {exc}") from None
        return patterns

    def duration(self, key: str, value: Any, positive: bool = False) -> float:
        try:
            seconds = parse_duration(value)
        except InvalidArgumentError:
            raise self.fail(key, f"expected a duration like '5m', got {_show(value)}") from None
        if positive and seconds <= 0:
            raise self.fail(key, f"expected a duration above zero, got {_show(value)}")
        return seconds

    def choice(self, key: str, value: Any, choices: Sequence[str]) -> str:
        if value not in choices:
            expected = ", ".join(f"'{choice}'" for choice in choices)
            raise self.fail(key, f"expected one of {expected}, got {_show(value)}")
        return value

    def address(self, key: str, text: str) -> tuple[str, int]:
        try:
            return split_address(text)
        except InvalidArgumentError as exc:
            raise self.fail(key, exc.message) from None

    def commands(self, key: str, value: Any) -> tuple[tuple[str, ...], ...]:
        # One argv list ["systemctl", "stop", "app"] or a list of them.
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(
                key, f"expected a command as a list of strings, or a list of commands, got {_show(value)}"
            )
        commands = []
        for index, argv in enumerate(value):
            valid = isinstance(argv, list) and argv and all(isinstance(arg, str) and arg for arg in argv)
            if not valid:
                raise self.fail(
                    f"{key}[{index}]", f"expected a command as a non-empty list of strings, got {_show(argv)}"
                )
            commands.append(tuple(argv))
        return tuple(commands)


def _show(value: Any) -> str:
    """A value as it should appear in an error message: strings quoted, others as TOML-ish."""
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)

