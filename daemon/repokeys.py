"""How the daemon unlocks its repository: `--passphrase-file F | --key-file F` and the
`[repository] passphrase_file | key_file` keys.

What always holds: an encrypted (format 2) repository opens only with a passphrase or key
file that unwraps one of its keys; anything else is one WrongKeyError line ("unable to open
repository: wrong passphrase or key file") and the daemon exits 1. A repository the daemon
creates is encrypted (format 2) whenever a passphrase or key file is given (else plaintext,
with a warning in the log); a config may name both, tried passphrase first. `init_repository`
(for `cairnd --init`) refuses to create a plaintext one unless asked to explicitly. Plaintext
(format 1) repositories open as before; a secret given for one is ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable

from cairn.daemon.config import Config, RepositoryConfig
from cairn.store.crypto import Secret
from cairn.store.errors import InvalidArgumentError, RepositoryError, WrongKeyError
from cairn.store.repository import Repository

log = logging.getLogger("cairn.daemon")


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--passphrase-file", metavar="F",
                        help="the passphrase of the encrypted repository (first line of F)")
    parser.add_argument("--key-file", metavar="F", help="a key file of the encrypted repository")


def check_key_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if getattr(args, "passphrase_file", None) and getattr(args, "key_file", None):
        parser.error("give --passphrase-file or --key-file, not both")


def key_overrides(config: Config, args: argparse.Namespace) -> Config:
    """The command line's --passphrase-file / --key-file replace the config file's keys."""
    pf, kf = getattr(args, "passphrase_file", None), getattr(args, "key_file", None)
    if not pf and not kf:
        return config
    repo = dataclasses.replace(config.repository, passphrase_file=os.path.abspath(pf) if pf else None,
                               key_file=os.path.abspath(kf) if kf else None)
    return dataclasses.replace(config, repository=repo)


def _loaders(repo: RepositoryConfig) -> list[Callable[[], Secret]]:
    """Readers of the secrets the configuration names, in the order they are tried. Files
    are read only when needed: a plaintext repository opens even if they are missing."""
    out: list[Callable[[], Secret]] = []
    if repo.passphrase_file:
        out.append(lambda: Secret.from_passphrase_file(repo.passphrase_file))
    if repo.key_file:
        out.append(lambda: Secret.from_key_file(repo.key_file))
    return out


def secret_of(repo: RepositoryConfig) -> Secret | None:
    """The first secret the configuration names (read now), or None."""
    loaders = _loaders(repo)
    return loaders[0]() if loaders else None


def open_repository(repo: RepositoryConfig, *, create: bool, read_only: bool) -> Repository:
    """Open (or, with `create`, create when missing or empty) the configured repository."""
    path = repo.path
    if create and Repository.uninitialised_local(path):
        opened = Repository.open_local(path, create=True, read_only=read_only, secret=secret_of(repo))
        if opened.encrypted:
            log.info("created an encrypted repository (format 2) at %s", path)
        else:
            log.warning("created a repository WITHOUT encryption (format 1) at %s: "
                        "give --passphrase-file or --key-file to encrypt a new repository", path)
        return opened
    loaders = _loaders(repo)
    try:  # format 1 needs no secret; format 2 refuses at once, before reading anything else
        return Repository.open_local(path, read_only=read_only)
    except WrongKeyError:
        if not loaders:
            raise
    failure: WrongKeyError | None = None
    for load in loaders:
        try:
            return Repository.open_local(path, read_only=read_only, secret=load())
        except WrongKeyError as e:
            failure = e
    assert failure is not None
    raise failure


def init_repository(repo: RepositoryConfig, *, plaintext: bool = False) -> Repository:
    """Create a new repository and its first key (for `cairnd --init`): encrypted unless
    `plaintext`; refuses an existing repository and a missing secret."""
    secret = secret_of(repo)
    if secret is None and not plaintext:
        raise InvalidArgumentError("a new repository is encrypted: give --passphrase-file F or --key-file F")
    if not Repository.uninitialised_local(repo.path):
        raise RepositoryError(f"a repository already exists at '{repo.path}'")
    return Repository.init_local(repo.path, secret=secret)
