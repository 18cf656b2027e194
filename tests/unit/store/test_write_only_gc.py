"""Write-only writers beside a full-key writer and a full-key garbage collector, as processes
on one encrypted local repository: no committed set references a deleted blob, every kept set
(also those the write-only hosts took) restores identical, and read-data check is clean."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest
from cairn.store.content.crypto import Secret
from cairn.store.content.repoconfig import ChunkerParams, RepoConfig
from cairn.store.model import PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend

WORKER = os.path.join(os.path.dirname(__file__), "gc_worker.py")
SECONDS = float(os.environ.get("CAIRN_GC_SECONDS", "12"))
CONFIG = dict(pack_size=64 * 1024, chunker=ChunkerParams(min_size=8 * 1024, avg_size=16 * 1024,
                                                         max_size=64 * 1024))
FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
FULL, WONLY = "full passphrase", "write-only passphrase"


def _digests(root) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.mark.slow
def test_write_only_writers_beside_a_full_writer_and_a_collector(tmp_path):
    rng = random.Random(98)
    repo_path = tmp_path / "repo"
    repo = Repository.init(LocalBackend(str(repo_path)), RepoConfig.new(**CONFIG),
                           secret=Secret("passphrase", FULL.encode()), argon2=FAST)
    repo.add_key(Secret("passphrase", WONLY.encode()), FAST, write_only=True)
    repo.close()
    shared = tmp_path / "shared"
    shared.mkdir()
    for i in range(6):
        (shared / f"s{i}").write_bytes(rng.randbytes(rng.randint(10_000, 80_000)))
    out = tmp_path / "out"
    out.mkdir()
    procs = []
    for w, word in enumerate((WONLY, WONLY, FULL)):
        src = tmp_path / f"w{w}"
        src.mkdir()
        env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__), "CAIRN_GC_PASSPHRASE": word}
        procs.append(subprocess.Popen([sys.executable, WORKER, "writer", str(repo_path), str(src), str(out),
                                       str(w), str(SECONDS), str(shared)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env))
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__), "CAIRN_GC_PASSPHRASE": FULL}
    procs.append(subprocess.Popen([sys.executable, WORKER, "pruner", str(repo_path), str(out), "5",
                                   str(SECONDS), "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=SECONDS + 120)
        assert p.returncode == 0, stderr.decode()[-2000:]
        results.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    assert all(w["committed"] >= 2 for w in results[:3]), results
    assert results[3]["runs"] >= 2 and results[3]["packs_deleted"] > 0, results

    repo = Repository.open_local(str(repo_path), secret=Secret("passphrase", FULL.encode()))
    repo.prune(PrunePolicy(), grace=0)
    report = repo.check(read_data=True)
    assert report.ok, [p.message for p in report.errors]
    kept = repo.list_sets()
    assert {s.source for s in kept} >= {"w0", "w1", "w2"}
    for s in kept:
        record = json.loads((out / f"{s.id}.json").read_text())
        target = tmp_path / "restore" / s.id
        stats = repo.restore(s, str(target))
        assert stats.errors == (), stats.errors
        assert _digests(target) == record["files"], f"set {s.id[:8]} of {s.source} restores different"
    repo.close()
