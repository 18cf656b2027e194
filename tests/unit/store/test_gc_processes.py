"""Three writer processes and a pruner process on one local repository for a bounded time.

Writers share some file contents (so they deduplicate against each other's blobs, which the
pruner's policy forgets), the pruner runs garbage collection with a short grace period all
along. Afterwards: check (reading all data) passes, so no set references a missing blob, and
every set still listed restores identical to what its writer captured.
CAIRN_GC_SECONDS sets how long the processes run (default 12).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.model import PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend

WORKER = os.path.join(os.path.dirname(__file__), "gc_worker.py")
SECONDS = float(os.environ.get("CAIRN_GC_SECONDS", "12"))
CONFIG = dict(pack_size=64 * 1024, chunker=ChunkerParams(min_size=8 * 1024, avg_size=16 * 1024,
                                                         max_size=64 * 1024))


def _digests(root) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.mark.slow
def test_three_writers_and_a_pruner(tmp_path):
    rng = random.Random(99)
    repo_path = tmp_path / "repo"
    Repository.init(LocalBackend(str(repo_path)), RepoConfig.new(**CONFIG)).close()  # small packs: many of them
    shared = tmp_path / "shared"
    shared.mkdir()
    for i in range(6):
        (shared / f"s{i}").write_bytes(rng.randbytes(rng.randint(10_000, 80_000)))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    procs = []
    for w in range(3):
        src = tmp_path / f"w{w}"
        src.mkdir()
        procs.append(subprocess.Popen([sys.executable, WORKER, "writer", str(repo_path), str(src), str(out),
                                       str(w), str(SECONDS), str(shared)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env))
    procs.append(subprocess.Popen([sys.executable, WORKER, "pruner", str(repo_path), str(out), "7",
                                   str(SECONDS), "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=SECONDS + 120)
        assert p.returncode == 0, stderr.decode()[-2000:]
        results.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    writers, pruner = results[:3], results[3]
    assert all(w["committed"] >= 2 for w in writers), results
    assert pruner["runs"] >= 2 and pruner["packs_deleted"] > 0, results

    # one more collection with no grace and nobody running: what is marked goes
    repo = Repository.open_local(str(repo_path))
    repo.prune(PrunePolicy(), grace=0)
    report = repo.check(read_data=True)
    assert report.ok, [p.message for p in report.errors]
    kept = repo.list_sets()
    assert kept
    for s in kept:
        record = json.loads((out / f"{s.id}.json").read_text())
        target = tmp_path / "restore" / s.id
        stats = repo.restore(s, str(target))
        assert stats.errors == (), stats.errors
        assert _digests(target) == record["files"], f"set {s.id[:8]} of {s.source} restores different"
