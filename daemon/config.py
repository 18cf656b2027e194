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
from dataclasses import dataclass, field
from typing import Any

from cairn.daemon.cron import CronExpr
from cairn.daemon.durations import parse_duration
from cairn.store.errors import InvalidArgumentError, NotFoundError
from cairn.store.model import LEVELS

DEFAULT_SOCKET_NAME = "cairnd.sock"
ROOT_RUNTIME_DIR = "/run/cairn"
LOG_LEVELS = ("debug", "info", "warning", "error")
QUIESCE_MODES = ("cold", "hot")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Every key the file may hold, per table; the loaders below read exactly these.
REPOSITORY_KEYS = ("path", "passphrase_file", "key_file")
DAEMON_KEYS = (
    "socket", "state_dir", "socket_mode", "socket_group", "listen", "tls_cert", "tls_key", "token_file",
    "metrics", "read_only", "shutdown_timeout", "backstop_interval", "max_watches", "log_level",
    "max_wal_size",
)
SOURCE_KEYS = (
    "name", "paths", "exclude", "watch", "rpo", "schedule", "database", "quiesce", "one_file_system",
    "aux_paths",
)
QUIESCE_KEYS = ("mode", "freeze", "thaw", "timeout", "max_window", "required")
DATABASE_KEYS = ("name", "dsn", "pgdata")
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
    path: str
    passphrase_file: str | None = None  # what opens an encrypted (format 2) repository;
    key_file: str | None = None  # with both, the passphrase is tried first


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


@dataclass(frozen=True)
class QuiesceConfig:
    mode: str
    freeze: tuple[tuple[str, ...], ...] = ()
    thaw: tuple[tuple[str, ...], ...] = ()
    timeout: float = 60.0
    max_window: float = 900.0
    required: bool = True


@dataclass(frozen=True)
class SourceConfig:
    name: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    watch: bool = True
    rpo: float | None = None
    schedule: dict[str, str] = field(default_factory=dict, hash=False)
    database: str | None = None
    quiesce: QuiesceConfig | None = None
    one_file_system: bool = False
    aux_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    dsn: str
    pgdata: str


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
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(path, "", f"unable to read file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from exc
    return _Loader(path, os.path.dirname(os.path.abspath(path))).config(data)


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
    repository = RepositoryConfig(path=os.path.abspath(os.path.expanduser(repo)))
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
        return Config(repository=repository, daemon=daemon, sources=sources, databases=databases,
                      path=os.path.abspath(self.origin) if self.origin else None)

    # -- tables -----------------------------------------------------------------------------

    def repository(self, table: Mapping[str, Any]) -> RepositoryConfig:
        self.keys("repository", table, REPOSITORY_KEYS)
        passphrase_file = self.path("repository.passphrase_file", table.get("passphrase_file"))
        key_file = self.path("repository.key_file", table.get("key_file"))
        return RepositoryConfig(path=self.path("repository.path", table.get("path"), required=True),
                                passphrase_file=passphrase_file, key_file=key_file)

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
        }
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
        database = table.get("database")
        if database is not None:
            database = self.string(f"{key}.database", database)
            if database not in databases:
                raise self.fail(f"{key}.database", f"no [[database]] is named '{database}'")
        quiesce = table.get("quiesce")
        if quiesce is not None:
            quiesce = self.quiesce(f"{key}.quiesce", self.table(f"{key}.quiesce", quiesce))
        aux_paths = self.paths(f"{key}.aux_paths", table.get("aux_paths", []))
        if aux_paths and (quiesce is None or quiesce.mode != "hot"):
            raise self.fail(f"{key}.aux_paths", "only used with quiesce mode 'hot'")
        return SourceConfig(
            name=name,
            paths=paths,
            exclude=self.strings(f"{key}.exclude", table.get("exclude", [])),
            watch=watch,
            rpo=rpo,
            schedule=self.schedule(f"{key}.schedule", table.get("schedule", {})),
            database=database,
            quiesce=quiesce,
            one_file_system=self.boolean(f"{key}.one_file_system", table.get("one_file_system", False)),
            aux_paths=aux_paths,
        )

    def quiesce(self, key: str, table: Mapping[str, Any]) -> QuiesceConfig:
        self.keys(key, table, QUIESCE_KEYS)
        if "mode" not in table:
            raise self.fail(f"{key}.mode", "required: 'cold' or 'hot'")
        return QuiesceConfig(
            mode=self.choice(f"{key}.mode", table["mode"], QUIESCE_MODES),
            freeze=self.commands(f"{key}.freeze", table.get("freeze", [])),
            thaw=self.commands(f"{key}.thaw", table.get("thaw", [])),
            timeout=self.duration(f"{key}.timeout", table.get("timeout", 60.0), positive=True),
            max_window=self.duration(f"{key}.max_window", table.get("max_window", 900.0), positive=True),
            required=self.boolean(f"{key}.required", table.get("required", True)),
        )

    def database(self, key: str, table: Mapping[str, Any]) -> DatabaseConfig:
        self.keys(key, table, DATABASE_KEYS)
        return DatabaseConfig(
            name=self.name(f"{key}.name", table.get("name")),
            dsn=self.string(f"{key}.dsn", table.get("dsn"), required=True),
            pgdata=self.path(f"{key}.pgdata", table.get("pgdata"), required=True),
        )

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

    def positive_int(self, key: str, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(key, f"expected a positive integer, got {_show(value)}")
        return value

    def mode(self, key: str, value: Any) -> int:
        # TOML writes octal as 0o660; a string "0660" is accepted too.
        if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
            value = int(value.replace("o", ""), 8)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
            raise self.fail(key, f"expected a file mode like 0o660 or \"0660\", got {_show(value)}")
        return value

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

