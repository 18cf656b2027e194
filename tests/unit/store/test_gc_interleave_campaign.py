"""A seeded randomized campaign: garbage collection and backups interleaved at drawn storage calls.

Each round builds a small history (sets of a changing tree, some on a second host, a backup
that died before committing) in a plaintext or an encrypted repository, or in an encrypted one
where the backup in the window below is a write-only host's (by turns), then draws one of two
interleavings on the memory backend:
- prune pauses right before its k-th storage call (any call: a read, a listing, a write), a
  backup of the changed tree runs to its end meanwhile on another handle, then prune goes on;
- a backup pauses right before its k-th storage call, a whole prune runs meanwhile, then the
  backup goes on;
- a WAL push (of a file's bytes that an older set holds: its chunks deduplicate) pauses so, a
  whole prune runs meanwhile, then the push goes on (when prune pauses, such a push also runs
  in the window);
- `cairn copy` of another repository's sets (files whose chunks older sets here hold) into
  this one, when it is encrypted, pauses so, a whole prune runs meanwhile, then the copy goes on
  (when prune pauses, such a copy also runs in the window);
- a restore of one of the sets pauses so, a whole prune runs meanwhile (its policy may drop
  that set), then the restore goes on, and must restore that set whole, unless the prune
  forgot the set before the restore's lock named it, and the restore says so.
k is drawn over the whole length of the paused operation, so every step of the two-phase
collection (marking, listing blockers, reindexing, deleting) meets a backup in flight, and
every step of a backup (choosing its base, uploading packs, writing its index and set) meets a
prune. Either operation may end with a CairnError ("run it again"), never with another error.
Afterwards every set the repository lists restores exactly what it captured, every WAL file
pushed reads back, check reads every
blob without an error, and once a prune alone has run, without a warning either.

Reproduce a failure with CAIRN_FUZZ_SEED=<the printed seed>; CAIRN_FUZZ_ROUNDS runs more
rounds. A developer's run draws a new seed each time; CI (CI set) runs a fixed one.
"""

from __future__ import annotations

import itertools
import os
import random
import threading

import pytest
from cairn.store.content import crypto
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.copy import ORIGIN_KEY, copy_sets
from cairn.store.errors import CairnError, NotFoundError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from cairn.store.storage.faults import FaultyBackend
from storekit import differences, fuzz_rounds, fuzz_seed, snapshot, write_random

pytestmark = pytest.mark.campaign

ROUNDS = fuzz_rounds(64)  # 64 fit the suite's time budget (~10 s)
CONFIG = dict(pack_size=64 * 1024, chunker=ChunkerParams(min_size=4 * 1024, avg_size=16 * 1024,
                                                         max_size=64 * 1024))
POLICIES = (PrunePolicy(), PrunePolicy(keep_full=1), PrunePolicy(keep_last=1),
            PrunePolicy(keep_full=1, keep_incremental=1),
            PrunePolicy(keep_full=1, keep_differential=0, keep_incremental=0))
LEVELS = ("full", "incremental", "differential")
FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
FULL = crypto.Secret("passphrase", b"full")
WONLY = crypto.Secret("passphrase", b"write-only")
MODES = ("plaintext", "encrypted", "write-only host")
WAL_NAME = "000000010000000000000001"
_places = itertools.count()



def _mutate(src, rng: random.Random, contents: list[bytes]) -> None:
    names = sorted(os.listdir(src))
    for _ in range(rng.randrange(1, 5)):
        if names and rng.random() < 0.3:
            (src / names.pop(rng.randrange(len(names)))).unlink()
        else:
            name = rng.choice(names) if names and rng.random() < 0.5 else f"f{rng.randrange(1000):03d}"
            contents.append(write_random(src / name, rng.randrange(0, 80_000), rng))
            if name not in names:
                names.append(name)


def _req(src, level: str, host: str) -> BackupRequest:
    return BackupRequest(source="src", paths=(str(src),), level=level, hostname=host)


class Pause:
    """A hook that stops its thread right before storage call number `at` (counting every
    call once armed: the handle is opened first) until released."""

    def __init__(self, at: int) -> None:
        self.at, self.calls, self.armed = at, 0, False
        self.paused, self.release = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def __call__(self, op: str, kind: str, name: str) -> None:
        if not self.armed:
            return
        with self._lock:
            self.calls += 1
            hit = self.calls == self.at
        if hit:
            self.paused.set()
            assert self.release.wait(15), "never released"


def _in_thread(fn) -> tuple[threading.Thread, dict, threading.Event]:
    out: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            out["value"] = fn()
        except CairnError as e:
            out["error"] = e
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out["crash"] = e
        finally:
            done.set()

    t = threading.Thread(target=run)
    t.start()
    return t, out, done


