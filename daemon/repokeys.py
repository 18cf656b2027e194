"""How the daemon unlocks its repository: `--passphrase-file F | --key-file F` and the
`[repository] passphrase_file | key_file` keys.

What always holds: an encrypted (format 2) repository opens only with a passphrase or key
file that unwraps one of its keys; anything else is one WrongKeyError line ("unable to open
repository: wrong passphrase or key file") and the daemon exits 1. A repository the daemon
creates is encrypted (format 2) whenever a passphrase or key file is given; `init_repository`
(for `cairnd --init`) refuses to create a plaintext one unless asked to explicitly. Plaintext
(format 1) repositories open as before; a secret given for one is ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from cairn.daemon.config import Config, RepositoryConfig
from cairn.store.crypto import Secret
from cairn.store.errors import InvalidArgumentError, RepositoryError
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


def secret_of(repo: RepositoryConfig) -> Secret | None:
    """The secret the configuration names (read now), or None."""
    if repo.passphrase_file:
        return Secret.from_passphrase_file(repo.passphrase_file)
    if repo.key_file:
        return Secret.from_key_file(repo.key_file)
    return None


def open_repository(repo: RepositoryConfig, *, create: bool, read_only: bool) -> Repository:
    """Open (or, with `create`, create when missing or empty) the configured repository."""
    secret = secret_of(repo)
    path = repo.path
    fresh = create and (not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)))
    opened = Repository.open_local(path, create=create, read_only=read_only, secret=secret)
    if fresh:
        if opened.encrypted:
            log.info("created an encrypted repository (format 2) at %s", path)
        else:
            log.warning("created a repository WITHOUT encryption (format 1) at %s: "
                        "give --passphrase-file or --key-file to encrypt a new repository", path)
    return opened


def init_repository(repo: RepositoryConfig, *, plaintext: bool = False) -> Repository:
    """Create a new repository and its first key (for `cairnd --init`): encrypted unless
    `plaintext`; refuses an existing repository and a missing secret."""
    secret = secret_of(repo)
    if secret is None and not plaintext:
        raise InvalidArgumentError("a new repository is encrypted: give --passphrase-file F or --key-file F")
    if os.path.exists(repo.path) and (not os.path.isdir(repo.path) or os.listdir(repo.path)):
        raise RepositoryError(f"a repository already exists at '{repo.path}'")
    return Repository.init_local(repo.path, secret=secret)
