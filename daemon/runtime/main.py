"""`cairnd`: the entry point. It reads the arguments and the configuration, creates a repository
(`--init`), checks them (`--check-config`) or hands both to the running daemon
(daemon/runtime/process.py) until SIGTERM.

What always holds: bad arguments exit 2 and a bad configuration or repository exits 1, with one
line on stderr either way, before anything is created or changed. The daemon's parts (gRPC,
the change journal, the database adapters, ...) are imported only once the daemon is to run:
they are more than half of a start's CPU, which `cairnd --init`, bad arguments and a
configuration file that does not validate do not pay.
"""

from __future__ import annotations

import sys

from cairn.daemon.runtime import preflight
from cairn.daemon.runtime.arguments import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, build_config, parse_args
from cairn.daemon.runtime.config import Config
from cairn.errors import CairnError


def init_repository(config: Config, plaintext: bool = False) -> int:
    """`cairnd --init`: create the configured repository and exit (refusing an existing one)."""
    try:
        path = preflight.init_repository(config, plaintext=plaintext)
    except CairnError as exc:
        print(f"cairnd: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.code == "invalid_argument" else EXIT_FAILURE
    print(f"created {'a plaintext' if plaintext else 'an encrypted'} repository at {path}")
    return EXIT_OK


def check_config(config: Config) -> int:
    """`cairnd --check-config`: the start's checks (daemon/runtime/preflight.py), then exit: 0 with
    a line saying what holds (and a line per warning a start would log), 1 with the first problem."""
    try:
        summary, warnings = preflight.check_config(config)
    except CairnError as exc:
        print(f"cairnd: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_FAILURE
    for warning in warnings:
        print(f"cairnd: warning: {warning}", file=sys.stderr)
    where = f"configuration '{config.path}'" if config.path else "configuration"
    print(f"{where} is valid: {summary}")
    return EXIT_OK


RECURSION_LIMIT = 20_000  # a directory chain as deep as PATH_MAX allows (2,048 levels) walks in recursion


def main(argv: list[str] | None = None) -> int:
    # The tree walks (the backup's, the watcher's os.walk, a restore's stream) recurse once per
    # directory level; Python's default of 1,000 made a 1,200-level tree fail every set.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    args = parse_args(argv)
    try:
        config = build_config(args)
    except CairnError as exc:
        print(f"cairnd: error: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    if args.init:
        return init_repository(config, plaintext=args.no_encryption)
    if args.check_config:
        return check_config(config)
    from cairn.daemon.runtime.process import serve  # the daemon's parts: only for a daemon that runs

    return serve(config, args)


if __name__ == "__main__":
    sys.exit(main())
