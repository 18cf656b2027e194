"""What prune says it frees. A real run reports the net bytes by which the packs shrank (the live
blobs a rewrite copies into a new pack are not freed), and counts a rewritten pack as deleted; a
dry run gives the same counts and about the same bytes. While another operation holds a lock,
what a run would mark waits for it (a running backup's new packs look unneeded until it
commits): the dry run says so instead of counting it as freed."""

from __future__ import annotations

import os
import random

from cairn.store.content.repoconfig import RepoConfig
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from storekit import backup, write_random

MIB = 1024 * 1024


def pack_bytes(root) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root / "repo" / "packs") for f in files)


def test_real_and_dry_runs_report_the_net_bytes_the_packs_shrank_by(repo, src, rng, tmp_path):
    for i in range(8):
        write_random(src / f"big{i}", MIB, rng)
    backup(repo, src, "full")
    for i in range(4):  # half of the first set's data is needed by no later set
        (src / f"big{i}").unlink()
    backup(repo, src, "full")
    dry = repo.prune(PrunePolicy(keep_last=1), dry_run=True)
    before = pack_bytes(tmp_path)
    report = repo.prune(PrunePolicy(keep_last=1))
    shrunk = before - pack_bytes(tmp_path)
    assert report.packs_rewritten >= 1, report  # the half-dead pack was copied, not only deleted
    assert report.bytes_freed == shrunk and 3.5 * MIB < shrunk < 4.5 * MIB, (report, shrunk)
    assert (dry.packs_deleted, dry.packs_rewritten) == (report.packs_deleted, report.packs_rewritten)
    assert abs(dry.bytes_freed - shrunk) <= 0.02 * shrunk, (dry, shrunk)
    assert repo.check(read_data=True).ok


def test_a_dry_run_beside_a_running_backup_reports_waiting_not_freed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    inner = MemoryBackend()
    repo = Repository.init(inner, RepoConfig.new())
    write_random(src / "old", 2 * MIB, rng)
    write_random(src / "kept", 100_000, rng)
    backup(repo, src, "full")
    (src / "old").unlink()
    backup(repo, src, "full")
    alone = repo.prune(PrunePolicy(keep_last=1), dry_run=True)
    assert alone.bytes_freed > 1.5 * MIB and alone.waiting_packs == 0
    running = Repository.open(inner).session(BackupRequest(source="src", paths=(str(src),), level="incremental",
                                                           hostname="beta"))
    running.walk_all()
    dry = Repository.open(inner).prune(PrunePolicy(keep_last=1), dry_run=True)
    assert dry.bytes_freed == 0 and dry.packs_deleted == 0, dry
    assert dry.waiting_packs >= 1 and dry.waiting_bytes >= alone.bytes_freed, dry
    assert any(h.startswith("backup of source 'src' on host ") for h in dry.waiting_on), dry.waiting_on
    real = Repository.open(inner).prune(PrunePolicy(keep_last=1), grace=0)
    assert real.bytes_freed == 0 and real.waiting_packs == dry.waiting_packs, (real, dry)
    running.commit()
    after = Repository.open(inner).prune(PrunePolicy(), grace=0)
    assert after.bytes_freed > 1.5 * MIB and after.waiting_packs == 0, after
    assert Repository.open(inner).check(read_data=True).ok
