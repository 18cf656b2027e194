"""The [repository] keys of an object-store repository: accepted with s3:// paths, validated,
refused with a local directory, and handed to the store as S3Options."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cairn.daemon.runtime.config import ConfigError, config_from_args, load_config
from cairn.store.locations import S3Options, parse_s3

DAEMON = """
[daemon]
socket = "/run/cairn/cairnd.sock"
state_dir = "/var/lib/cairn/state"
"""


def load(tmp_path: Path, repository: str):
    path = tmp_path / "cairn.toml"
    path.write_text(textwrap.dedent("[repository]\n" + repository) + DAEMON)
    return load_config(str(path))


def test_s3_repository_with_every_key(tmp_path):
    cfg = load(tmp_path, """
        path = "s3://bkt/some/prefix"
        endpoint = "http://127.0.0.1:8333"
        region = "eu-west-1"
        path_style = false
        credentials_file = "creds"
    """)
    repo = cfg.repository
    assert repo.path == "s3://bkt/some/prefix"  # a URL is not made a local path
    assert repo.s3_options() == S3Options("http://127.0.0.1:8333", "eu-west-1", False, str(tmp_path / "creds"))


def test_s3_repository_without_options_uses_boto3_defaults(tmp_path):
    cfg = load(tmp_path, 'path = "s3://bkt"\n')
    assert cfg.repository.path == "s3://bkt" and cfg.repository.s3_options() is None


@pytest.mark.parametrize("repository,key,detail", [
    ('path = "/srv/repo"\nendpoint = "http://127.0.0.1:8333"\n', "repository.endpoint", "needs an s3://"),
    ('path = "/srv/repo"\ncredentials_file = "c"\n', "repository.credentials_file", "needs an s3://"),
    ('path = "s3://bkt"\nendpoint = "127.0.0.1:8333"\n', "repository.endpoint", "expected a URL"),
    ('path = "s3://bkt"\npath_style = "yes"\n', "repository.path_style", "expected true or false"),
    ('path = "s3://bkt"\nregion = 3\n', "repository.region", "expected a non-empty string"),
    ('path = "s3:///prefix"\n', "repository.path", "no bucket name"),
    ('path = "s3://bkt/a/../b"\n', "repository.path", "dot path segment"),
    ('path = "s3://bkt"\nbucket = "x"\n', "", "unknown key 'repository.bucket'"),
    ('path = "/srv/repo"\nstall_timeout = "1m"\n', "repository.stall_timeout", "needs an s3://"),
    ('path = "s3://bkt"\nstall_timeout = "0s"\n', "repository.stall_timeout", "expected a duration above zero"),
    ('path = "s3://bkt"\nstall_timeout = "soon"\n', "repository.stall_timeout", "expected a duration like '5m'"),
])
def test_bad_repository_keys_name_the_key(tmp_path, repository, key, detail):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, repository)
    assert info.value.key == key and detail in str(info.value)
    assert "\n" not in str(info.value)


def test_repo_argument_keeps_an_s3_url(tmp_path):
    cfg = config_from_args("s3://bkt/p", [], read_only=True, home=str(tmp_path))
    assert cfg.repository.path == "s3://bkt/p"
    assert config_from_args("rel", [], read_only=True, home=str(tmp_path)).repository.path.startswith("/")


def test_parse_s3():
    assert parse_s3("s3://bkt") == ("bkt", "")
    assert parse_s3("s3://bkt/a/b/") == ("bkt", "a/b")
    from cairn.store.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=r"bucket name 'Bad_Bucket!' may hold only letters, digits"):
        parse_s3("s3://Bad_Bucket!/x")


def test_open_backend_of_a_local_path_takes_no_object_store_options(tmp_path):
    from cairn.store.errors import InvalidArgumentError
    from cairn.store.locations import open_backend
    from cairn.store.storage.backend import LocalBackend

    assert isinstance(open_backend(str(tmp_path / "repo")), LocalBackend)
    with pytest.raises(InvalidArgumentError, match="need an s3:// repository"):
        open_backend(str(tmp_path / "repo"), S3Options(endpoint="http://127.0.0.1:1"))


def test_uploads_and_cache_size(tmp_path):
    cfg = load(tmp_path, 'path = "s3://bkt/p"\nuploads = 6\ncache_size = "64MiB"\n')
    assert cfg.repository.uploads == 6 and cfg.repository.cache_size == 64 * 2**20
    cfg = load(tmp_path, 'path = "s3://bkt/p"\ncache_size = 0\n')
    assert cfg.repository.uploads is None and cfg.repository.cache_size == 0  # 0: no cache
    assert load(tmp_path, 'path = "/srv/repo"\nuploads = 2\n').repository.uploads == 2  # local too


@pytest.mark.parametrize("line, key", [
    ("uploads = 0", "repository.uploads"),
    ("uploads = 65", "repository.uploads"),
    ('uploads = "4"', "repository.uploads"),
    ('cache_size = "lots"', "repository.cache_size"),
    ("cache_size = -1", "repository.cache_size"),
    ('cache_size = "5 parsecs"', "repository.cache_size"),
])
def test_bad_uploads_and_cache_size_name_the_key(tmp_path, line, key):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'path = "s3://bkt/p"\n{line}\n')
    assert info.value.key == key


def test_stall_timeout_reaches_the_store(tmp_path):
    cfg = load(tmp_path, 'path = "s3://bkt/p"\nstall_timeout = "90s"\n')
    assert cfg.repository.stall_timeout == 90.0
    assert cfg.repository.s3_options() == S3Options(stall_timeout=90.0)
    assert load(tmp_path, 'path = "s3://bkt/p"\n').repository.stall_timeout is None  # the store's default
