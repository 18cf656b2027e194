"""Crash campaign: the real daemon killed with SIGKILL at random points of backups and of
garbage collection (`cairn prune` through the client), trial after trial on one repository.

Each trial restarts cairnd on the repository, takes a backup that must succeed (the next
backup after a crash works), every third trial a prune that must succeed too, changes the
source, starts a backup or a prune through the client, and kills the daemon after a random
delay once the operation holds its repository lock. Then, with the daemon dead: check
(reading all data) passes, every set still listed restores identical to the tree it
captured, and no set vanished that no prune could have forgotten. Garbage collection runs
with a short grace period, so marks made by one trial are collected by a later one. The
kill delays follow the seed; where they land also depends on the machine's speed.

CAIRN_CRASH_SEED picks the random points (printed on failure: set it to replay a run),
CAIRN_CRASH_TRIALS how many trials: 20 by default, sized for the suite's time budget (about
2 s a trial); run a few hundred before changing the store's commit or gc paths.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
from cairn.store.repository import Repository
from cairnd_harness import CAIRN, env_for, snapshot

SEED = int(os.environ.get("CAIRN_CRASH_SEED", "9203"))
TRIALS = int(os.environ.get("CAIRN_CRASH_TRIALS", "20"))
FILE = 256 * 1024


def _files(tree: dict[str, tuple]) -> dict[str, tuple]:
    """What a restore must reproduce of a snapshot: files' mode, size and content, symlinks."""
    return {p: (v[0], v[1], v[5], v[6]) if v[0] == "file" else v[:1] for p, v in tree.items()}


def _mutate(src: str, rng: random.Random) -> None:
    for _ in range(rng.randint(4, 10)):  # enough new data that a backup takes a while
        name = os.path.join(src, f"d{rng.randrange(3)}", f"f{rng.randrange(24):02d}")
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "wb") as f:
            f.write(rng.randbytes(rng.randint(1, FILE)))
    if rng.random() < 0.3:
        victims = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs]
        if victims:
            os.unlink(rng.choice(sorted(victims)))


def _verify(repo_path: str, expected: dict[str, dict], tmp, tag: str, restored: set[str] | None = None) -> None:
    """Check reading all data; restore every listed set not in `restored` (all when None) and
    compare. A set restored identical once still does while check finds every blob intact:
    its trees and chunks are immutable and named by their content."""
    repo = Repository.open_local(repo_path)
    try:
        report = repo.check(read_data=True)
        assert report.ok, f"{tag}: check: {[p.message for p in report.errors]}"
        for s in repo.list_sets():
            assert s.id in expected, f"{tag}: set {s.id[:8]} appeared from nowhere"
            if restored is not None and s.id in restored:
                continue
            target = tmp / f"{tag}-{s.id[:8]}"
            stats = repo.restore(s, str(target))
            assert stats.errors == (), f"{tag}: restore {s.id[:8]}: {stats.errors}"
            assert _files(snapshot(str(target))) == expected[s.id], f"{tag}: set {s.id[:8]} restores different"
            if restored is not None:
                restored.add(s.id)
    finally:
        repo.close()


@pytest.mark.slow
@pytest.mark.campaign
def test_daemon_killed_at_random_points_of_backups_and_gc(start_daemon, tmp_path, monkeypatch):
    rng = random.Random(SEED)
    tag = f"seed {SEED} (CAIRN_CRASH_SEED={SEED} replays it)"
    monkeypatch.setenv("CAIRN_GC_GRACE", "0.3")
    src = tmp_path / "src"
    for i in range(24):
        p = src / f"d{i % 3}" / f"f{i:02d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(FILE))
    repo_path = str(tmp_path / "repo")
    expected: dict[str, dict] = {}
    kills = {"backup": 0, "prune": 0}
    restored: set[str] = set()
    packs_seen: set[str] = set()
    for trial in range(TRIALS):
        where = f"{tag}, trial {trial}"
        d = start_daemon("--repo", repo_path, "--source", str(src))
        level = rng.choice(["full", "incremental", "incremental"])
        r = d.cli("backup", "--level", level)
        assert r.returncode == 0, f"{where}: backup after a crash failed:\n{r.stdout}\n{r.stderr}\n{d.log()[-3000:]}"
        expected[r.stdout.strip().splitlines()[-1]] = _files(snapshot(str(src)))
        if trial % 3 == 2:  # a prune that runs to the end: it collects what killed ones marked
            report = json.loads(d.ok("--json", "prune", "--keep-full", "2", "--keep-incremental", "1"))
            for gone in report["forgotten"]:
                del expected[gone]
        _mutate(str(src), rng)
        captured = _files(snapshot(str(src)))
        op = rng.choice(["backup", "prune"])
        if op == "backup":
            argv = ["backup", "--level", rng.choice(["full", "full", "incremental"])]
        else:
            argv = ["--json", "prune", "--keep-full", str(rng.randint(1, 2)), "--keep-incremental",
                    str(rng.randint(0, 2))]
        before = set(expected)
        client = subprocess.Popen([CAIRN, "--socket", d.socket, *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env_for())
        delay = rng.uniform(0.0, 0.06 if op == "backup" else 0.04)
        locks = os.path.join(repo_path, "locks")
        deadline = time.monotonic() + 15  # the operation holds a lock while it runs: aim into it
        while not os.listdir(locks) and client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        landed = bool(os.listdir(locks))
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        out, err = client.communicate(timeout=30)
        kills[op] += landed
        listed = {s.id for s in _list_sets(repo_path)}
        if op == "backup":
            new = listed - before
            assert len(new) <= 1, f"{where}: more than one new set"
            for sid in new:
                expected[sid] = captured
            assert before <= listed, f"{where}: a backup made sets vanish: {sorted(before - listed)}"
        else:
            assert listed <= before, f"{where}: a prune added a set"
            if client.returncode == 0:
                assert sorted(json.loads(out)["kept"]) == sorted(listed), f"{where}: {out}"
        for gone in before - listed:
            del expected[gone]
        _verify(repo_path, expected, tmp_path, f"t{trial}", restored)
        packs_seen |= _packs(repo_path)
    freed = len(packs_seen - _packs(repo_path))  # only garbage collection deletes packs
    print(f"{tag}: kills inside a running operation: {kills} of {TRIALS} trials; packs deleted: {freed}")
    assert freed, f"{tag}: garbage collection never deleted a pack"
    assert kills["backup"] and kills["prune"], f"{tag}: no kill landed inside a running operation: {kills}"
    d = start_daemon("--repo", repo_path, "--source", str(src))
    expected[d.ok("backup", "--level", "incremental").strip().splitlines()[-1]] = _files(snapshot(str(src)))
    d.proc.kill()
    d.proc.wait(10)
    _verify(repo_path, expected, tmp_path, "final")


def _packs(repo_path: str) -> set[str]:
    return {n for _, _, names in os.walk(os.path.join(repo_path, "packs")) for n in names if not n.startswith(".")}


def _list_sets(repo_path: str):
    repo = Repository.open_local(repo_path, read_only=True)
    try:
        return repo.list_sets()
    finally:
        repo.close()
