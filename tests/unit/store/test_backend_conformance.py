"""One conformance suite over every Backend: local directory, memory, the fault injector (over
memory and over a local directory), and S3 on a real SeaweedFS started for the session
(tests/s3server.py). Then the fault injector itself, method by method and mode by mode, and
the callers: a repository's backup, restore, prune and check over a backend that fails,
truncates, delays or reorders each method in turn."""

from __future__ import annotations

import os
import random
import sys
import threading
import time

import pytest
from cairn.store.content import crypto
from cairn.store.errors import BackendError, CairnError, NotFoundError
from cairn.store.model import PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import KINDS, LocalBackend, MemoryBackend
from cairn.store.storage.faults import MODES, OPS, TRUNCATABLE, FaultyBackend

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from s3server import shared_server  # noqa: E402
from storekit import assert_same_tree, backup, make_tree, snapshot  # noqa: E402


def local(root) -> LocalBackend:
    """A LocalBackend on a directory that holds a repository (its config object): the backend
    makes no repository out of a bare directory (test_local_makes_no_repository_of_a_bare_directory)."""
    b = LocalBackend(str(root))
    b.put("config", "config", b"cfg")
    return b

PACK = "ab" + "cd" * 31


@pytest.fixture(scope="session")
def weed(request, tmp_path_factory):
    return shared_server(request.config, tmp_path_factory.mktemp("weed"))


@pytest.fixture(params=["local", "memory", "faulty", "faulty-local", "s3"])
def backend(request, tmp_path):
    if request.param == "s3":
        b = request.getfixturevalue("weed").backend()
        yield b
        b.close()
        return
    if request.param == "local":
        yield local(tmp_path / "repo")
    elif request.param == "memory":
        yield MemoryBackend()
    elif request.param == "faulty-local":
        yield FaultyBackend(local(tmp_path / "repo"), ops=OPS)
    else:
        yield FaultyBackend(MemoryBackend(), ops=OPS)


@pytest.mark.parametrize("kind", KINDS)
def test_put_get_stat_roundtrip_each_kind(backend, kind):
    name = PACK if kind == "packs" else "config" if kind == "config" else f"obj-{kind}"
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


