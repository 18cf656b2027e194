"""A seeded randomized campaign: repositories damaged at random, and what an operator then runs.

Each round builds a small history (full, incremental and differential sets of a changing tree,
a WAL entry; plaintext or encrypted, by turns), then damages one or two random objects of a copy
(a flipped byte, a truncation, garbage of the same length, an empty object, a deletion) among
packs, index files, set objects, and for the encrypted repository its key and config objects.
Then, as at 3 a.m.:
- every call either succeeds or raises a CairnError (never another exception);
- only a damaged config or key object may keep the repository from opening;
- `check --read-data` does not call the repository clean after damage to a pack, an index file or
  a set object (a set object deleted looks like a set forgotten: no other object names a set; an
  index file deleted with the set that needed its packs leaves packs as an interrupted write
  does, which check notes; a key object's fields outside its sealed key are for messages only);
- restoring any set never gives wrong content: each file the restore leaves is the one captured,
  and each file it leaves out is named in its errors (or the whole restore failed with one error);
- prune (keeping every set) refuses or frees only what no set needs: every set that restored
  whole still does;
- `repair index --read-data`, `repair sets`, then a new full backup: check finds no error in the
  new set, which restores identical, and the old sets still never restore wrong content;
- the repairs stopped before each of their writes and deletes in turn, then run again, end as
  repairs left alone do (the same errors found, the same sets restoring whole).

Reproduce a failure with CAIRN_FUZZ_SEED=<the seed its message names>; CAIRN_FUZZ_ROUNDS runs
more rounds. A developer's run draws a new seed each time; CI (CI set) runs a fixed one. The seed
decides the whole draw: the tree, the repository's own random bytes (os.urandom: keys, nonces,
names; `_seeded`) and the objects damaged, taken by their place in the order they were written,
not by their names (content hashes, which also hold the times of the files and sets).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil

import pytest
from cairn.store.content import crypto
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.errors import CairnError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from storekit import differences, fuzz_rounds, fuzz_seed, snapshot, write_random

pytestmark = pytest.mark.campaign

ROUNDS = fuzz_rounds(24)  # 24 fit the suite's time budget (~5 s)
CONFIG = dict(pack_size=64 * 1024, chunker=ChunkerParams(min_size=4 * 1024, avg_size=8 * 1024,
                                                         max_size=32 * 1024))
FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
SECRET = crypto.Secret("passphrase", b"pw")
HARMS = ("flip", "truncate", "garbage", "empty", "delete")
WAL_NAME = "000000010000000000000003"
_places = itertools.count()


def _seeded(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The repository's random bytes drawn from `seed` for the rest of the test."""
    monkeypatch.setattr(os, "urandom", random.Random(seed ^ 0x5EED).randbytes)


def _mutate(root, rng: random.Random) -> None:
    names = sorted(n for n in os.listdir(root) if n.startswith("f"))
    for _ in range(rng.randrange(1, 4)):
        if names and rng.random() < 0.3:
            os.unlink(root / names.pop(rng.randrange(len(names))))
        else:
            name = rng.choice(names) if names and rng.random() < 0.5 else f"f{rng.randrange(1000):03d}"
            write_random(root / name, rng.randrange(0, 50_000), rng)
            if name not in names:
                names.append(name)


def _history(rng: random.Random, src, encrypted: bool):
    inner = MemoryBackend()
    config = RepoConfig.new(**CONFIG)
    repo = (Repository.init(inner, config, secret=SECRET, argon2=FAST) if encrypted
            else Repository.init(inner, config))
    (src / "sub").mkdir(parents=True)
    for i in range(rng.randrange(5, 12)):
        write_random(src / f"f{i:03d}", rng.randrange(0, 50_000), rng)
    write_random(src / "sub" / "nested", rng.randrange(1000, 30_000), rng)
    captured = {}
    for level in ("full", "incremental", "differential"):
        s = repo.backup(BackupRequest(source="src", paths=(str(src),), level=level))
        captured[s.id] = snapshot(src)
        _mutate(src, rng)
    repo.put_wal(WAL_NAME, rng.randbytes(30_000))
    repo.close()
    return dict(inner.objects), captured


