"""Listing one very large directory costs the real daemon about that directory's tree bytes,
not its entries decoded at once: `cairn ls SET big` of a directory of 100,000 entries (a set
made straight in the repository, so no files need exist) must not raise the daemon's peak
resident size (VmHWM) by more than a bound well below what decoding the tree whole costs.

Measured with 200,000 entries (CAIRN_BIG_DIRECTORY_ENTRIES=200000, a tree of 42 MB): the
daemon's peak grew by 322 MB (VmHWM 86 -> 408 MB) when the tree was decoded whole, and by 49 MB
(86 -> 135 MB) now that it is read one entry at a time: the tree's plaintext, the stored blob it
came from, and a batch of replies.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import pytest
from cairn.store.content.packs import TYPE_TREE
from cairn.store.model import SetStats
from cairn.store.repository import Repository
from cairn.store.snapshots.sets import encode_set
from cairn.store.snapshots.trees import Entry, encode_tree
from cairnd_harness import init_repo, write_config

ENTRIES = int(os.environ.get("CAIRN_BIG_DIRECTORY_ENTRIES", "100000"))
# Peak growth allowed, per byte of the big tree's plaintext. Read one entry at a time it was
# about 1.2; decoded whole about 7.8 (its JSON document and its Entry list at once).
GROWTH_PER_TREE_BYTE = 4


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc status")


def _set_with_big_directory(repo_path: str, entries: int) -> tuple[str, int]:
    """A set of source 'app' whose root holds 'big', a directory of `entries` files (chunk ids
    only: listing reads no file data); (set id, bytes of the big tree)."""
    repo = Repository.open_local(repo_path)
    try:
        now_ns = time.time_ns()
        files = [Entry(name=f"file-{i:07d}.dat".encode(), kind="file", mode=0o100644, uid=1000, gid=1000,
                       mtime_ns=now_ns + i, ctime_ns=now_ns + i, ino=10_000 + i, size=4096 + i,
                       chunks=[os.urandom(32)]) for i in range(entries)]
        big = encode_tree(files)
        del files
        writer = repo.writer()
        big_id = writer.put_data(TYPE_TREE, big)
        root = writer.put_data(TYPE_TREE, encode_tree([
            Entry(name=b"big", kind="dir", mode=0o40755, mtime_ns=now_ns, subtree=big_id),
            Entry(name=b"small", kind="file", mode=0o100644, mtime_ns=now_ns, chunks=[])]))
        writer.finish()
        now = time.time()
        stats = asdict(SetStats())
        stats.update(files=entries + 1, dirs=1)
        set_id, data = encode_set({
            "source": "app", "level": "full", "requested_level": "full", "base": None, "time_start": now,
            "time_end": now, "hostname": "elsewhere", "paths": ["/srv/app"], "tree": root.hex(), "stats": stats,
            "tags": [], "note": "", "extra": {}})
        repo.backend.put("sets", set_id, data)
        return set_id, len(big)
    finally:
        repo.close()


@pytest.mark.slow
def test_listing_a_directory_of_100000_entries_holds_its_tree_not_its_entries(start_daemon, rundir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    repo_path = init_repo(str(tmp_path / "repo"))
    set_id, tree_bytes = _set_with_big_directory(repo_path, ENTRIES)
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), repo_path, sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    assert d.ok("ls", set_id[:12]).split()[-1] == "small"  # the root: two entries, read and cached
    before = _vm(d.proc.pid, "VmHWM")

    listed = d.ok("ls", set_id[:12], "big", timeout=300).splitlines()

    grown = _vm(d.proc.pid, "VmHWM") - before
    assert len(listed) == ENTRIES
    assert listed[0].endswith("file-0000000.dat") and listed[-1].endswith(f"file-{ENTRIES - 1:07d}.dat")
    print(f"{ENTRIES} entries, tree {tree_bytes / 1e6:.1f} MB: daemon peak grew {grown / 1e6:.1f} MB "
          f"(VmHWM {before / 1e6:.1f} -> {(before + grown) / 1e6:.1f} MB)")
    assert grown < GROWTH_PER_TREE_BYTE * tree_bytes, (
        f"listing {ENTRIES} entries raised the daemon's peak by {grown / 1e6:.0f} MB "
        f"for a tree of {tree_bytes / 1e6:.0f} MB: its entries were held at once")
