"""A writer or pruner process on one local repository, for the concurrency test.

writer REPO SRC OUT SEED SECONDS SHARED: until SECONDS pass, change SRC a little (some files
from SHARED, the same bytes other writers use, so writers deduplicate against each other),
back it up, and record {set id: digests of SRC as captured} in OUT/<set id>.json.
pruner REPO OUT SEED SECONDS GRACE: until SECONDS pass, prune with a random policy and grace
GRACE, recording each report in OUT/prune-<n>.json.
A failed commit (a collector marked what it relied on) is counted, not fatal.
With CAIRN_GC_PASSPHRASE set, the (encrypted) repository is opened with that passphrase, which
may be a write-only key's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time

from cairn.store.content.crypto import Secret
from cairn.store.errors import FailedPreconditionError, LockedError
from cairn.store.model import BackupRequest, PrunePolicy
from cairn.store.repository import Repository


def digests(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _secret() -> Secret | None:
    word = os.environ.get("CAIRN_GC_PASSPHRASE")
    return Secret("passphrase", word.encode()) if word else None


def writer(repo_path: str, src: str, out: str, seed: int, seconds: float, shared: str) -> None:
    rng = random.Random(seed)
    repo = Repository.open_local(repo_path, secret=_secret())
    pool = sorted(os.listdir(shared))
    end = time.monotonic() + seconds
    n = failed = 0
    while time.monotonic() < end:
        for _ in range(rng.randint(1, 3)):
            name = os.path.join(src, f"f{rng.randrange(12):02d}")
            if rng.random() < 0.5:
                shutil.copyfile(os.path.join(shared, rng.choice(pool)), name)
            else:
                with open(name, "wb") as fh:
                    fh.write(rng.randbytes(rng.randint(1, 60_000)))
        if rng.random() < 0.2:
            victim = os.path.join(src, f"f{rng.randrange(12):02d}")
            if os.path.exists(victim):
                os.unlink(victim)
        captured = digests(src)
        level = "full" if rng.random() < 0.3 else "incremental"
        try:
            s = repo.backup(BackupRequest(source=os.path.basename(src), paths=(src,), level=level))
        except (FailedPreconditionError, LockedError):
            failed += 1
            continue
        n += 1
        with open(os.path.join(out, f"{s.id}.json"), "w") as fh:
            json.dump({"src": src, "files": captured}, fh)
    print(json.dumps({"committed": n, "failed": failed}))


def pruner(repo_path: str, out: str, seed: int, seconds: float, grace: float) -> None:
    rng = random.Random(seed)
    repo = Repository.open_local(repo_path, secret=_secret())
    end = time.monotonic() + seconds
    n = deleted = 0
    while time.monotonic() < end:
        policy = PrunePolicy(keep_full=rng.randint(1, 2), keep_incremental=rng.randint(0, 2),
                             keep_differential=1)
        report = repo.prune(policy, grace=grace)
        n += 1
        deleted += report.packs_deleted
        time.sleep(rng.uniform(0.05, 0.3))
    print(json.dumps({"runs": n, "packs_deleted": deleted}))


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    if role == "writer":
        writer(args[0], args[1], args[2], int(args[3]), float(args[4]), args[5])
    else:
        pruner(args[0], args[1], int(args[2]), float(args[3]), float(args[4]))
