"""Bad input: each a clear error of the right kind, and nothing changed on disk."""

from __future__ import annotations

import json

import pytest
from cairn.store.errors import (
    FailedPreconditionError,
    FormatVersionError,
    InvalidArgumentError,
    NotARepositoryError,
    NotFoundError,
)
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository
from storekit import backup, listing, make_tree


@pytest.fixture
def one_set(repo, src, rng):
    make_tree(str(src), rng, files=5, max_size=10_000)
    return backup(repo, src)


def test_restore_target_that_is_a_file(repo, one_set, tmp_path):
    target = tmp_path / "a-file"
    target.write_bytes(b"precious")
    before = listing(str(tmp_path))
    with pytest.raises(InvalidArgumentError, match="is not a directory"):
        repo.restore(one_set, str(target))
    assert listing(str(tmp_path)) == before


def test_restore_into_non_empty_target_needs_overwrite(repo, one_set, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "mine").write_bytes(b"x")
    before = listing(str(target))
    with pytest.raises(FailedPreconditionError, match="not empty"):
        repo.restore(one_set, str(target))
    assert listing(str(target)) == before


@pytest.mark.parametrize("ref", ["0" * 64, "deadbeef", "not-hex", ""])
def test_unknown_set_id(repo, one_set, tmp_path, ref):
    before = listing(str(tmp_path))
    with pytest.raises(NotFoundError, match="unknown set"):
        repo.get_set(ref)
    assert listing(str(tmp_path)) == before


def test_latest_of_unknown_source(repo, one_set):
    with pytest.raises(NotFoundError):
        repo.get_set("latest", source="nobody")
    assert repo.get_set("latest").id == one_set.id
    assert repo.get_set(one_set.id[:12]).id == one_set.id


def test_unknown_path_in_a_set(repo, one_set, tmp_path):
    with pytest.raises(NotFoundError):
        repo.list_tree(one_set, "no/such/path")
    with pytest.raises(NotFoundError):
        repo.restore(one_set, str(tmp_path / "out"), paths=["missing"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["dir-with-file", "random-dir", "missing", "a-file"])
def test_path_that_is_not_a_repository(tmp_path, layout):
    where = tmp_path / "where"
    if layout == "dir-with-file":
        where.mkdir()
        (where / "notes.txt").write_text("hello")
    elif layout == "random-dir":
        (where / "sub" / "deeper").mkdir(parents=True)
        (where / "sub" / "config").write_text("{}")
        (where / "packs").mkdir()
    elif layout == "a-file":
        where.write_text("not a dir")
    before = listing(str(tmp_path))
    with pytest.raises(NotARepositoryError, match="is not a Cairn repository"):
        Repository.open_local(str(where))
    if layout != "missing":
        with pytest.raises(NotARepositoryError):
            Repository.open_local(str(where), create=True)
    assert listing(str(tmp_path)) == before


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"magic": "something-else", "version": 1}', b"[1, 2]"])
def test_config_that_is_not_a_cairn_config(tmp_path, content):
    where = tmp_path / "repo"
    (where / "config").mkdir(parents=True)
    (where / "config" / "config").write_bytes(content)
    before = listing(str(tmp_path))
    with pytest.raises(NotARepositoryError):
        Repository.open_local(str(where))
    assert listing(str(tmp_path)) == before


def test_newer_format_version(tmp_path, src, rng):
    where = tmp_path / "repo"
    repo = Repository.open_local(str(where), create=True)
    make_tree(str(src), rng, files=3)
    backup(repo, src)
    cfg_path = where / "config" / "config"
    doc = json.loads(cfg_path.read_bytes())
    doc["version"] = 99
    doc.pop("checksum")  # a config of a newer Cairn (its checksum is not the one of this version 1 config)
    cfg_path.write_text(json.dumps(doc))
    before = listing(str(where))
    with pytest.raises(FormatVersionError) as info:
        Repository.open_local(str(where))
    msg = str(info.value)
    assert "format version 99" in msg and "newer" in msg and str(where) in msg and "\n" not in msg
    assert info.value.hint
    with pytest.raises(FormatVersionError):
        Repository.open_local(str(where), read_only=True)
    assert listing(str(where)) == before


def test_init_over_existing_repository_is_refused(tmp_path):
    from cairn.store.errors import RepositoryError
    from cairn.store.storage.backend import LocalBackend
    where = tmp_path / "repo"
    Repository.open_local(str(where), create=True)
    before = listing(str(where))
    with pytest.raises(RepositoryError, match="already exists"):
        Repository.init(LocalBackend(str(where)))
    assert listing(str(where)) == before


def test_bad_backup_sources(repo, tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    for path, match in ((tmp_path / "missing", "unable to read source path"), (f, "is not a directory")):
        with pytest.raises(FailedPreconditionError, match=match):  # the set fails (exit 1), not a usage error
            repo.backup(BackupRequest(source="s", paths=(str(path),)))
    assert repo.list_sets() == []
    assert repo.check().ok and repo.check().warnings == ()


def test_read_only_repository_refuses_writes(tmp_path, src, rng):
    where = tmp_path / "repo"
    Repository.open_local(str(where), create=True)
    ro = Repository.open_local(str(where), read_only=True)
    before = listing(str(where))
    with pytest.raises(FailedPreconditionError, match="read-only"):
        ro.backup(BackupRequest(source="s", paths=(str(src),)))
    with pytest.raises(FailedPreconditionError):
        ro.put_wal("000000010000000000000001", b"x")
    assert listing(str(where)) == before


@pytest.mark.parametrize("paths", [(), ("{t}/one/data", "{t}/two/data"), ("/", "{t}/one/data"),
                                   ("{t}/one/data/", "{t}/two/data")])
def test_bad_source_path_lists(repo, tmp_path, paths):
    for d in ("one/data", "two/data"):
        (tmp_path / d).mkdir(parents=True)
    before = listing(str(tmp_path / "repo"))
    with pytest.raises(InvalidArgumentError):
        repo.backup(BackupRequest(source="s", paths=tuple(p.format(t=tmp_path) for p in paths)))
    assert listing(str(tmp_path / "repo")) == before
