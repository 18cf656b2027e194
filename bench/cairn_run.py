"""Bench-only entry: one Cairn full backup or restore in its own process.

  python -m bench.cairn_run backup REPO SOURCE     (creates REPO if missing or empty)
  python -m bench.cairn_run restore REPO TARGET    (restores the latest set)

Run as a child of the benchmark so that its time and peak memory are measured exactly like
restic's and borg's. Prints one line of JSON with what the store reported. With
CAIRN_BENCH_PASSPHRASE set, the repository is created (and opened) encrypted, format 2.
"""

from __future__ import annotations

import json
import os
import sys

from cairn.store.content.crypto import Secret
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository


def _secret() -> Secret | None:
    passphrase = os.environ.get("CAIRN_BENCH_PASSPHRASE")
    return Secret("passphrase", passphrase.encode()) if passphrase else None


def backup(repo_path: str, source: str) -> dict:
    repo = Repository.open_local(repo_path, create=True, secret=_secret())
    try:
        s = repo.backup(BackupRequest(source="bench", paths=(source,), level="full"))
        return {"set": s.id, "files": s.stats.files, "bytes_total": s.stats.bytes_total,
                "bytes_added": s.stats.bytes_added, "chunks_added": s.stats.chunks_added}
    finally:
        repo.close()


def restore(repo_path: str, target: str) -> dict:
    repo = Repository.open_local(repo_path, read_only=True, secret=_secret())
    try:
        st = repo.restore(repo.get_set("latest"), target)
        return {"files": st.files, "dirs": st.dirs, "bytes": st.bytes, "errors": list(st.errors)[:10]}
    finally:
        repo.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("backup", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    result = (backup if argv[0] == "backup" else restore)(argv[1], argv[2])
    print(json.dumps(result))
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
