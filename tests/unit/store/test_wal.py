"""Archived WAL files: put, get, idempotent re-push, refusal of different content."""

from __future__ import annotations

import os

import pytest
from cairn.store.errors import AlreadyExistsError, CorruptionError, InvalidArgumentError, NotFoundError
from cairn.store.repository import Repository
from cairn.walnames import is_wal_file_name

SEG = "000000010000000A000000FF"


def test_put_get_round_trip(repo, rng):
    data = rng.randbytes(16 * 1024 * 1024)
    assert repo.put_wal(SEG, data) is True
    assert repo.get_wal(SEG) == data
    assert repo.list_wal() == [SEG]
    assert Repository.open_local(repo.backend.location()).get_wal(SEG) == data


def test_identical_re_push_is_a_no_op(repo, rng):
    data = rng.randbytes(100_000)
    repo.put_wal(SEG, data)
    before = (sorted(repo.backend.list("packs")), sorted(repo.backend.list("index")))
    assert repo.put_wal(SEG, data) is False
    assert (sorted(repo.backend.list("packs")), sorted(repo.backend.list("index"))) == before


def test_different_content_under_same_name_is_refused(repo, rng):
    data = rng.randbytes(100_000)
    repo.put_wal(SEG, data)
    for other in (data[:-1] + bytes([data[-1] ^ 1]), data + b"x", b""):
        with pytest.raises(AlreadyExistsError, match=SEG):
            repo.put_wal(SEG, other)
    assert repo.get_wal(SEG) == data


def test_other_wal_file_names(repo):
    names = ["00000002.history", "000000010000000000000003.partial", "000000010000000000000002.00000028.backup"]
    for n in names:
        assert repo.put_wal(n, n.encode() * 10)
    assert repo.list_wal() == sorted(names)
    assert all(repo.get_wal(n) == n.encode() * 10 for n in names)


@pytest.mark.parametrize("name", ["../etc/passwd", "000000010000000000000001/x", "short", "",
                                  "lowercase0000000000000001"])
def test_bad_names_are_refused(repo, name):
    repo.set_segment_rule(is_wal_file_name)  # the daemon gives the store PostgreSQL's rule
    with pytest.raises(InvalidArgumentError):
        repo.put_wal(name, b"x")
    with pytest.raises(InvalidArgumentError):
        repo.get_wal(name)
    assert repo.list_wal() == []


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", ".", "..", "x\0y"])
def test_without_a_rule_only_plain_names_pass(repo, name):
    with pytest.raises(InvalidArgumentError):
        repo.put_wal(name, b"x")
    assert repo.put_wal("dump-0001.part", b"x")  # the store itself knows no engine's names


def test_the_given_rule_is_the_one_applied(repo):
    repo.set_segment_rule(lambda n: n.startswith("seg-"))
    assert repo.put_wal("seg-1", b"x")
    with pytest.raises(InvalidArgumentError):
        repo.put_wal(SEG, b"x")


def test_missing_segment(repo):
    with pytest.raises(NotFoundError):
        repo.get_wal(SEG)


def test_empty_segment(repo):
    assert repo.put_wal(SEG, b"")
    assert repo.get_wal(SEG) == b""


def test_damaged_wal_data_is_detected(repo, rng):
    data = rng.randbytes(200_000)
    repo.put_wal(SEG, data)
    root = repo.backend.location()
    (pack,) = list(repo.backend.list("packs"))
    path = os.path.join(root, "packs", pack[:2], pack)
    raw = bytearray(open(path, "rb").read())
    raw[100] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(CorruptionError):
        Repository.open_local(root).get_wal(SEG)
