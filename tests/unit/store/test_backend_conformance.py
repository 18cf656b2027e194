"""One conformance suite over every Backend: local directory, memory, the fault injector, and
S3 on a real SeaweedFS started for the session (tests/s3server.py)."""

from __future__ import annotations

import os
import sys

import pytest
from cairn.store.errors import BackendError, NotFoundError
from cairn.store.storage.backend import KINDS, LocalBackend, MemoryBackend
from cairn.store.storage.faults import FaultyBackend

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from s3server import shared_server  # noqa: E402

PACK = "ab" + "cd" * 31


@pytest.fixture(scope="session")
def weed(request, tmp_path_factory):
    return shared_server(request.config, tmp_path_factory.mktemp("weed"))


@pytest.fixture(params=["local", "memory", "faulty", "s3"])
def backend(request, tmp_path):
    if request.param == "s3":
        b = request.getfixturevalue("weed").backend()
        yield b
        b.close()
        return
    if request.param == "local":
        yield LocalBackend(str(tmp_path / "repo"))
    elif request.param == "memory":
        yield MemoryBackend()
    else:
        yield FaultyBackend(MemoryBackend())


@pytest.mark.parametrize("kind", KINDS)
def test_put_get_stat_roundtrip_each_kind(backend, kind):
    name = PACK if kind == "packs" else f"obj-{kind}"
    backend.put(kind, name, b"hello world")
    assert backend.get(kind, name) == b"hello world"
    assert backend.stat(kind, name) == 11
    assert list(backend.list(kind)) == [name]


def test_empty_object(backend):
    backend.put("sets", "empty", b"")
    assert backend.get("sets", "empty") == b""
    assert backend.stat("sets", "empty") == 0


def test_get_range(backend):
    data = bytes(range(256)) * 4
    backend.put("packs", PACK, data)
    assert backend.get_range("packs", PACK, 0, 10) == data[:10]
    assert backend.get_range("packs", PACK, 300, 17) == data[300:317]
    assert backend.get_range("packs", PACK, 1020, 100) == data[1020:]
    assert backend.get_range("packs", PACK, 2000, 5) == b""


def test_missing_objects_raise_not_found(backend):
    for call in (lambda: backend.get("sets", "nope"), lambda: backend.get_range("packs", PACK, 0, 4),
                 lambda: backend.stat("index", "nope"), lambda: backend.delete("wal", "nope")):
        with pytest.raises(NotFoundError):
            call()


def test_list_of_empty_kind_is_empty(backend):
    for kind in KINDS:
        assert list(backend.list(kind)) == []


def test_overwrite_replaces_whole_content(backend):
    backend.put("locks", "l1", b"a much longer first version")
    backend.put("locks", "l1", b"short")
    assert backend.get("locks", "l1") == b"short"
    assert backend.stat("locks", "l1") == 5
    assert list(backend.list("locks")) == ["l1"]


def test_delete_removes_only_that_object(backend):
    backend.put("sets", "s1", b"1")
    backend.put("sets", "s2", b"2")
    backend.delete("sets", "s1")
    assert list(backend.list("sets")) == ["s2"]
    with pytest.raises(NotFoundError):
        backend.get("sets", "s1")
    assert backend.get("sets", "s2") == b"2"


def test_list_is_sorted_and_kinds_are_separate(backend):
    for n in ("c", "a", "b"):
        backend.put("index", n, n.encode())
    backend.put("sets", "zz", b"z")
    packs = ["00" + "1" * 62, "ff" + "2" * 62, "7a" + "3" * 62]
    for p in packs:
        backend.put("packs", p, b"p")
    assert list(backend.list("index")) == ["a", "b", "c"]
    assert list(backend.list("sets")) == ["zz"]
    assert sorted(backend.list("packs")) == sorted(packs)


def test_unknown_kind_is_refused(backend):
    with pytest.raises(BackendError):
        backend.put("nonsense", "x", b"")
    with pytest.raises(BackendError):
        list(backend.list("nonsense"))


def test_put_accepts_memoryview_and_bytearray(backend):
    backend.put("sets", "mv", memoryview(b"abcdef")[2:])
    backend.put("sets", "ba", bytearray(b"xyz"))
    assert backend.get("sets", "mv") == b"cdef"
    assert backend.get("sets", "ba") == b"xyz"


def test_local_list_skips_temp_files(tmp_path):
    b = LocalBackend(str(tmp_path / "repo"))
    b.put("sets", "real", b"1")
    b.put("packs", PACK, b"2")
    open(tmp_path / "repo" / "sets" / ".tmp-real-0123456789ab", "wb").close()
    open(tmp_path / "repo" / "packs" / "ab" / f".tmp-{PACK}-0123456789ab", "wb").close()
    assert list(b.list("sets")) == ["real"]
    assert list(b.list("packs")) == [PACK]


