"""`cairnd`'s command line: its arguments, the configuration they describe, the exit codes.

What always holds: a bad argument is one line on stderr and exit 2 (EXIT_USAGE), before any
file is read (also an empty value, or a --socket that is not UTF-8); `build_config` returns the
configuration file (or the `--repo` one) with the command line's overrides applied, or raises
CairnError. A flag that stands for a configuration key (`--passphrase-file`, `--key-file`,
`--socket`, `--socket-group`, `--stall-timeout`, ...) takes its values as the key does, checked
the same way, and replaces the file's value. Nothing here starts a part of the
daemon, so `cairnd --init` and argument errors cost no more than this and the configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import NoReturn

from cairn import __version__
from cairn.daemon.runtime.config import Config, config_from_args, load_config
from cairn.daemon.runtime.config_schema import duration_value, split_address
from cairn.daemon.runtime.repokeys import add_key_arguments, check_key_arguments, key_overrides
from cairn.fsio.names import shown
from cairn.store.errors import InvalidArgumentError
from cairn.store.locations import is_s3

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_TCP_FLAGS = ("--listen", "--tls-cert", "--tls-key", "--token-file")  # [daemon] listen, tls_cert, tls_key, token_file


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"cairnd: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="cairnd", description="The Cairn backup daemon.")
    parser.add_argument("--version", action="version", version=f"cairnd {__version__}")
    parser.add_argument("--config", metavar="FILE", help="run with a TOML configuration")
    parser.add_argument("--repo", metavar="DIR", help="run without a config file on this repository")
    parser.add_argument("--source", metavar="DIR", nargs="+", action="extend", default=[],
                        help="back up these directories (with --repo)")
    parser.add_argument("--read-only", action="store_true", help="serve browsing and restores only")
    parser.add_argument("--init", action="store_true",
                        help="create the repository (--repo, or the one --config names), then exit")
    parser.add_argument("--check-config", action="store_true",
                        help="check the configuration as a start does (and open the repository), then exit")
    add_key_arguments(parser)
    parser.add_argument("--stall-timeout", metavar="DURATION",
                        help="how long an operation may wait for an object store that does not answer, e.g. 5m "
                             "(as [repository] stall_timeout; s3:// repositories only; default 2m)")
    parser.add_argument("--socket", metavar="PATH", help="listen on this Unix socket instead of the configured one")
    parser.add_argument("--socket-group", metavar="GROUP",
                        help="give this group access to the socket (as [daemon] socket_group), e.g. postgres")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="also serve gRPC over TCP with TLS (as [daemon] listen; needs --tls-cert, --tls-key and "
                             "--token-file, or the configuration's), e.g. for remote restores from a recovery host")
    parser.add_argument("--tls-cert", metavar="FILE", help="the TCP listener's certificate (as [daemon] tls_cert)")
    parser.add_argument("--tls-key", metavar="FILE", help="the TCP listener's private key (as [daemon] tls_key)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="the token remote clients must present (as [daemon] token_file)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override daemon.log_level")
    args = parser.parse_args(argv)
    for flag in ("--config", "--repo", "--passphrase-file", "--key-file", "--socket", "--socket-group",
                 "--stall-timeout", *_TCP_FLAGS):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None and not value.strip():  # an empty value would read as the option left out
            parser.error(f"{flag} needs a value, got an empty string")
    if args.socket is not None and not _utf8(args.socket):  # gRPC names the socket as text
        parser.error(f"--socket '{shown(os.fsencode(args.socket))}' is not valid UTF-8")
    if args.listen is not None:
        try:
            split_address(args.listen)
        except InvalidArgumentError as exc:
            parser.error(f"--listen: {exc.message}")
    if bool(args.config) == bool(args.repo):
        parser.error("give either --config FILE or --repo DIR")
    if args.repo:  # no configuration to complete them: the TCP flags go together (with --config, once it is read)
        _check_tcp_flags(parser, args)
    check_key_arguments(parser, args)
    _check_stall_timeout(parser, args)
    if args.config and args.source:
        parser.error("--source goes with --repo; a config file names its sources itself")
    _check_init_args(parser, args)
    return args


def _check_tcp_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    given = {f: getattr(args, f[2:].replace("-", "_")) for f in _TCP_FLAGS}
    if given["--listen"]:
        missing = [f for f in _TCP_FLAGS[1:] if not given[f]]
        if missing:
            parser.error(f"--listen needs {', '.join(missing)}: TCP is served only with TLS and a token")
    elif any(given.values()):
        parser.error("--tls-cert, --tls-key and --token-file go with --listen HOST:PORT")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # argparse gives bytes that are not UTF-8 as surrogates
        return False
    return True


def _check_stall_timeout(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--stall-timeout as [repository] stall_timeout: a duration above zero, for an s3:// repository
    (with --config the file's path is checked once it is read, in `with_overrides`)."""
    if args.stall_timeout is None:
        return
    try:
        args.stall_timeout = duration_value(args.stall_timeout, positive=True)
    except InvalidArgumentError as exc:
        parser.error(f"--stall-timeout: {exc.message}")
    if args.repo and not is_s3(args.repo):
        parser.error(f"--stall-timeout needs an s3:// repository, got --repo '{args.repo}'")


