"""The configuration file's declared schema: every table, key, type, default and rule, as pydantic models.

This module owns what a valid file is; daemon/runtime/config.py reads the file, validates it here and
turns the result into its frozen dataclasses. What always holds after `validate()`:

- every key is declared below (`extra="forbid"`), with the type its annotation names: strings
  non-empty, booleans real booleans, counts positive integers, durations float seconds,
  choices one of their literals, paths absolute (relative ones are taken from the config
  file's directory, passed in the validation context as `base_dir`);
- the rules between keys hold: per table in that model's validators, between tables (a
  source's databases exist, names are unique, one cluster is named once per source, a source's
  `keep` has a `[repository] gc` schedule to be applied on) in `File`'s;
- any violation is one `SchemaError` naming the key's path (`source[0].quiesce.thaw[1]`) and
  what was expected, the same one-line messages the hand-written loader gave.

pydantic's own errors (wrong type, missing key, unknown key, a literal not matched) are mapped
to those messages in `_detail`; checks pydantic cannot declare raise `_fail`, a custom error
that carries its message (and optionally the sub-key it concerns) through unchanged.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import pathspec
from cairn.daemon.runtime.durations import parse_duration
from cairn.daemon.scheduling.cron import CronExpr
from cairn.daemon.scheduling.retention import keep_policy
from cairn.store.errors import InvalidArgumentError
from cairn.store.locations import is_s3, parse_s3
from cairn.store.model import LEVELS, PrunePolicy
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LOG_LEVELS = ("debug", "info", "warning", "error")
QUIESCE_MODES = ("cold", "hot")
DATABASE_KINDS = ("postgres", "pg_dump", "command")  # base backup + WAL; pg_dump over the network; any dump tool
S3_KEYS = ("endpoint", "region", "path_style", "credentials_file", "stall_timeout")  # only with an s3:// path
_LEVEL_TEXT = "unknown level: expected full, differential or incremental"
_ERROR = "cairn_config"


class SchemaError(Exception):
    """The file does not fit the schema: `key` is the offending key's path ('' for the whole file)."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}" if key else detail)
        self.key = key
        self.detail = detail


MAX_UPLOADS = 64


def _fail(detail: str, sub: str = "") -> PydanticCustomError:
    """A rule's error: `detail` is the message; `sub` names a key below the one validated."""
    return PydanticCustomError(_ERROR, "{detail}", {"detail": detail, "sub": sub})


def show(value: Any) -> str:
    """A value as it should appear in an error message: strings quoted, others as TOML-ish."""
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


# ---------------------------------------------------------------------------------------------
# Value types


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


class DecimalInt(int):
    """An integer the file wrote in decimal (no `0o` prefix) where a file mode is expected."""


def duration_value(value: Any, positive: bool = False) -> float:
    """A duration key's value in seconds, checked as the file's keys are (the command line's
    duration flags use it too); InvalidArgumentError with the key's message otherwise."""
    try:
        seconds = parse_duration(value)
    except InvalidArgumentError:
        raise InvalidArgumentError(f"expected a duration like '5m', got {show(value)}") from None
    if positive and seconds <= 0:
        raise InvalidArgumentError(f"expected a duration above zero, got {show(value)}")
    return seconds


