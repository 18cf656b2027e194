"""Start-up checks of `cairnd`: everything the configuration names is checked before the daemon
creates or changes anything, and the explicit creation of a repository (`--init`).

What always holds: `check_start` only reads (stat, open for reading, a bind that is closed at
once, a connect probe), and the first problem it finds is raised as one `CairnError` naming the
key, path or address, so a failed start leaves nothing behind. A missing repository is never
created here or anywhere in the daemon except by `init_repository`, which refuses an existing
repository and a non-empty directory. What may come after the daemon (a database, a hook's
command), and sources over one tree, are only warned of (`warn_unreachable_databases`,
`warn_missing_hooks`, `warn_overlapping_sources`), never refused.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import shutil
import socket
import ssl
import stat
import tomllib
from collections.abc import Callable

from cairn.daemon.runtime.config import Config, DaemonConfig, overlapping_paths, split_address
from cairn.daemon.runtime.config_lines import line_of
from cairn.daemon.runtime.repokeys import open_repository, secret_of
from cairn.fsio.sockets import check_socket_path
from cairn.store.errors import (
    AlreadyExistsError,
    CairnError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotARepositoryError,
    NotFoundError,
)
from cairn.store.locations import is_s3, open_backend, refuse_occupied
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend

log = logging.getLogger(__name__)

DB_CONNECT_TIMEOUT = 3


def init_hint(config: Config) -> str:
    """The command that creates the configured repository, with the secret that `--init` needs
    (the one given, or a placeholder when none is), so that it runs as printed."""
    repo = config.repository
    command = f"cairnd --config {config.path} --init" if config.path else f"cairnd --repo {repo.path} --init"
    if repo.passphrase_file:
        return f"create it with: {command} --passphrase-file {repo.passphrase_file}"
    if repo.key_file:
        return f"create it with: {command} --key-file {repo.key_file}"
    return f"create it with: {command} --passphrase-file F (or --key-file F)"


def check_start(config: Config) -> None:
    """Every check that needs no database, in the order an operator would fix them."""
    daemon = config.daemon
    check_socket_path(daemon.socket)  # nothing but a stale socket in the way, no daemon serving it
    check_repository(config)
    check_access(daemon)
    if daemon.listen:
        check_port_free("daemon.listen", daemon.listen)
    if daemon.metrics:
        check_port_free("daemon.metrics", daemon.metrics)
    check_sources(config)


def check_access(daemon: DaemonConfig) -> None:
    """What clients reach the daemon with: the socket's group exists; a TCP listener's token,
    certificate and key are readable and the certificate and key are a pair."""
    if daemon.socket_group:
        try:
            grp.getgrnam(daemon.socket_group)
        except KeyError:
            raise InvalidArgumentError(f"daemon.socket_group: no group is named '{daemon.socket_group}'",
                                       hint="create it (groupadd --system NAME) or remove the key") from None
    if daemon.listen:
        check_readable("daemon.token_file", daemon.token_file, nonempty=True)
        check_readable("daemon.tls_cert", daemon.tls_cert)
        check_readable("daemon.tls_key", daemon.tls_key)
        check_tls(daemon.tls_cert, daemon.tls_key)


def check_config(config: Config) -> tuple[str, list[str]]:
    """`cairnd --check-config`: what a start checks, as far as a daemon already running on the
    same configuration does not stand in its way, then the repository opened read-only with the
    configured secret. Returns (a line saying what holds, the warnings a start would log); the
    first problem raises, as at start. Not checked: that the `listen` and `metrics` addresses
    and the socket are free (a running daemon holds them; a file that is not a socket in the
    socket's place is refused)."""
    daemon = config.daemon
    if os.path.lexists(daemon.socket) and not stat.S_ISSOCK(os.lstat(daemon.socket).st_mode):
        check_socket_path(daemon.socket)  # raises: a file that is not a socket is in the way
    check_repository(config)
    if os.path.exists(daemon.state_dir) and not os.path.isdir(daemon.state_dir):
        raise InvalidArgumentError(f"state directory '{daemon.state_dir}' is not a directory")
    check_access(daemon)
    check_sources(config)
    repo = open_repository(config.repository, read_only=True, where=secret_named_at(config))
    try:
        key = " with a write-only key" if repo.write_only else ""
    finally:
        repo.close()
    logging.disable(logging.WARNING)  # the warnings are returned, to be printed as the check's own lines
    try:
        warnings = (warn_unreachable_databases(config) + warn_missing_hooks(config)
                    + warn_overlapping_sources(config))
    finally:
        logging.disable(logging.NOTSET)
    sources = len(config.sources)
    what = f"{sources} source{'' if sources == 1 else 's'}, {len(config.databases)} databases"
    return f"repository '{config.repository.path}' opens{key}; {what}", warnings


def check_sources(config: Config) -> None:
    """Every source path (and aux path) is a directory: checked at start and by a reload, which
    refuses the whole file on the first problem (the running configuration stays)."""
    if config.daemon.read_only:
        return
    for index, source in enumerate(config.sources):
        keys = [f"source[{index}].paths[{i}]" for i in range(len(source.paths))]
        keys += [f"source[{index}].aux_paths[{i}]" for i in range(len(source.aux_paths))]
        for key, path in zip(keys, (*source.paths, *source.aux_paths), strict=True):
            try:
                check_source_path(source.name, path)
            except CairnError as exc:
                raise type(exc)(exc.message + _written_at(config, key), hint=exc.hint) from None


def secret_named_at(config: Config) -> Callable[[str], str]:
    """For open_repository: where a secret file key ('passphrase_file', 'key_file') is named, as
    `_written_at` says it for the configuration file's key, or the command-line flag that
    replaced it (' (--passphrase-file)')."""
    def where(key: str) -> str:
        path = getattr(config.repository, key)
        written = None
        if config.path is not None:
            try:
                with open(config.path, "rb") as handle:
                    written = tomllib.load(handle).get("repository", {}).get(key)
            except (OSError, tomllib.TOMLDecodeError, AttributeError):
                written = None
        base = os.path.dirname(config.path) if config.path else ""
        if isinstance(written, str) and os.path.normpath(os.path.join(base, os.path.expanduser(written))) == path:
            return _written_at(config, f"repository.{key}")
        return f" (--{key.replace('_', '-')})"
    return where


def _written_at(config: Config, key: str) -> str:
    """' (KEY in 'FILE', line N)': where a configuration file names what a check refused; '' for a
    configuration of command-line flags."""
    if config.path is None:
        return ""
    try:
        with open(config.path, encoding="utf-8") as handle:
            line = line_of(handle.read(), key)
    except (OSError, UnicodeDecodeError):
        line = None
    return f" ({key} in '{config.path}'{f', line {line}' if line else ''})"


LOST_CONFIG_KINDS = ("keys", "sets", "index", "packs")
LOST_CONFIG_HINT = ("put config/config back from a copy of the repository (it is small and never changes); "
                    "'cairnd --init' refuses a location that holds objects, so as never to write over them")


def lost_config(location: str) -> str:
    return f"'{location}' holds Cairn objects but its config object is missing: the repository cannot be opened"


def check_repository(config: Config) -> None:
    """The configured repository exists; its absence is an error that says how to create one.
    On object storage this connects (a missing bucket, wrong credentials or an unreachable
    endpoint is one line now, not at the first backup)."""
    path = config.repository.path
    if is_s3(path):
        backend = open_backend(path, config.repository.s3_options(), probe_conditional=False)
        try:
            backend.get("config", "config")
        except NotFoundError:
            if any(next(iter(backend.list(kind)), None) for kind in LOST_CONFIG_KINDS):
                raise NotARepositoryError(lost_config(backend.location()), hint=LOST_CONFIG_HINT) from None
            what = f"'{backend.location()}' is not a Cairn repository: no config"
            if not config.daemon.read_only:
                what += f"; {init_hint(config)}"
            raise NotARepositoryError(what) from None
        finally:
            backend.close()
        return
    if not os.path.exists(path):
        what = f"'{path}' is not a Cairn repository: no such directory"
        if not config.daemon.read_only:
            what += f"; {init_hint(config)}"
        raise NotARepositoryError(what)
    if not os.path.isdir(path):
        raise NotARepositoryError(f"'{path}' is not a Cairn repository: not a directory")
    try:
        LocalBackend(path).get("config", "config")
    except NotFoundError:
        what = f"'{path}' is not a Cairn repository: it holds no repository config"
        if any(os.path.isdir(os.path.join(path, k)) and os.listdir(os.path.join(path, k)) for k in LOST_CONFIG_KINDS):
            raise NotARepositoryError(lost_config(path), hint=LOST_CONFIG_HINT) from None
        if not os.listdir(path) and not config.daemon.read_only:
            what = (f"'{path}' is an empty directory, not a repository (if the repository's file system is not "
                    f"mounted there, mount it); {init_hint(config)}")
        raise NotARepositoryError(what) from None


def init_repository(config: Config, plaintext: bool = False) -> str:
    """Create the configured repository (and missing parent directories); return its path.

    Refuses a path that holds a repository already, a file, and a non-empty directory. The
    repository is encrypted (format 2) under the configured passphrase or key file; without
    one it is refused unless `plaintext` (format 1) is asked for.
    """
    path = config.repository.path
    secret = secret_of(config.repository)
    if secret is None and not plaintext:
        raise InvalidArgumentError("a new repository is encrypted: give --passphrase-file F or --key-file F "
                                   "(or --no-encryption for a plaintext one)")
    if is_s3(path):
        backend = open_backend(path, config.repository.s3_options())
        try:
            backend.get("config", "config")
            raise AlreadyExistsError(f"a repository already exists at '{backend.location()}'")
        except NotFoundError:
            pass
        refuse_occupied(backend)
        Repository.init(backend, secret=secret).close()
        return path
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise AlreadyExistsError(f"unable to create a repository at '{path}': a file is in the way")
        try:
            LocalBackend(path).get("config", "config")
            raise AlreadyExistsError(f"a repository already exists at '{path}'")
        except NotFoundError:
            pass
        if os.listdir(path):
            raise AlreadyExistsError(f"unable to create a repository at '{path}': the directory is not empty")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise FailedPreconditionError(f"unable to create '{path}': {exc.strerror or exc}") from None
    Repository.init_local(path, secret=secret).close()
    return path


def check_readable(key: str, path: str | None, nonempty: bool = False) -> None:
    """`path` is a regular file this process can read (and, with `nonempty`, holds something)."""
    if path is None:
        raise InvalidArgumentError(f"{key}: required when daemon.listen is set")
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 16)
    except OSError as exc:
        raise InvalidArgumentError(f"{key}: unable to read '{path}': {exc.strerror or exc}") from None
    if nonempty and not data.strip():
        raise InvalidArgumentError(f"{key}: '{path}' is empty")