def _check_init_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--init creates a repository and exits: it takes nothing that only a running daemon uses."""
    if not args.init:
        return
    if args.check_config and args.init:
        parser.error("--init creates the repository and exits; --check-config does not go with it")
    for flag, given in (("--read-only", args.read_only), ("--source", args.source), ("--socket", args.socket),
                        ("--socket-group", args.socket_group),
                        *((f, getattr(args, f[2:].replace("-", "_"))) for f in _TCP_FLAGS)):
        if given:
            parser.error(f"--init creates the repository and exits; {flag} does not go with it")


def build_config(args: argparse.Namespace) -> Config:
    """The configuration the arguments describe, with command-line overrides applied."""
    if args.config:
        config = load_config(args.config)
    else:
        config = config_from_args(args.repo, args.source, args.read_only)
    return with_overrides(config, args)


def with_overrides(config: Config, args: argparse.Namespace) -> Config:
    config = key_overrides(config, args)
    stall = getattr(args, "stall_timeout", None)
    if stall is not None:
        if not is_s3(config.repository.path):
            raise InvalidArgumentError(f"--stall-timeout needs an s3:// repository; the configuration's "
                                       f"repository.path is '{config.repository.path}'")
        config = dataclasses.replace(config, repository=dataclasses.replace(config.repository, stall_timeout=stall))
    changes = {}
    if args.read_only:
        changes["read_only"] = True
    if args.socket:
        changes["socket"] = os.path.abspath(args.socket)
    if args.socket_group:
        changes["socket_group"] = args.socket_group
    if args.log_level:
        changes["log_level"] = args.log_level
    for flag in _TCP_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value:
            changes[flag[2:].replace("-", "_")] = value if flag == "--listen" else os.path.abspath(value)
    if not changes:
        return config
    daemon = dataclasses.replace(config.daemon, **changes)
    if daemon.listen:  # as the configuration's rule: a TCP listener needs TLS and a token
        missing = [f for f in _TCP_FLAGS[1:] if not getattr(daemon, f[2:].replace("-", "_"))]
        if missing:
            keys = ", ".join("daemon." + f[2:].replace("-", "_") for f in missing)
            raise InvalidArgumentError(f"a TCP listener needs {', '.join(missing)} (or {keys} in the configuration): "
                                       "TCP is served only with TLS and a token")
    elif any(getattr(args, f[2:].replace("-", "_"), None) for f in _TCP_FLAGS[1:]):
        raise InvalidArgumentError("--tls-cert, --tls-key and --token-file go with a TCP listener: give --listen "
                                   "HOST:PORT (or daemon.listen in the configuration)")
    return dataclasses.replace(config, daemon=daemon)