def _wait(pause: Pause, done: threading.Event) -> None:
    for _ in range(6000):
        if pause.paused.wait(0.01) or done.is_set():
            return
    raise AssertionError("the paused operation neither paused nor ended")


class Opener:
    """Opens the round's repository: plaintext, or with the full key, or (`writer`, in the
    write-only mode) with the write-only key and that host's cache directory `cache`."""

    def __init__(self, mode: str, cache) -> None:
        self.mode, self.cache = mode, cache

    def __call__(self, backend, writer: bool = False, cache=None) -> Repository:
        if self.mode == "plaintext":
            return Repository.open(backend)
        if writer and self.mode == "write-only host":
            repo = Repository.open(backend, secret=WONLY)
            repo.attach_host_cache(str(cache or self.cache))
            return repo
        return Repository.open(backend, secret=FULL)


def _count(objects: dict, opener, fn) -> int:
    """How many storage calls `fn(repo)` makes on a copy of `objects`."""
    inner = MemoryBackend()
    inner.objects = dict(objects)
    counter = Pause(0)
    repo = opener(FaultyBackend(inner, ops=(), hook=counter))
    counter.armed = True
    try:
        fn(repo)
    except CairnError:
        pass
    return counter.calls


def _all_restore(inner: MemoryBackend, opener, captured: dict, pushed: dict, tmp, tag: str) -> None:
    repo = opener(inner)
    for name, data in pushed.items():
        assert repo.get_wal(name) == data, f"{tag}: WAL {name} reads back different"
    for s in repo.list_sets():
        assert s.id in captured, f"{tag}: a set nobody committed: {s.id[:8]}"
        out = tmp / f"r{next(_places)}"
        stats = repo.restore(s, str(out))
        assert stats.errors == (), f"{tag}: set {s.id[:8]}: {stats.errors}"
        assert not differences(captured[s.id], snapshot(out)), f"{tag}: set {s.id[:8]} restores different"


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_prune_and_backup_interleaved_at_a_drawn_call(tmp_path, round_):
    seed = fuzz_seed() + round_
    print(f"CAIRN_FUZZ_SEED={seed - round_} (round {round_})")
    rng = random.Random(seed)
    src = tmp_path / "src"
    src.mkdir()
    contents: list[bytes] = []  # every file content written: WAL files of the same bytes deduplicate
    for i in range(rng.randrange(6, 14)):
        contents.append(write_random(src / f"f{i:03d}", rng.randrange(0, 80_000), rng))
    mode = MODES[round_ % len(MODES)]
    opener = Opener(mode, tmp_path / "wo-cache")
    inner = MemoryBackend()
    if mode == "plaintext":
        repo = Repository.init(inner, RepoConfig.new(**CONFIG))
    else:
        repo = Repository.init(inner, RepoConfig.new(**CONFIG), secret=FULL, argon2=FAST)
        repo.add_key(WONLY, FAST, write_only=True)
    captured: dict[str, object] = {}
    for i in range(rng.randrange(2, 5)):
        host = rng.choice(("h1", "h1", "h2"))
        s = repo.backup(_req(src, "full" if i == 0 else rng.choice(LEVELS), host))
        captured[s.id] = snapshot(src)
        _mutate(src, rng, contents)
    if rng.random() < 0.4:  # a backup that dies at its index write (if it has one): packs no index names
        try:
            s = opener(FaultyBackend(inner, fail_at=1, kind="index")).backup(_req(src, "full", "h1"))
            captured[s.id] = snapshot(src)
        except CairnError:
            pass
        for name in list(inner.list("locks")):
            inner.delete("locks", name)
    policy = rng.choice(POLICIES)
    level, host = rng.choice(LEVELS), "wo" if mode == "write-only host" else rng.choice(("h1", "h2"))
    paused_op = rng.choice(("prune", "backup", "restore", "wal") + (("copy",) if mode != "plaintext" else ()))
    reading = rng.choice(list(captured))  # the set the restore reads, by the order taken (ids hold times)
    targets = itertools.count()
    # a WAL file holding what a file of an older set held: its chunks are those of that file,
    # which the prune may be freeing (the policy drops the set)
    wal = rng.choice([c for c in contents if len(c) > 4096] or [rng.randbytes(30_000)])
    pushed: dict[str, bytes] = {}
    # another repository's sets of files older sets here held (their chunks deduplicate), copied
    # in by `cairn copy` (an encrypted destination only)
    other = Repository.init(MemoryBackend(), RepoConfig.new(**CONFIG))
    (tmp_path / "other").mkdir()
    other_captured: dict[str, object] = {}
    for i, data in enumerate(rng.sample(contents, min(len(contents), rng.randrange(2, 6)))):
        (tmp_path / "other" / f"o{i}").write_bytes(data)
        if rng.random() < 0.5:
            s = other.backup(BackupRequest(source="other", paths=(str(tmp_path / "other"),), hostname="far"))
            other_captured[s.id] = snapshot(tmp_path / "other")
    s = other.backup(BackupRequest(source="other", paths=(str(tmp_path / "other"),), hostname="far"))
    other_captured[s.id] = snapshot(tmp_path / "other")

    def copied(repo: Repository) -> None:
        """The copies `repo` lists, each captured as the other repository's set it copies."""
        for x in repo.list_sets():
            origin = x.extra.get(ORIGIN_KEY, {}).get("set")
            if origin in other_captured:
                captured[x.id] = other_captured[origin]

    def restore(repo: Repository):
        return repo.restore(repo.get_set(reading), str(tmp_path / f"reading{next(targets)}"))

    objects = dict(inner.objects)
    if paused_op == "prune":
        total = _count(objects, opener, lambda r: r.prune(policy))
    elif paused_op == "backup":
        total = _count(objects, lambda b: opener(b, writer=True, cache=tmp_path / "count-cache"),
                       lambda r: r.backup(_req(src, level, host)))
    elif paused_op == "wal":
        total = _count(objects, lambda b: opener(b, writer=True, cache=tmp_path / "count-cache"),
                       lambda r: r.put_wal(WAL_NAME, wal))
    elif paused_op == "copy":
        total = _count(objects, opener, lambda r: copy_sets(other, r))
    else:
        total = _count(objects, opener, restore)
    at = rng.randrange(1, total + 1)
    rules = {k: v for k, v in vars(policy).items() if v not in (None, (), {}, "")}
    tag = (f"seed {seed} ({mode}): {paused_op} paused at call {at} of {total}, "
           f"prune {rules}, {level} backup on {host}")

    pause = Pause(at)
    paused_repo = opener(FaultyBackend(inner, ops=(), hook=pause), writer=paused_op in ("backup", "wal"))
    pause.armed = True
    before = snapshot(src)
    if paused_op == "prune":
        thread, out, done = _in_thread(lambda: paused_repo.prune(policy))
        _wait(pause, done)
        _mutate(src, rng, contents)
        snap = snapshot(src)
        try:
            s = opener(inner, writer=True).backup(_req(src, level, host))
            captured[s.id] = snap
        except CairnError:
            pass
        try:
            opener(inner, writer=True).put_wal(WAL_NAME, wal)
            pushed[WAL_NAME] = wal
        except CairnError:
            pass
        if mode != "plaintext":
            try:
                copy_sets(other, opener(inner))
            except CairnError:
                pass
    else:
        fn = {"backup": lambda: paused_repo.backup(_req(src, level, host)),
              "restore": lambda: restore(paused_repo),
              "wal": lambda: paused_repo.put_wal(WAL_NAME, wal),
              "copy": lambda: copy_sets(other, paused_repo)}[paused_op]
        thread, out, done = _in_thread(fn)
        _wait(pause, done)
        try:
            opener(inner).prune(policy)
        except CairnError:
            pass
    pause.release.set()
    thread.join(60)
    assert not thread.is_alive(), tag
    if paused_op == "backup" and "value" in out:
        captured[out["value"].id] = before
    if paused_op == "wal" and "value" in out:
        pushed[WAL_NAME] = wal
    if paused_op == "restore" and "error" in out:  # the prune forgot the set before the restore's lock named it
        assert isinstance(out["error"], NotFoundError), f"{tag}: {out['error']!r}"
        assert reading not in {x.id for x in opener(inner).list_sets()}, f"{tag}: {out['error']} (it was not)"
    elif paused_op == "restore":  # once it is named, the set is not forgotten, nor its data collected
        assert out["value"].errors == (), f"{tag}: {out['value'].errors}"
        got = snapshot(tmp_path / f"reading{next(targets) - 1}")
        assert not differences(captured[reading], got), f"{tag}: the restore that ran beside prune differs"
        assert reading in {x.id for x in opener(inner).list_sets()}, f"{tag}: the set was forgotten while read"
    assert "crash" not in out, f"{tag}: {out.get('crash')!r}"
    copied(opener(inner))
    for name in list(inner.list("locks")):  # every operation has ended (same pid: stale by hand)
        inner.delete("locks", name)

    report = opener(inner).check(read_data=True)
    assert report.ok, f"{tag}: {[p.message for p in report.errors]}"
    _all_restore(inner, opener, captured, pushed, tmp_path, tag)
    opener(inner).prune(PrunePolicy())
    report = opener(inner).check(read_data=True)
    assert report.ok and report.warnings == (), f"{tag}: {[p.message for p in report.errors + report.warnings]}"
    _all_restore(inner, opener, captured, pushed, tmp_path, tag + ", after a prune alone")