def _duration(positive: bool) -> BeforeValidator:
    def check(value: Any) -> float:
        try:
            return duration_value(value, positive)
        except InvalidArgumentError as exc:
            raise _fail(exc.message) from None
    return BeforeValidator(check)


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _byte_size(value: Any) -> int:
    """A size: a non-negative number of bytes, or a string like "512MiB", "2GiB", "100MB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value) if isinstance(value, str) else None
    if m is None or m.group(2).upper() not in _SIZE_UNITS:
        raise _fail(f"expected a size like \"512MiB\" or a number of bytes, got {show(value)}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]


def _uploads(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(f"expected a positive integer, got {show(value)}")
    if value > MAX_UPLOADS:
        raise _fail(f"expected at most {MAX_UPLOADS}, got {value}")
    return value


def _path(value: str, info: ValidationInfo) -> str:
    if "\0" in value:
        raise _fail("path contains a NUL byte")
    base = (info.context or {}).get("base_dir", os.getcwd())
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


MIN_WAL_SIZE = 1 << 20  # PostgreSQL's smallest WAL segment (wal_segment_size: 1 MiB to 1 GiB)


def _wal_size(value: int) -> int:
    # Below the smallest segment every push would be refused: PostgreSQL's archiving would fail
    # from the first segment on, and pg_wal fill up.
    if value < MIN_WAL_SIZE:
        raise _fail(f"expected at least {MIN_WAL_SIZE} bytes (1 MiB, PostgreSQL's smallest WAL segment; "
                    f"the value is in bytes), got {value}")
    return value


def _cron(value: str) -> str:
    try:
        CronExpr.parse(value)
    except InvalidArgumentError as exc:
        raise _fail(exc.message) from None
    return value


def _mode(value: Any) -> int:
    # A string of octal digits ("0660", "660", "0o660") or a TOML octal integer (0o660). Any
    # integer written in decimal (660, 400, 432) is refused, whatever its value: 660 would be
    # mode 0o1224 and 400 mode 0o620, never what the operator meant (see DecimalInt).
    if isinstance(value, str):
        if not re.fullmatch(r"(0o|0)?[0-7]{3}", value):
            raise _fail(f"expected a file mode like \"0660\", got {show(value)}")
        return int(value[2:] if value.startswith("0o") else value, 8)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(f"expected a file mode like \"0660\", got {show(value)}")
    if isinstance(value, DecimalInt):
        raise _fail(f"{int(value)} is not a file mode (a decimal integer, mode {oct(value)}): "
                    "write it as a string like \"0660\" or as octal 0o660")
    if value > 0o777:
        raise _fail(f"expected a file mode like \"0660\", got {oct(value)} (more than the permission bits 0o777)")
    return int(value)


def _argv(value: Any) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(a, str) and a for a in value)):
        raise _fail(f"expected a command as a non-empty list of strings, got {show(value)}")
    return tuple(value)


def _command_list(value: Any) -> Any:
    # One argv list ["systemctl", "stop", "app"] or a list of them.
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [value]
    if not isinstance(value, list):
        raise _fail(f"expected a command as a list of strings, or a list of commands, got {show(value)}")
    return value


def _patterns(value: tuple[str, ...]) -> tuple[str, ...]:
    # Each pattern compiled alone, so an error names the one that does not parse.
    for index, pattern in enumerate(value):
        try:
            pathspec.GitIgnoreSpec.from_lines([pattern])
        except Exception as exc:  # pathspec raises several types for malformed patterns
            raise _fail(f"pattern {show(pattern)} does not parse: {exc}", f"[{index}]") from None
    return value


def _distinct_paths(value: tuple[str, ...]) -> tuple[str, ...]:
    for index, path in enumerate(value):
        if path in value[:index]:
            raise _fail(f"duplicate path '{path}'", f"[{index}]")
    return value


def _names_of_databases(value: Any) -> Any:
    # One name, or a non-empty list of names (captured in that order).
    if isinstance(value, str):
        if not value:
            raise _fail(f"expected a non-empty string, got {show(value)}")
        return (value,)
    if not isinstance(value, list) or not value:
        raise _fail(f"expected a database name or a list of names, got {show(value)}")
    return value


def _tags(value: Any) -> dict[str, tuple[str, ...]]:
    # A list of tags for every scheduled set, or a table of lists per level.
    table = {level: value for level in LEVELS} if isinstance(value, list) else value
    if not isinstance(table, dict):
        raise _fail(f"expected a list of tags or a table of lists per level, got {show(value)}")
    out: dict[str, tuple[str, ...]] = {}
    for level, items in table.items():
        where = "" if isinstance(value, list) else f".{level}"
        if level not in LEVELS:
            raise _fail(_LEVEL_TEXT, where)
        if not isinstance(items, list):
            raise _fail(f"expected a list of strings, got {show(items)}", where)
        for index, tag in enumerate(items):
            if not isinstance(tag, str) or not tag:
                raise _fail(f"expected a non-empty string, got {show(tag)}", f"{where}[{index}]")
            try:
                text = datetime(2001, 2, 3, 4, 5, 6).strftime(tag)
            except ValueError as exc:
                raise _fail(f"invalid strftime pattern '{tag}': {exc}", f"{where}[{index}]") from None
            if not text or any(c.isspace() for c in text):
                raise _fail(f"a tag must not be empty or hold spaces, got '{tag}'", f"{where}[{index}]")
        if items:
            out[level] = tuple(items)
    return out


def _schedule(value: Any) -> Any:
    if isinstance(value, dict):
        for level in value:
            if level not in LEVELS:
                raise _fail(_LEVEL_TEXT, f".{level}")
    return value


def _keep(value: Any) -> PrunePolicy:
    if not isinstance(value, dict):
        raise _fail(f"expected a table, got {show(value)}")
    try:
        return keep_policy(value)
    except InvalidArgumentError as exc:
        raise _fail(exc.message) from None


def _tables(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise PydanticCustomError(_ERROR, "{detail}", {"detail": f"expected [[{{key}}]] tables, got {show(value)}",
                                                       "sub": "", "with_key": True})
    return value


Text = Annotated[str, StringConstraints(strict=True, min_length=1)]
Name = Annotated[str, StringConstraints(strict=True, min_length=1, pattern=NAME_PATTERN)]
Path = Annotated[Text, AfterValidator(_path)]
Paths = Annotated[tuple[Path, ...], AfterValidator(_distinct_paths)]
Count = Annotated[int, Field(strict=True, gt=0)]
ByteSize = Annotated[int, BeforeValidator(_byte_size)]
Uploads = Annotated[int, BeforeValidator(_uploads)]
Duration = Annotated[float, _duration(positive=False)]
PositiveDuration = Annotated[float, _duration(positive=True)]
Cron = Annotated[Text, AfterValidator(_cron)]
Mode = Annotated[int, BeforeValidator(_mode)]
Command = Annotated[tuple[str, ...], BeforeValidator(_argv)]
Commands = Annotated[tuple[Command, ...], BeforeValidator(_command_list)]
Patterns = Annotated[tuple[Text, ...], AfterValidator(_patterns)]
DatabaseNames = Annotated[tuple[Text, ...], BeforeValidator(_names_of_databases)]
Tags = Annotated[dict[str, tuple[str, ...]], BeforeValidator(_tags)]
Schedule = Annotated[dict[str, Cron], BeforeValidator(_schedule)]
Keep = Annotated[PrunePolicy, BeforeValidator(_keep)]


def _tables_of(model: type) -> Any:
    return Annotated[tuple[model, ...], BeforeValidator(_tables)]


# ---------------------------------------------------------------------------------------------
# Tables


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, defer_build=True)


class RepositoryTable(_Table):
    path: Text
    endpoint: Text | None = None
    region: Text | None = None
    path_style: StrictBool | None = None
    credentials_file: Path | None = None
    stall_timeout: PositiveDuration | None = None  # seconds an object-store operation may wait unanswered
    gc: Cron | None = None
    gc_grace: Duration | None = None
    wal_keep: Duration | None = None
    passphrase_file: Path | None = None
    key_file: Path | None = None
    uploads: Uploads | None = None  # pack uploads in flight per backup (None: the backend's default)
    cache_size: ByteSize | None = None  # bytes of index/tree/set objects cached in the state dir

    @model_validator(mode="before")
    @classmethod
    def _object_store_keys(cls, data: Any) -> Any:
        # The object-store keys go only with an s3:// path, which must parse.
        if not isinstance(data, dict):
            return data
        path = data.get("path")
        if not (isinstance(path, str) and is_s3(path)):
            for key in S3_KEYS:
                if key in data:
                    raise _fail("needs an s3:// repository.path", f".{key}")
            return data
        try:
            parse_s3(path)
        except InvalidArgumentError as exc:
            raise _fail(str(exc), ".path") from None
        endpoint = data.get("endpoint")
        if isinstance(endpoint, str) and endpoint and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", endpoint):
            raise _fail(f"expected a URL like 'http://127.0.0.1:8333', got '{endpoint}'", ".endpoint")
        return data


class DaemonTable(_Table):
    socket: Path | None = None
    state_dir: Path | None = None
    socket_mode: Mode = 0o660
    socket_group: Text | None = None
    listen: Text | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_file: Path | None = None
    metrics: Text | None = None
    read_only: StrictBool = False
    shutdown_timeout: Duration = 30.0
    backstop_interval: Duration = 86400.0
    archiver_interval: Duration = 60.0
    max_watches: Count | None = None
    log_level: Literal[LOG_LEVELS] = "info"  # type: ignore[valid-type]
    max_wal_size: Annotated[Count, AfterValidator(_wal_size)] = 1 << 30
    host: Text | None = None
    skip_unchanged: StrictBool = True

    @model_validator(mode="after")
    def _rules(self) -> DaemonTable:
        if self.host is not None and any(c.isspace() for c in self.host):
            raise _fail(f"expected a host name without spaces, got {show(self.host)}", ".host")
        if self.listen is not None:
            _address(self.listen, ".listen")
            for key in ("tls_cert", "tls_key", "token_file"):
                if getattr(self, key) is None:
                    raise _fail("required when daemon.listen is set (TCP needs TLS and a token)", f".{key}")
        if self.metrics is not None:
            host, _ = _address(self.metrics, ".metrics")
            if not is_loopback(host):
                raise _fail(f"expected a loopback address like '127.0.0.1:9721', got '{self.metrics}'", ".metrics")
        return self


def _address(text: str, sub: str) -> tuple[str, int]:
    try:
        return split_address(text)
    except InvalidArgumentError as exc:
        raise _fail(exc.message, sub) from None


class HookTable(_Table):
    freeze: Commands = ()
    thaw: Commands = ()
    timeout: PositiveDuration | None = None  # None: the quiesce table's
    required: StrictBool | None = None       # None: the quiesce table's


class QuiesceTable(_Table):
    mode: Literal[QUIESCE_MODES]  # type: ignore[valid-type]
    freeze: Commands = ()
    thaw: Commands = ()
    timeout: PositiveDuration = 60.0
    max_window: PositiveDuration = 900.0
    required: StrictBool = True
    hooks: _tables_of(HookTable) = ()  # type: ignore[valid-type]
    on_success: Commands = ()
    on_failure: Commands = ()

    @model_validator(mode="after")
    def _one_form(self) -> QuiesceTable:
        if self.hooks and (self.freeze or self.thaw):
            raise _fail("give either hooks or freeze/thaw, not both", ".hooks")
        return self


class SourceTable(_Table):
    name: Name
    paths: Annotated[Paths, Field(min_length=1)]
    exclude: Patterns = ()
    watch: StrictBool = True
    rpo: PositiveDuration | None = None
    schedule: Schedule = Field(default_factory=dict)
    database: DatabaseNames = ()
    quiesce: QuiesceTable | None = None
    one_file_system: StrictBool = False
    aux_paths: Paths = ()
    keep: Keep | None = None
    capture_first: Paths = ()
    tags: Tags = Field(default_factory=dict)
    _database_listed: bool = PrivateAttr(default=False)  # `database` was written as a list

    @model_validator(mode="wrap")
    @classmethod
    def _remember_the_form(cls, data: Any, handler: Any) -> SourceTable:
        # An error about one of the source's databases names it as written: database or database[i].
        table = handler(data)
        object.__setattr__(table, "_database_listed", isinstance(data, dict) and isinstance(data.get("database"), list))
        return table

    @model_validator(mode="after")
    def _rules(self) -> SourceTable:
        if len(self.paths) > 1:
            # With several paths the set's root holds one subtree per path, named by its basename.
            seen: dict[str, str] = {}
            for path in self.paths:
                base = os.path.basename(path) or "/"
                if base in seen:
                    raise _fail(f"'{seen[base]}' and '{path}' share the name '{base}' in a set's root", ".paths")
                seen[base] = path
        if self.rpo is not None and not self.watch:
            raise _fail("needs watch = true (the change journal measures the wait)", ".rpo")
        for index, name in enumerate(self.database):
            if name in self.database[:index]:
                raise _fail(f"database '{name}' is named twice", f".database[{index}]")
        if self.aux_paths and (self.quiesce is None or self.quiesce.mode != "hot"):
            raise _fail("only used with quiesce mode 'hot'", ".aux_paths")
        for index, sub in enumerate(self.capture_first):
            if not any(sub.startswith(p.rstrip("/") + "/") for p in self.paths):
                raise _fail(f"'{sub}' is not below one of the source's paths", f".capture_first[{index}]")
        if self.capture_first and not (self.database or self.quiesce):
            raise _fail("needs a database or a quiesce window to be captured before", ".capture_first")
        return self


class DatabaseTable(_Table):
    name: Name
    dsn: Text | None = None
    pgdata: Path | None = None
    wal_timeout: PositiveDuration = 600.0
    kind: Literal[DATABASE_KINDS] = "postgres"  # type: ignore[valid-type]
    dump: Command | None = None
    restore: Command | None = None
    check: Command | None = None
    timeout: PositiveDuration = 3600.0
    jobs: Count = 2

    @model_validator(mode="before")
    @classmethod
    def _keys_of_the_kind(cls, data: Any) -> Any:
        # Each kind's own keys are refused with another kind (the kind itself is checked first).
        if not isinstance(data, dict) or data.get("kind", "postgres") not in DATABASE_KINDS:
            return data
        kind = data.get("kind", "postgres")
        only = {"postgres": ("pgdata", "wal_timeout"), "command": ("dump", "restore", "check"), "pg_dump": ("jobs",)}
        for other, keys in only.items():
            for key in keys:
                if other != kind and key in data:
                    raise _fail(f"only used with kind = '{other}' (this database is '{kind}')", f".{key}")
        if kind == "command" and "dsn" in data:
            raise _fail("not used with kind = 'command': the dump and restore commands name their server "
                        "({target} is the --target-dsn of a restore)", ".dsn")
        if kind == "postgres" and "timeout" in data:
            raise _fail("only used with the dump kinds 'pg_dump' and 'command'", ".timeout")
        return data

    @model_validator(mode="after")
    def _required_by_the_kind(self) -> DatabaseTable:
        if self.kind != "command" and self.dsn is None:
            raise _fail("required", ".dsn")
        if self.kind == "postgres" and self.pgdata is None:
            raise _fail("required", ".pgdata")
        for key in ("dump", "restore"):
            if self.kind == "command" and getattr(self, key) is None:
                raise _fail("required: a command as a list of strings", f".{key}")
        for index, arg in enumerate(self.check or ()):
            if "{dir}" in arg or "{target}" in arg:
                raise _fail("{dir} and {target} have no value here: the check runs before the window, "
                            "without a dump or a restore", f".check[{index}]")
        return self


class File(_Table):
    repository: RepositoryTable
    daemon: DaemonTable = Field(default_factory=DaemonTable)
    source: _tables_of(SourceTable) = ()  # type: ignore[valid-type]
    database: _tables_of(DatabaseTable) = ()  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _between_tables(self) -> File:
        for kind, tables in (("database", self.database), ("source", self.source)):
            seen: set[str] = set()
            for index, table in enumerate(tables):
                if table.name in seen:
                    raise _fail(f"duplicate {kind} name '{table.name}'", f"{kind}[{index}].name")
                seen.add(table.name)
        for index, source in enumerate(self.source):
            if source.keep is not None and self.repository.gc is None:
                raise _fail("never applied: the daemon applies each source's keep on the [repository] gc "
                            "schedule, which is not set (add gc = \"0 4 * * *\", or prune by hand with "
                            "'cairn prune --keep-...')", f"source[{index}].keep")
        databases = {database.name: database for database in self.database}
        for index, source in enumerate(self.source):
            where = f"source[{index}].database"
            servers: dict[str, str] = {}
            for position, name in enumerate(source.database):
                database = databases.get(name)
                if database is None:
                    sub = f"{where}[{position}]" if source._database_listed else where
                    raise _fail(f"no [[database]] is named '{name}'", sub)
                if database.kind != "postgres":
                    continue  # a dump engine: no data directory of its own
                server = os.path.realpath(database.pgdata or "")
                if server in servers:
                    raise _fail(f"databases '{servers[server]}' and '{name}' are the same server (pgdata "
                                f"'{database.pgdata}'): a [[database]] captures its whole cluster, name it once",
                                where)
                servers[server] = name
        return self


# The keys each table may hold, in the order they are declared (and documented).
TOP_KEYS = tuple(File.model_fields)
REPOSITORY_KEYS = tuple(RepositoryTable.model_fields)
DAEMON_KEYS = tuple(DaemonTable.model_fields)
SOURCE_KEYS = tuple(SourceTable.model_fields)
QUIESCE_KEYS = tuple(QuiesceTable.model_fields)
HOOK_KEYS = tuple(HookTable.model_fields)
DATABASE_KEYS = tuple(DatabaseTable.model_fields)


# ---------------------------------------------------------------------------------------------
# Validation and the messages of its errors


def validate(data: Mapping[str, Any], base_dir: str) -> File:
    """The parsed TOML `data` as a `File`; SchemaError (the first problem) if it does not fit."""
    try:
        return File.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A misspelt key explains the rest best: it is reported first, like a missing table.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise _schema_error(first) from None


def _key(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_MISSING = {"repository": "required table is missing", "mode": "required: 'cold' or 'hot'",
            "paths": "required: a list of directories"}
_EXPECTED = {
    "string_type": "a non-empty string", "string_too_short": "a non-empty string",
    "string_pattern_mismatch": "a name of letters, digits, '.', '_' or '-'",
    "bool_type": "true or false",
    "int_type": "a positive integer", "greater_than": "a positive integer",
    "dict_type": "a table", "model_type": "a table",
    "list_type": "a list of strings", "tuple_type": "a list of strings",
}


def _schema_error(error: Mapping[str, Any]) -> SchemaError:
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    key = _key(loc)
    if kind == _ERROR:
        ctx = error["ctx"]
        sub = ctx.get("sub", "")
        full = key + sub if not sub or sub[0] in ".[" else (f"{key}.{sub}" if key else sub)
        detail = ctx["detail"].replace("{key}", full) if ctx.get("with_key") else ctx["detail"]
        return SchemaError(full, detail)
    if kind == "extra_forbidden":
        return SchemaError("", f"unknown key '{key}'")
    if kind == "missing":
        return SchemaError(key, _MISSING.get(str(loc[-1]), "required"))
    if kind == "too_short" and loc and loc[-1] == "paths":
        return SchemaError(key, "expected at least one path")
    if kind == "literal_error":
        expected = error["ctx"]["expected"]
        head, _, last = expected.rpartition(" or ")
        return SchemaError(key, f"expected one of {head}, {last}, got {show(value)}")
    if kind in _EXPECTED:
        return SchemaError(key, f"expected {_EXPECTED[kind]}, got {show(value)}")
    return SchemaError(key, error["msg"])
