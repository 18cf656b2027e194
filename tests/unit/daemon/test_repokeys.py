"""The daemon's repository unlocking: config keys and flags, order of secrets, clear refusals."""

from __future__ import annotations

import argparse

import pytest
from cairn.daemon.config import RepositoryConfig
from cairn.daemon.repokeys import init_repository, key_overrides, open_repository
from cairn.store import crypto
from cairn.store.errors import InvalidArgumentError, RepositoryError, WrongKeyError
from cairn.store.repository import Repository


def _files(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("first passphrase\n")
    kf = tmp_path / "kf"
    kf.write_bytes(crypto.encode_key_file(crypto.Secret.new_key_file().value))
    return str(pw), str(kf)


def test_created_encrypted_with_a_passphrase_and_reopened_by_either_secret(tmp_path):
    pw, kf = _files(tmp_path)
    path = str(tmp_path / "repo")
    repo = open_repository(RepositoryConfig(path, passphrase_file=pw), create=True, read_only=False)
    assert repo.encrypted and repo.config.version == 2
    repo.add_key(crypto.Secret.from_key_file(kf))
    repo.close()
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    # both named: the wrong passphrase is tried first, then the key file opens it
    both = open_repository(RepositoryConfig(path, passphrase_file=str(wrong), key_file=kf), create=False,
                           read_only=True)
    assert both.encrypted and both.key_id != repo.key_id
    with pytest.raises(WrongKeyError, match="^unable to open repository: wrong passphrase or key file$"):
        open_repository(RepositoryConfig(path, passphrase_file=str(wrong)), create=False, read_only=True)
    with pytest.raises(WrongKeyError, match="encrypted"):
        open_repository(RepositoryConfig(path), create=True, read_only=False)


def test_plaintext_repository_opens_even_if_the_secret_files_are_missing(tmp_path):
    path = str(tmp_path / "repo")
    Repository.open_local(path, create=True).close()
    cfg = RepositoryConfig(path, passphrase_file=str(tmp_path / "absent"))
    assert not open_repository(cfg, create=False, read_only=True).encrypted
    with pytest.raises(InvalidArgumentError, match="unable to read passphrase file"):
        open_repository(RepositoryConfig(str(tmp_path / "new"), passphrase_file=str(tmp_path / "absent")),
                        create=True, read_only=False)


def test_init_is_encrypted_unless_asked_and_refuses_an_existing_repository(tmp_path):
    pw, _kf = _files(tmp_path)
    with pytest.raises(InvalidArgumentError, match="encrypted"):
        init_repository(RepositoryConfig(str(tmp_path / "a")))
    assert init_repository(RepositoryConfig(str(tmp_path / "b"), passphrase_file=pw)).encrypted
    assert not init_repository(RepositoryConfig(str(tmp_path / "c")), plaintext=True).encrypted
    with pytest.raises(RepositoryError, match="already exists"):
        init_repository(RepositoryConfig(str(tmp_path / "b"), passphrase_file=pw))


def test_command_line_replaces_the_config_files_secrets(tmp_path):
    from cairn.daemon.config import config_from_args
    cfg = config_from_args(str(tmp_path / "r"), [str(tmp_path)], False, home=str(tmp_path / "h"))
    args = argparse.Namespace(passphrase_file=None, key_file="k.key")
    got = key_overrides(cfg, args).repository
    assert got.key_file and got.key_file.endswith("/k.key") and got.passphrase_file is None
    assert key_overrides(cfg, argparse.Namespace(passphrase_file=None, key_file=None)) is cfg