def _damage(objects: dict, rng: random.Random, encrypted: bool) -> list[str]:
    kinds = ["packs", "packs", "packs", "index", "sets"] + (["keys", "config"] if encrypted else [])
    done = []
    hit: set[tuple[str, str]] = set()
    for _ in range(rng.choice((1, 1, 2))):
        kind = rng.choice(kinds)
        names = [n for k, n in objects if k == kind and (k, n) not in hit]  # in the order they were written
        if not names:
            continue
        name, harm = rng.choice(names), rng.choice(HARMS)
        # what depends on the object's length (a few bytes apart from run to run: the times it
        # holds compress differently) is drawn apart, so the next draws of a replay stay the same
        at = random.Random(rng.getrandbits(64))
        hit.add((kind, name))
        data = objects[(kind, name)]
        if harm == "delete":
            del objects[(kind, name)]
        elif harm == "flip" and data:
            i = at.randrange(len(data))
            objects[(kind, name)] = data[:i] + bytes([data[i] ^ (1 << at.randrange(8))]) + data[i + 1:]
        elif harm == "truncate" and data:
            objects[(kind, name)] = data[:at.randrange(len(data))]
        elif harm == "garbage":
            objects[(kind, name)] = at.randbytes(len(data))
        else:
            objects[(kind, name)] = b""
        done.append(f"{harm} {kind}/{name[:8]}")
    return done


def _open(objects: dict, encrypted: bool) -> tuple[Repository, MemoryBackend]:
    inner = MemoryBackend()
    inner.objects = objects
    return (Repository.open(inner, secret=SECRET) if encrypted else Repository.open(inner)), inner


def _never_wrong(repo: Repository, captured: dict, tmp, tag: str) -> set[str]:
    """Restore every set: what is restored is what was captured, what is not is named in the
    errors (or the whole restore failed with a CairnError). Returns the sets restored whole."""
    whole = set()
    for set_id, snap in captured.items():
        out = tmp / f"r{next(_places)}"
        try:
            stats = repo.restore(repo.get_set(set_id), str(out))
        except CairnError:
            shutil.rmtree(out, ignore_errors=True)
            continue
        got = snapshot(out)
        errors = " ".join(stats.errors)
        for rel, node in snap.nodes.items():
            mine = got.nodes.get(rel)
            if node.kind == "file" and mine is not None:
                assert (mine.size, mine.digest) == (node.size, node.digest), \
                    f"{tag}: {rel!r} of set {set_id[:8]} restored with wrong content, errors {stats.errors}"
            elif mine is None and node.kind == "file":  # named, or a directory above it is
                names = [os.fsdecode(rel)] + [os.fsdecode(rel[:i + 1]) for i, c in enumerate(rel) if c == ord("/")]
                assert any(f"'{n}'" in errors for n in names), f"{tag}: {rel!r} of set {set_id[:8]} left out silently"
        extra = set(got.nodes) - set(snap.nodes)
        assert not extra, f"{tag}: set {set_id[:8]} restored entries it never held: {sorted(extra)}"
        if not stats.errors:
            whole.add(set_id)
        shutil.rmtree(out)
    return whole


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_damaged_repository_never_gives_wrong_data(tmp_path, monkeypatch, round_):
    seed = fuzz_seed() + round_
    print(f"CAIRN_FUZZ_SEED={seed - round_} (round {round_})")
    _seeded(monkeypatch, seed)
    rng = random.Random(seed)
    encrypted = round_ % 2 == 1
    src = tmp_path / "src"
    objects, captured = _history(rng, src, encrypted)
    damaged = dict(objects)
    harms = _damage(damaged, rng, encrypted)
    tag = (f"CAIRN_FUZZ_SEED={seed - round_} round {round_} (seed {seed}, "
           f"{'encrypted' if encrypted else 'plaintext'}): {', '.join(harms)}")
    if not harms:
        pytest.skip("nothing drawn to damage")
    try:
        repo, _inner = _open(damaged, encrypted)
    except CairnError:
        assert any(h.split()[1].startswith(("keys/", "config/")) for h in harms), f"{tag}: does not open"
        return
    try:
        report = repo.check(read_data=True)
    except CairnError:
        pass
    else:  # a set object deleted looks like a set forgotten (its data is then prune's to free)
        seen = [h for h in harms if h.split()[1].startswith(("packs/", "index/", "sets/"))
                and not h.startswith(("delete sets/", "delete index/"))]
        assert report.errors or report.warnings or not seen, f"{tag}: check calls the damaged repository clean"
        # an index file deleted is an error when a set needs its packs; when none does (its set was
        # deleted too) they are what an interrupted write leaves, and check notes them as that
        gone = [h for h in harms if h.startswith("delete index/")]
        assert report.errors or report.warnings or report.notes or not gone, \
            f"{tag}: check says nothing of the packs of a deleted index file"
    whole = _never_wrong(repo, captured, tmp_path, tag)
    try:  # prune keeping every set: refuses, or frees only what no set needs
        repo.prune(PrunePolicy())
    except CairnError:
        pass
    assert _never_wrong(repo, captured, tmp_path, tag + ", after prune") >= whole, f"{tag}: prune lost data"

    repo.repair_index(read_data=True)
    repo.repair_sets()
    repo.close()
    repo, _inner = _open(damaged, encrypted)
    s = repo.backup(BackupRequest(source="src", paths=(str(src),), level="full"))
    report = repo.check(read_data=True)  # the old sets may still miss what was lost: never the new one
    assert all(s.id not in p.sets for p in report.errors), \
        f"{tag}: the new full set is damaged: {[p.message for p in report.errors]}"
    out = tmp_path / "after"
    assert repo.restore(repo.get_set(s.id), str(out)).errors == (), tag
    assert not differences(snapshot(src), snapshot(out)), f"{tag}: the new full set restores different"
    _never_wrong(repo, {k: v for k, v in captured.items() if k in {x.id for x in repo.list_sets()}}, tmp_path, tag)


