"""What verify says about packs no index names, through the real daemon on a local repository.

A backup SIGKILLed after it stored packs and before an index file named them leaves packs in
no index: no damage (restic's unreferenced packs). verify says so in one note line and exits 0;
prune removes them. A pack whose index file was deleted while sets need it is another matter:
verify fails, names the pack and sends to `cairn repair index`, also while leftovers of an
interrupted write lie beside it (which stay a note).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from cairn.store.content.index import decode_index
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from cairnd_harness import CAIRN, env_for, snapshot

MIB = 1024 * 1024
DEADLINE = 60.0
LEFTOVER = "packs not in any index, left by an interrupted write; prune removes them"


def _packs(repo) -> set[str]:
    """The packs stored (not the temp files of writes in progress)."""
    return {p.name for d in (repo / "packs").iterdir() for p in d.iterdir() if not p.name.startswith(".tmp-")}


def _indexed(repo) -> dict[str, str]:
    """Every pack an index file names -> that index file."""
    out = {}
    for name in os.listdir(repo / "index"):
        for pack in decode_index(name, (repo / "index" / name).read_bytes()):
            out[pack] = name
    return out


def _killed_in_a_backup(d, repo, src) -> set[str]:
    """SIGKILL the daemon while an incremental has stored packs that no index file names yet (an
    index file names every 32 packs, 1 MiB each here); return those packs."""
    os.makedirs(src / "big")
    for i in range(6):
        (src / "big" / f"b{i}.bin").write_bytes(os.urandom(8 * MIB))
    before = _packs(repo)
    client = subprocess.Popen([CAIRN, "--socket", d.socket, "backup", "--level", "incremental"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for())
    try:
        end = time.monotonic() + DEADLINE
        while len(_packs(repo) - before - set(_indexed(repo))) < 3:
            assert client.poll() is None and time.monotonic() < end, "the backup ended before it could be killed"
            time.sleep(0.02)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
    finally:
        client.wait(30)
    left = _packs(repo) - before - set(_indexed(repo))
    assert left, "every pack the backup stored was indexed before the kill"
    return left


def test_packs_left_by_a_killed_backup_are_a_note_a_lost_index_file_an_error(start_daemon, tmp_path):
    src, repo = tmp_path / "src", tmp_path / "repo"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.bin").write_bytes(os.urandom(300_000))
    os.makedirs(repo, mode=0o700)
    Repository.init(LocalBackend(str(repo)), RepoConfig.new(pack_size=MIB)).close()
    args = ("--repo", str(repo), "--source", str(src))
    d = start_daemon(*args)
    full = json.loads(d.ok("--json", "backup", "--level", "full"))
    full_packs = _packs(repo)
    left = _killed_in_a_backup(d, repo, src)

    d = start_daemon(*args)
    r = d.cli("verify")
    assert r.returncode == 0 and r.stderr == "", (r.stdout, r.stderr)
    assert r.stdout.splitlines() == [f"note: {len(left)} {LEFTOVER}", "repository ok: 1 set checked"], r.stdout
    report = json.loads(d.ok("--json", "verify"))
    assert report["ok"] and not report["warnings"] and [n["message"] for n in report["notes"]] == \
        [f"{len(left)} {LEFTOVER}"], report

    # the full's index file deleted: its pack holds what the set needs, beside the leftovers
    (first,) = {_indexed(repo)[p] for p in full_packs}
    os.unlink(repo / "index" / first)
    r = d.cli("verify")
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert any(x.startswith("error: ") and "is missing from the index" in x for x in lines), r.stdout
    named = [x for x in lines if x.startswith("warning: pack ")]
    assert named and all(x.endswith("its index file was deleted or lost; 'cairn repair index' indexes it again")
                         and x.split("'")[1][:8] in {p[:8] for p in full_packs} for x in named), r.stdout
    assert f"note: {len(left)} {LEFTOVER}" in lines, r.stdout
    assert "'cairn repair index'" in r.stderr.splitlines()[-1], r.stderr

    d.ok("repair", "index")
    d.ok("prune")
    r = d.cli("verify", "--read-data")
    assert r.returncode == 0 and "note:" not in r.stdout and "warning:" not in r.stdout, (r.stdout, r.stderr)
    d.ok("restore", full["id"], "--target", str(tmp_path / "out"))
    assert snapshot(str(tmp_path / "out")) == {k: v for k, v in snapshot(str(src)).items()
                                              if not k.startswith("big")}