def check_tls(cert: str | None, key: str | None) -> None:
    """The certificate and key parse and belong together."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidArgumentError(
            f"daemon.tls_cert/tls_key: '{cert}' and '{key}' are not a PEM certificate and its key: "
            f"{getattr(exc, 'reason', None) or exc}") from None


def check_port_free(key: str, address: str) -> None:
    """Nothing listens on `address` yet (port 0 always passes: the kernel picks one)."""
    host, port = split_address(address)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidArgumentError(f"{key}: unable to resolve '{address}': {exc.strerror}") from None
    for family, kind, proto, _name, sockaddr in infos:
        probe = socket.socket(family, kind, proto)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FailedPreconditionError(f"{key}: address {address} is already in use") from None
            raise FailedPreconditionError(f"{key}: unable to listen on {address}: {exc.strerror}") from None
        finally:
            probe.close()


def check_source_path(source: str, path: str) -> None:
    """A source path exists and is a directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"source '{source}': path '{path}' does not exist") from None
    except OSError as exc:
        raise FailedPreconditionError(f"source '{source}': unable to read '{path}': {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPreconditionError(f"source '{source}': path '{path}' is not a directory")


def warn_unreachable_databases(config: Config) -> list[str]:
    """Connect to each database a source names and log one warning per problem; return them.

    Only a warning: PostgreSQL may start after cairnd (its archive_command needs cairnd), and a
    set checks its database again before any window opens.
    """
    if config.daemon.read_only:
        return []
    names = {source.database for source in config.sources if source.database}
    problems = []
    for db in config.databases:
        if db.name not in names or db.kind != "postgres":  # dumps: their tools are checked per set
            continue
        problem = database_problem(db)
        if problem:
            log.warning("%s (sets of this database fail until this is fixed; `cairn check-db %s` checks again)",
                        problem, db.name)
            problems.append(problem)
    return problems


def warn_overlapping_sources(config: Config) -> list[str]:
    """Log one warning per source path that is (or lies inside, or holds) another source's path
    that source does not exclude; return them. Only a warning: two sources over one tree (a cold
    nightly full and a hot hourly incremental) are a use, not only a mistake."""
    problems = [f"{key}: {detail}" for key, detail in overlapping_paths(config.sources)]
    for problem in problems:
        log.warning("%s", problem)
    return problems


def warn_missing_hooks(config: Config) -> list[str]:
    """Log one warning per quiesce hook command (freeze, thaw, on_success, on_failure) that is
    not found: a name not on PATH, or an absolute path that is no executable file; return them.

    Only a warning, as for a database: a tool may be installed after cairnd starts, and a set
    that runs a missing hook fails then with one line naming it. A relative path with a '/' is
    not checked: it names a file from the directory the hook runs in."""
    if config.daemon.read_only:
        return []
    problems = []
    for source in config.sources:
        window = source.quiesce
        if window is None:
            continue
        commands = [("freeze", argv) for level in window.levels() for argv in level.freeze]
        commands += [("thaw", argv) for level in window.levels() for argv in level.thaw]
        commands += [("on_success", argv) for argv in window.on_success]
        commands += [("on_failure", argv) for argv in window.on_failure]
        for what, argv in commands:
            program = argv[0] if argv else ""
            if not program or ("/" in program and not os.path.isabs(program)) or shutil.which(program):
                continue
            where = "is not an executable file" if "/" in program else "is not found on PATH"
            problem = f"source '{source.name}': {what} hook '{program}' {where}"
            log.warning("%s (sets of this source fail until it is there)", problem)
            problems.append(problem)
    return problems


def database_problem(db: object) -> str:
    """'' when the database accepts a backup connection, else why not."""
    from cairn.daemon.databases.postgres.connection import PgConnection  # psycopg2 only when a database is configured

    try:
        with PgConnection.from_config(db, connect_timeout=DB_CONNECT_TIMEOUT):
            return ""
    except CairnError as exc:
        return exc.message