@pytest.mark.parametrize("round_", range(ROUNDS // 2))
def test_repairs_interrupted_anywhere_then_run_again_end_as_if_not(tmp_path, monkeypatch, round_):
    """`repair index --read-data` then `repair sets` on a damaged repository, stopped before each
    of their writes and deletes in turn (the process dies: nothing more reaches the storage)
    and run again: what check finds and which sets restore whole are as after repairs that
    were not interrupted, and no restore gives wrong content."""
    from cairn.store.storage.faults import FaultyBackend

    seed = fuzz_seed() + 1000 + round_
    print(f"CAIRN_FUZZ_SEED={seed - 1000 - round_} (round {round_})")
    _seeded(monkeypatch, seed)
    rng = random.Random(seed)
    encrypted = round_ % 2 == 1
    objects, captured = _history(rng, tmp_path / "src", encrypted)
    damaged = dict(objects)
    kinds = ("packs", "index", "sets")
    harms = [h for h in _damage(damaged, rng, False) if h.split()[1].startswith(tuple(k + "/" for k in kinds))]
    if not harms:
        pytest.skip("nothing drawn to damage")
    tag = (f"CAIRN_FUZZ_SEED={seed - 1000 - round_} round {round_} (seed {seed}, "
           f"{'encrypted' if encrypted else 'plaintext'}): {', '.join(harms)}")

    def repair(inner: MemoryBackend, stop: int | None = None) -> FaultyBackend:
        faulty = FaultyBackend(inner, fail_at=stop, mode="stop", ops=("put", "delete"),
                               kind=("packs", "index", "sets"))
        try:
            r = Repository.open(faulty, secret=SECRET) if encrypted else Repository.open(faulty)
            r.repair_index(read_data=True)
            r.repair_sets()
        except CairnError:
            assert stop is not None and faulty.fired, f"{tag}: a repair failed without a fault"
        for name in list(inner.list("locks")):  # its process is gone (same pid here: removed by hand)
            inner.delete("locks", name)
        return faulty

    def outcome(objs: dict) -> tuple[frozenset[str], set[str]]:
        repo, _ = _open(objs, encrypted)
        report = repo.check(read_data=True)
        return frozenset(p.message for p in report.errors), _never_wrong(repo, captured, tmp_path, tag)

    reference = dict(damaged)
    inner = MemoryBackend()
    inner.objects = reference
    calls = len(repair(inner).calls)
    expected = outcome(reference)
    for n in range(1, calls + 1):
        inner = MemoryBackend()
        inner.objects = dict(damaged)
        assert repair(inner, n).fired, f"{tag}: stop {n}"
        repair(inner)
        got = outcome(inner.objects)
        assert got == expected, f"{tag}: stopped at call {n} of {calls}, then run again: {got} != {expected}"


def test_a_seed_draws_the_same_damage_every_run(tmp_path, monkeypatch):
    """What a failure's seed replays: the same harms to the same objects (by their place in the
    order of writing), though the objects' names (content hashes) differ from run to run."""

    def drawn(seed: int, encrypted: bool, run: int) -> list[tuple[str, str, int]]:
        _seeded(monkeypatch, seed)
        rng = random.Random(seed)
        objects, _ = _history(rng, tmp_path / f"{seed}-{run}" / "src", encrypted)
        order = {kind: [n for k, n in objects if k == kind] for kind, _ in objects}
        out = []
        for harm in _damage(dict(objects), rng, encrypted):
            what, place = harm.split()
            kind, prefix = place.split("/")
            out.append((what, kind, next(i for i, n in enumerate(order[kind]) if n.startswith(prefix))))
        return out

    for seed in (fuzz_seed() + i for i in range(4)):
        first, again = drawn(seed, seed % 2 == 1, 0), drawn(seed, seed % 2 == 1, 1)
        assert first == again, f"CAIRN_FUZZ_SEED={seed}: {first} then {again}"