def test_local_put_is_atomic_and_leaves_no_temp_file(tmp_path):
    b = LocalBackend(str(tmp_path / "repo"))
    data = os.urandom(3 * 1024 * 1024)
    b.put("packs", PACK, data)
    b.put("packs", PACK, data[::-1])
    d = tmp_path / "repo" / "packs" / PACK[:2]
    assert os.listdir(d) == [PACK]
    assert (d / PACK).read_bytes() == data[::-1]


def test_local_failed_put_leaves_old_object_and_no_temp(tmp_path, monkeypatch):
    b = LocalBackend(str(tmp_path / "repo"))
    b.put("sets", "s", b"old content")

    def broken_rename(a, c):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(BackendError, match="unable to write"):
        b.put("sets", "s", b"new content")
    monkeypatch.undo()
    assert b.get("sets", "s") == b"old content"
    assert os.listdir(tmp_path / "repo" / "sets") == ["s"]


def test_local_rejects_names_that_escape(tmp_path):
    b = LocalBackend(str(tmp_path / "repo"))
    for bad in ("../x", "a/b", "..", ".", ""):
        with pytest.raises(BackendError):
            b.put("sets", bad, b"x")
    assert not (tmp_path / "x").exists()


def test_local_objects_survive_a_new_backend_instance(tmp_path):
    LocalBackend(str(tmp_path / "repo")).put("config", "config", b"cfg")
    assert LocalBackend(str(tmp_path / "repo")).get("config", "config") == b"cfg"


@pytest.mark.parametrize("mode", ["fail", "truncate"])
def test_faulty_backend_fires_once_at_the_chosen_put(mode):
    inner = MemoryBackend()
    f = FaultyBackend(inner, fail_at=2, mode=mode)
    f.put("sets", "one", b"11111111")
    with pytest.raises(BackendError, match="injected"):
        f.put("sets", "two", b"22222222")
    f.put("sets", "three", b"3")
    assert f.fired and f.puts == 3
    assert inner.get("sets", "one") == b"11111111"
    if mode == "fail":
        with pytest.raises(NotFoundError):
            inner.get("sets", "two")
    else:
        assert inner.get("sets", "two") == b"2222"


def test_faulty_backend_counts_only_its_kind():
    f = FaultyBackend(MemoryBackend(), fail_at=1, kind="packs")
    f.put("sets", "s", b"x")
    f.put("index", "i", b"x")
    with pytest.raises(BackendError):
        f.put("packs", PACK, b"x")


CALLS = {
    "get": lambda b: b.get("sets", "s"),
    "get_range": lambda b: b.get_range("sets", "s", 0, 1),
    "put": lambda b: b.put("sets", "t", b"x"),
    "list": lambda b: list(b.list("sets")),
    "delete": lambda b: b.delete("sets", "s"),
    "stat": lambda b: b.stat("sets", "s"),
}


@pytest.mark.parametrize("op", sorted(CALLS))
def test_faulty_backend_fails_each_method_in_turn(op):
    inner = MemoryBackend()
    inner.put("sets", "s", b"data")
    f = FaultyBackend(inner, fail_at=2, ops=(op,))
    CALLS[op](f)
    before = dict(inner.objects)
    with pytest.raises(BackendError, match="injected fail"):
        CALLS[op](f)
    assert f.fired and inner.objects == before  # nothing reached the storage
    inner.put("sets", "s", b"data")
    f2 = FaultyBackend(inner, fail_at=1, ops=(op,), kind="index")
    CALLS[op](f2)  # another kind: not counted
    assert not f2.fired


def test_faulty_backend_stop_fails_every_later_call_and_fail_from_only_counted_ones():
    inner = MemoryBackend()
    f = FaultyBackend(inner, fail_at=2, mode="stop", ops=("delete",))
    f.put("sets", "a", b"1")
    f.put("sets", "b", b"2")
    f.delete("sets", "a")
    with pytest.raises(BackendError, match="stop"):
        f.delete("sets", "b")
    for call in (lambda: f.get("sets", "b"), lambda: f.put("sets", "c", b"3"), lambda: list(f.list("sets"))):
        with pytest.raises(BackendError):
            call()
    assert sorted(inner.list("sets")) == ["b"]
    g = FaultyBackend(inner, fail_at=1, mode="fail-from", kind="locks")
    for name in ("l1", "l2"):
        with pytest.raises(BackendError):
            g.put("locks", name, b"x")
    g.put("sets", "c", b"3")
    assert list(inner.list("locks")) == [] and g.calls == [("put", "locks", "l1"), ("put", "locks", "l2")]


def test_faulty_backend_hook_sees_every_call_first():
    seen = []
    f = FaultyBackend(MemoryBackend(), hook=lambda op, kind, name: seen.append((op, kind, name)))
    f.put("sets", "a", b"1")
    f.get("sets", "a")
    list(f.list("packs"))
    assert seen == [("put", "sets", "a"), ("get", "sets", "a"), ("list", "packs", "")]