def test_a_missing_object_is_named_in_one_short_line(backend):
    """Messages name an object by its id's short form ('abcdcdcd..'), as the rest of Cairn's do;
    a name that is not an id (a lock's, a WAL file's) whole."""
    for call in (lambda: backend.get("packs", PACK), lambda: backend.get_range("packs", PACK, 0, 4),
                 lambda: backend.stat("packs", PACK), lambda: backend.delete("packs", PACK)):
        with pytest.raises(NotFoundError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and f"'{PACK[:8]}..'" in msg and PACK not in msg, msg
    with pytest.raises(NotFoundError, match="'000000010000000000000003'"):
        backend.get("wal", "000000010000000000000003")


def test_list_of_empty_kind_is_empty(backend):
    for kind in KINDS:
        if kind != "config":  # a local repository directory holds its config (see local())
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
    b = local(tmp_path / "repo")
    b.put("sets", "real", b"1")
    b.put("packs", PACK, b"2")
    open(tmp_path / "repo" / "sets" / ".tmp-real-0123456789ab", "wb").close()
    open(tmp_path / "repo" / "packs" / "ab" / f".tmp-{PACK}-0123456789ab", "wb").close()
    assert list(b.list("sets")) == ["real"]
    assert list(b.list("packs")) == [PACK]


def test_local_put_is_atomic_and_leaves_no_temp_file(tmp_path):
    b = local(tmp_path / "repo")
    data = os.urandom(3 * 1024 * 1024)
    b.put("packs", PACK, data)
    b.put("packs", PACK, data[::-1])
    d = tmp_path / "repo" / "packs" / PACK[:2]
    assert os.listdir(d) == [PACK]
    assert (d / PACK).read_bytes() == data[::-1]


def test_local_failed_put_leaves_old_object_and_no_temp(tmp_path, monkeypatch):
    b = local(tmp_path / "repo")
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
    b = local(tmp_path / "repo")
    for bad in ("../x", "a/b", "..", ".", ""):
        with pytest.raises(BackendError):
            b.put("sets", bad, b"x")
    assert not (tmp_path / "x").exists()


def test_local_makes_no_repository_of_a_bare_directory(tmp_path):
    """A repository whose disk is not mounted (a bare directory, or none) is never written as a new
    repository without a config, and its kinds are not listed as empty: both name the cause."""
    for root in (tmp_path / "gone", tmp_path / "bare"):
        if root.name == "bare":
            root.mkdir()
        b = LocalBackend(str(root))
        for kind, name in (("packs", PACK), ("index", "i1"), ("sets", "s1"), ("locks", "l1")):
            with pytest.raises(BackendError, match=r"holds no repository config \(is its file system mounted\?\)"):
                b.put(kind, name, b"x")
            with pytest.raises(BackendError, match="holds no repository config"):
                list(b.list(kind))
        assert not root.exists() or os.listdir(root) == []
        b.put("keys", "k1", b"key")  # init writes its key, then its config: those may make the directory
        b.put("config", "config", b"cfg")
        b.put("packs", PACK, b"x")
        assert list(b.list("sets")) == [] and list(b.list("packs")) == [PACK]


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


# -- put_if_absent and list_info, on every backend ---------------------------------------

def test_put_if_absent_creates_once_and_keeps_the_first_content(backend):
    assert backend.put_if_absent("locks", "l1", b"first") is True
    assert backend.put_if_absent("locks", "l1", b"second, longer") is False
    assert backend.get("locks", "l1") == b"first"
    assert list(backend.list("locks")) == ["l1"]
    backend.delete("locks", "l1")
    assert backend.put_if_absent("locks", "l1", b"again") is True
    assert backend.get("locks", "l1") == b"again"
    assert backend.put_if_absent("packs", PACK, b"pack") is True
    assert list(backend.list("packs")) == [PACK]


def test_put_if_absent_racers_exactly_one_wins(backend):
    results: list[bool | None] = [None] * 8
    start = threading.Barrier(len(results))

    def race(i: int) -> None:
        start.wait()
        results[i] = backend.put_if_absent("locks", "race", f"writer {i}".encode())

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results.count(True) == 1 and results.count(False) == len(results) - 1
    assert backend.get("locks", "race") == f"writer {results.index(True)}".encode()


def test_list_info_gives_names_sizes_and_times(backend):
    before = time.time()
    backend.put("index", "b", b"22")
    backend.put("index", "a", b"1")
    backend.put("packs", PACK, b"x" * 1000)
    after = time.time()
    infos = list(backend.list_info("index"))
    assert [i.name for i in infos] == list(backend.list("index")) == ["a", "b"]
    assert [i.size for i in infos] == [1, 2]
    [pack] = backend.list_info("packs")
    assert pack.name == PACK and pack.size == 1000
    for i in infos + [pack]:  # S3's clock is another process's: a minute of slack
        assert before - 60 <= i.time <= after + 60
    assert list(backend.list_info("sets")) == []
    backend.delete("index", "a")
    assert [i.name for i in backend.list_info("index")] == ["b"]


# -- the fault wrapper, each method and each mode -----------------------------------------

SEEDED = {  # objects every call below may use
    ("sets", "s"): b"data-of-s",
    ("sets", "s2"): b"data-of-s2",
}
ALL_CALLS = {
    "get": lambda b: b.get("sets", "s"),
    "get_range": lambda b: b.get_range("sets", "s", 0, 8),
    "put": lambda b: b.put("sets", "t", b"12345678"),
    "put_if_absent": lambda b: b.put_if_absent("sets", "u", b"12345678"),
    "list": lambda b: list(b.list("sets")),
    "list_info": lambda b: [i.name for i in b.list_info("sets")],
    "delete": lambda b: b.delete("sets", "s2"),
    "stat": lambda b: b.stat("sets", "s"),
}


def _seeded() -> MemoryBackend:
    inner = MemoryBackend()
    for (kind, name), data in SEEDED.items():
        inner.put(kind, name, data)
    return inner


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", MODES)
def test_fault_wrapper_applies_every_mode_to_every_method(op, mode):
    if mode == "truncate" and op not in TRUNCATABLE:
        with pytest.raises(ValueError):
            FaultyBackend(MemoryBackend(), mode=mode, ops=(op,))
        return
    clean = _seeded()
    expected = ALL_CALLS[op](clean)
    inner = _seeded()
    f = FaultyBackend(inner, fail_at=1, mode=mode, ops=(op,), delay=0.2)
    started = time.monotonic()
    if mode in ("fail", "fail-from", "stop"):
        with pytest.raises(BackendError, match=f"injected {mode}"):
            ALL_CALLS[op](f)
        assert inner.objects == _seeded().objects  # nothing of the call reached the storage
    elif mode == "truncate":
        if op in ("put", "put_if_absent"):
            with pytest.raises(BackendError, match="injected truncate"):
                ALL_CALLS[op](f)
            name = "t" if op == "put" else "u"
            assert inner.get("sets", name) == b"1234"  # half the object, as a torn write leaves
        elif op in ("get", "get_range"):
            got = ALL_CALLS[op](f)
            assert got == expected[: len(expected) // 2] and got != expected
        else:
            assert ALL_CALLS[op](f) == expected[: len(expected) // 2]
    elif mode == "delay":
        assert ALL_CALLS[op](f) == expected
        assert time.monotonic() - started >= 0.2
    else:  # reorder: alone, a held call waits its bound and passes; a listing comes reversed
        got = ALL_CALLS[op](f)
        if op in ("list", "list_info"):
            assert got == expected[::-1] and got != expected
        else:
            assert got == expected and time.monotonic() - started >= 0.2
    assert f.fired and f.calls == [(op, "sets", "" if op.startswith("list") else f.calls[0][2])]
    if mode == "stop":  # every later call of any method fails too
        for other in OPS:
            with pytest.raises(BackendError, match="stop"):
                ALL_CALLS[other](f)
    elif mode == "fail-from":
        with pytest.raises(BackendError):
            ALL_CALLS[op](f)
    else:  # a fault fires once: the next call of that method passes
        again = _seeded()
        g = FaultyBackend(again, fail_at=1, mode=mode, ops=(op,), delay=0.01)
        try:
            ALL_CALLS[op](g)
        except BackendError:
            pass
        again.objects.clear()  # undo what the first call changed
        again.objects.update(_seeded().objects)
        assert ALL_CALLS[op](g) == ALL_CALLS[op](_seeded())


def test_reorder_lets_a_later_concurrent_call_complete_first():
    inner = _seeded()
    f = FaultyBackend(inner, fail_at=1, mode="reorder", ops=("put",), delay=30)
    done: list[str] = []

    def put(name: str) -> None:
        f.put("sets", name, name.encode())
        done.append(name)

    first = threading.Thread(target=put, args=("first",))
    first.start()
    deadline = time.monotonic() + 10
    while f.puts < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    put("second")  # released the held first call
    first.join(timeout=10)
    assert done == ["second", "first"] and inner.get("sets", "first") == b"first"


def test_fault_wrapper_repeat_fires_at_every_later_call():
    f = FaultyBackend(_seeded(), fail_at=2, mode="truncate", ops=("get",), repeat=True)
    assert f.get("sets", "s") == b"data-of-s"
    assert f.get("sets", "s") == b"data"
    assert f.get("sets", "s") == b"data"


# -- callers: a repository over a backend that faults each method in turn ------------------
# One scenario (open, full backup, incremental backup, restore, prune, check) runs over the
# fault wrapper with one fault at a time, at several points of each method's calls (a
# dry-run prune is in it too: it is what lists with sizes). What must
# hold whatever the fault: the scenario ends or raises a CairnError (never another
# exception); "delay" and "reorder" change nothing of the outcome; a torn read is detected,
# never restored as content; afterwards, on the storage without faults, check passes, every
# listed set restores identical to its source, and the next backup succeeds.

SECRET = crypto.Secret("keyfile", bytes(range(32)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    rng = random.Random(99)
    a, b = root / "a", root / "b"
    make_tree(str(a), rng, files=6, max_size=48 * 1024)
    make_tree(str(b), rng, files=6, max_size=48 * 1024)
    return {str(a): snapshot(str(a)), str(b): snapshot(str(b))}, str(a), str(b)


def _scenario(backend, a: str, b: str, target: str) -> dict:
    """The callers' work; returns what it completed (the sets it was told were committed)."""
    done: dict = {}
    repo = Repository.open(backend, secret=SECRET)
    try:
        done["full"] = backup(repo, a, "full")
        done["incremental"] = backup(repo, b, "incremental")
        stats = repo.restore(done["incremental"], target)
        done["restored"] = stats
        if not stats.errors:
            assert_same_tree(b, target)
        done["plan"] = repo.prune(PrunePolicy(keep_last=1), dry_run=True, lock_wait=1)
        repo.prune(PrunePolicy(keep_last=1), grace=0, lock_wait=1)
        done["pruned"] = True
        done["check"] = repo.check(read_data=True)
    finally:
        repo.close()
    return done


def _fresh() -> MemoryBackend:
    inner = MemoryBackend()
    Repository.init(inner, secret=SECRET).close()
    return inner


def _counts(sources_, tmp_path) -> dict[str, int]:
    _snaps, a, b = sources_
    f = FaultyBackend(_fresh(), ops=OPS)
    _scenario(f, a, b, str(tmp_path / "count"))
    return {op: sum(1 for c in f.calls if c[0] == op) for op in OPS}


def _points(n: int) -> list[int]:
    return sorted({p for p in (1, 2, n // 3, n // 2, (2 * n) // 3, n) if 1 <= p <= n})


def _verify_after(inner: MemoryBackend, sources_, done: dict, tmp_path) -> None:
    snaps, a, b = sources_
    repo = Repository.open(inner, secret=SECRET)
    try:
        report = repo.check(read_data=True)
        assert report.ok, [p.message for p in report.errors]
        sets = repo.list_sets()
        if "incremental" in done:  # told committed: it stays (prune keeps the newest)
            assert done["incremental"].id in {s.id for s in sets}
        for i, s in enumerate(sets):
            out = tmp_path / f"after-{i}"
            stats = repo.restore(s, str(out))
            assert not stats.errors
            assert_same_tree(s.paths[0], str(out))
            assert s.paths[0] in snaps
        s = backup(repo, b, "incremental")
        out = tmp_path / "next"
        assert not repo.restore(s, str(out)).errors
        assert_same_tree(b, str(out))
        assert repo.check().ok
    finally:
        repo.close()


def test_the_scenario_uses_every_method_the_callers_need(sources, tmp_path):
    counts = _counts(sources, tmp_path)
    for op in ("get", "get_range", "put", "put_if_absent", "list", "list_info", "delete", "stat"):
        assert counts[op] > 0, f"the scenario never calls {op}: {counts}"


FAULTS = [(op, mode) for op in OPS for mode in ("fail", "delay", "reorder")] + \
         [("get", "truncate"), ("get_range", "truncate")]


@pytest.mark.parametrize("op,mode", FAULTS, ids=[f"{m}-{o}" for o, m in FAULTS])
def test_callers_survive_a_fault_in_each_method(op, mode, sources, tmp_path):
    _snaps, a, b = sources
    n = _counts(sources, tmp_path)[op]
    points = _points(n) if mode in ("fail", "truncate") else [max(1, n // 2)]
    for at in points:
        inner = _fresh()
        f = FaultyBackend(inner, fail_at=at, mode=mode, ops=(op,), delay=0.02)
        target = tmp_path / f"{op}-{mode}-{at}"
        try:
            done = _scenario(f, a, b, str(target))
        except CairnError:
            assert mode in ("fail", "truncate"), f"{mode} of {op} call {at} made the callers fail"
            done = {}
        else:
            if mode in ("delay", "reorder"):
                assert done["check"].ok
        assert f.fired, f"{op} call {at} of {n} was never made"
        _verify_after(inner, sources, done, tmp_path / f"verify-{op}-{mode}-{at}")


READS = ("get", "get_range", "list", "list_info", "stat")


@pytest.mark.parametrize("op", READS)
@pytest.mark.parametrize("kind", ("sets", "index", "packs", "wal", "gc", "locks"))
def test_callers_survive_reads_of_one_kind_failing_for_good(op, kind, sources, tmp_path):
    """Reads of one kind fail from some call on while everything else works (one prefix of
    a bucket unreadable): nothing may be taken for absent, so no prune deletes what a set
    needs, and nothing committed is lost."""
    _snaps, a, b = sources
    f = FaultyBackend(_fresh(), ops=(op,), kind=kind)
    _scenario(f, a, b, str(tmp_path / "count"))
    n = len(f.calls)
    for at in sorted({1, max(1, n // 2)}) if n else []:
        inner = _fresh()
        f = FaultyBackend(inner, fail_at=at, mode="fail-from", ops=(op,), kind=kind)
        try:
            done = _scenario(f, a, b, str(tmp_path / f"{op}-{kind}-{at}"))
        except CairnError:
            done = {}
        _verify_after(inner, sources, done, tmp_path / f"verify-{op}-{kind}-{at}")
