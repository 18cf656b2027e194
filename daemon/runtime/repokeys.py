"""How the daemon unlocks its repository: `--passphrase-file F | --key-file F` and the
`[repository] passphrase_file | key_file` keys.

What always holds: an encrypted (format 2) repository opens only with a passphrase or key
file that unwraps one of its keys; anything else is one WrongKeyError line ("unable to open
repository: wrong passphrase or key file") and the daemon exits 1. A config may name both,
tried passphrase first; files are read only when needed, and one that cannot be read is an
error that says where it is named (the file's key and line, or the flag). `cairnd --init` (daemon/runtime/preflight.py)
creates an encrypted repository under the first secret named, and a plaintext one only when
`--no-encryption` asks for it. Plaintext (format 1) repositories open as before; a secret
given for one is ignored. A secret that opens a write-only key gives a write-only handle: it
keeps its own sets and trees in `<state_dir>/write-only` (store/snapshots/writeonly.py) and refuses
restores, verify, prune and key changes with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from cairn.daemon.runtime.config import Config, RepositoryConfig
from cairn.store.content.crypto import Secret
from cairn.store.errors import InvalidArgumentError, WrongKeyError
from cairn.store.locations import is_s3
from cairn.store.locations import open_repository as open_repository_at
from cairn.store.repository import Repository

log = logging.getLogger("cairn.daemon")
WRITE_ONLY_CACHE = "write-only"  # under the state directory


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--passphrase-file", metavar="F",
                        help="the passphrase of the encrypted repository (first line of F)")
    parser.add_argument("--key-file", metavar="F", help="a key file of the encrypted repository")
    parser.add_argument("--no-encryption", action="store_true",
                        help="with --init: create a plaintext (format 1) repository")


def check_key_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if getattr(args, "passphrase_file", None) and getattr(args, "key_file", None):
        parser.error("give --passphrase-file or --key-file, not both")
    if getattr(args, "no_encryption", False):
        if not getattr(args, "init", False):
            parser.error("--no-encryption goes with --init")
        if args.passphrase_file or args.key_file:
            parser.error("--no-encryption does not go with --passphrase-file or --key-file")


def key_overrides(config: Config, args: argparse.Namespace) -> Config:
    """The command line's --passphrase-file / --key-file replace the config file's keys."""
    pf, kf = getattr(args, "passphrase_file", None), getattr(args, "key_file", None)
    if not pf and not kf:
        return config
    repo = dataclasses.replace(config.repository, passphrase_file=os.path.abspath(pf) if pf else None,
                               key_file=os.path.abspath(kf) if kf else None)
    return dataclasses.replace(config, repository=repo)


def _loaders(repo: RepositoryConfig, where: Callable[[str], str] | None = None) -> list[Callable[[], Secret]]:
    """Readers of the secrets the configuration names, in the order they are tried. Files
    are read only when needed: a plaintext repository opens even if they are missing. A file
    that cannot be read (or holds no secret) is an error that ends with `where(key)`, where the
    configuration names it (' (repository.passphrase_file in 'F', line 3)')."""
    def reader(key: str, read: Callable[[str], Secret], path: str) -> Callable[[], Secret]:
        def load() -> Secret:
            try:
                return read(path)
            except InvalidArgumentError as exc:
                if where is None:
                    raise
                raise InvalidArgumentError(exc.message + where(key), hint=exc.hint) from None
        return load

    out: list[Callable[[], Secret]] = []
    if repo.passphrase_file:
        out.append(reader("passphrase_file", Secret.from_passphrase_file, repo.passphrase_file))
    if repo.key_file:
        out.append(reader("key_file", Secret.from_key_file, repo.key_file))
    return out


def secret_of(repo: RepositoryConfig) -> Secret | None:
    """The first secret the configuration names (read now), or None."""
    loaders = _loaders(repo)
    return loaders[0]() if loaders else None


def open_repository(repo: RepositoryConfig, *, read_only: bool, cache_dir: str | None = None,
                    where: Callable[[str], str] | None = None) -> Repository:
    """Open the configured repository (never create it: that is `cairnd --init`); an
    object-store one caches small objects under `cache_dir` (`[repository] cache_size`).
    `where(key)` says where a secret file that cannot be read is named (see `_loaders`)."""
    path = repo.path
    loaders = _loaders(repo, where)

    def attempt(secret: Any = None) -> Repository:
        if is_s3(path):  # the object store is connected to (and probed) once per attempt
            return open_repository_at(path, repo.s3_options(), read_only=read_only, secret=secret,
                                      cache_dir=cache_dir, cache_size=repo.cache_size)
        return Repository.open_local(path, read_only=read_only, secret=secret)

    try:  # format 1 needs no secret; format 2 refuses at once, before reading anything else
        return attempt()
    except WrongKeyError:
        if not loaders:
            raise
    failure: WrongKeyError | None = None
    for load in loaders:
        try:
            return attempt(load())
        except WrongKeyError as e:
            failure = e
    assert failure is not None
    raise failure


def attach_write_only_cache(repo: Repository, state_dir: str, gc: str | None = None) -> None:
    """A handle opened with a write-only key keeps its own sets and trees in the state
    directory (0700/0600), so incrementals find their base after a restart. A `[repository]
    gc` schedule is then not run (the daemon starts no retention thread)."""
    if not getattr(repo, "write_only", False):
        return
    repo.attach_host_cache(os.path.join(state_dir, WRITE_ONLY_CACHE))
    log.info("repository opened with a write-only key: backups and WAL archiving only; restores, "
             "verify, prune and key changes need a full key")
    if gc:
        log.warning("[repository] gc is not run: the repository key is write-only (run retention on a host "
                    "with a full key)")
