"""The daemon's repository unlocking and `--init`: config keys and flags, order of secrets,
encrypted by default, clear refusals."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from cairn.daemon.runtime import preflight
from cairn.daemon.runtime.config import RepositoryConfig, config_from_args
from cairn.daemon.runtime.repokeys import key_overrides, open_repository
from cairn.store.content import crypto
from cairn.store.errors import AlreadyExistsError, InvalidArgumentError, WrongKeyError
from cairn.store.repository import Repository


def _files(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("first passphrase\n")
    kf = tmp_path / "kf"
    kf.write_bytes(crypto.encode_key_file(crypto.Secret.new_key_file().value))
    return str(pw), str(kf)


def _config(tmp_path, repo: str, **keys):
    cfg = config_from_args(repo, [str(tmp_path)], False, home=str(tmp_path / "home"))
    return dataclasses.replace(cfg, repository=dataclasses.replace(cfg.repository, **keys))


def test_reopened_by_either_secret_the_passphrase_tried_first(tmp_path):
    pw, kf = _files(tmp_path)
    path = str(tmp_path / "repo")
    assert preflight.init_repository(_config(tmp_path, path, passphrase_file=pw)) == path
    repo = open_repository(RepositoryConfig(path, passphrase_file=pw), read_only=False)
    assert repo.encrypted and repo.config.version == 2
    repo.add_key(crypto.Secret.from_key_file(kf))
    repo.close()
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    both = open_repository(RepositoryConfig(path, passphrase_file=str(wrong), key_file=kf), read_only=True)
    assert both.encrypted and both.key_id != repo.key_id
    with pytest.raises(WrongKeyError, match="^unable to open repository: wrong passphrase or key file$"):
        open_repository(RepositoryConfig(path, passphrase_file=str(wrong)), read_only=True)
    with pytest.raises(WrongKeyError, match="encrypted"):
        open_repository(RepositoryConfig(path), read_only=False)


def test_plaintext_repository_opens_even_if_the_secret_files_are_missing(tmp_path):
    path = str(tmp_path / "repo")
    Repository.open_local(path, create=True).close()
    cfg = RepositoryConfig(path, passphrase_file=str(tmp_path / "absent"))
    assert not open_repository(cfg, read_only=True).encrypted


def test_init_is_encrypted_unless_asked_and_refuses_an_existing_repository(tmp_path):
    pw, _kf = _files(tmp_path)
    with pytest.raises(InvalidArgumentError, match="a new repository is encrypted"):
        preflight.init_repository(_config(tmp_path, str(tmp_path / "a")))
    assert not (tmp_path / "a").exists()
    with pytest.raises(InvalidArgumentError, match="unable to read passphrase file"):
        preflight.init_repository(_config(tmp_path, str(tmp_path / "a"), passphrase_file=str(tmp_path / "no")))
    preflight.init_repository(_config(tmp_path, str(tmp_path / "b"), passphrase_file=pw))
    assert Repository.open_local(str(tmp_path / "b"), secret=crypto.Secret.from_passphrase_file(pw)).encrypted
    preflight.init_repository(_config(tmp_path, str(tmp_path / "c")), plaintext=True)
    assert not Repository.open_local(str(tmp_path / "c")).encrypted
    with pytest.raises(AlreadyExistsError, match="already exists"):
        preflight.init_repository(_config(tmp_path, str(tmp_path / "b"), passphrase_file=pw))


def test_command_line_replaces_the_config_files_secrets(tmp_path):
    cfg = config_from_args(str(tmp_path / "r"), [str(tmp_path)], False, home=str(tmp_path / "h"))
    args = argparse.Namespace(passphrase_file=None, key_file="k.key")
    got = key_overrides(cfg, args).repository
    assert got.key_file and got.key_file.endswith("/k.key") and got.passphrase_file is None
    assert key_overrides(cfg, argparse.Namespace(passphrase_file=None, key_file=None)) is cfg
