"""Excludes (gitignore-style, relative to the source root) and the one-file-system option."""

from __future__ import annotations

import os
import subprocess

import pytest
from cairn.store.snapshots.excludes import Excluder
from storekit import backup, write_random

PATTERNS = ("cache/", "*.tmp", "/build", "!keep.tmp", "logs/**/*.log")


def test_excluder_matching():
    ex = Excluder(PATTERNS)
    assert ex.excluded(b"cache", True) and ex.excluded("a/b/cache", True)
    assert not ex.excluded("cache", False)  # a file named cache stays
    assert ex.excluded("x.tmp", False) and ex.excluded("deep/er/x.tmp", False)
    assert not ex.excluded("keep.tmp", False)
    assert ex.excluded("build", True) and not ex.excluded("src/build", True)
    assert ex.excluded("logs/a/b/c.log", False) and not ex.excluded("logs/c.txt", False)
    assert not Excluder(()) and not Excluder(()).excluded("anything", False)


def test_backup_skips_excluded_entries(repo, src, rng):
    for d in ("cache/inner", "a/cache", "build", "src/build", "logs/x"):
        (src / d).mkdir(parents=True)
    for f in ("cache/inner/big", "a/cache/f", "a/real", "x.tmp", "a/y.tmp", "keep.tmp", "build/out",
              "src/build/out", "logs/x/e.log", "logs/top.txt", "a/cachefile"):
        write_random(src / f, 1000, rng)
    write_random(src / "cache-file-named-cache", 10, rng)
    os.rename(src / "cache-file-named-cache", src / "a" / "cache2")
    s = backup(repo, src, excludes=PATTERNS)
    paths = {e.path for e in repo.list_tree(s, recursive=True)}
    assert paths == {"a", "a/real", "a/cachefile", "a/cache2", "keep.tmp", "src", "src/build", "src/build/out",
                     "logs", "logs/x", "logs/top.txt"}
    assert s.stats.files == 6
    # an incremental with the same patterns sees nothing new; dropping them adds the entries
    again = backup(repo, src, "incremental", excludes=PATTERNS)
    assert again.tree == s.tree and again.stats.added == 0
    full = backup(repo, src, "incremental")
    assert "x.tmp" in full.stats.added_paths and "cache/" in full.stats.added_paths


def test_excluded_dir_is_never_entered(repo, src, rng, monkeypatch):
    (src / "cache" / "deep").mkdir(parents=True)
    write_random(src / "cache" / "f", 100, rng)
    write_random(src / "ok", 100, rng)
    listed = []
    real = os.scandir

    def spy(path):  # the walk lists a directory by its descriptor: named by /proc
        listed.append(os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", spy)
    s = backup(repo, src, excludes=("cache/",))
    assert {e.path for e in repo.list_tree(s, recursive=True)} == {"ok"}
    assert listed and not any("cache" in p for p in listed)


def _mount_tmpfs(path) -> bool:
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def test_one_file_system(repo, src, rng):
    write_random(src / "here", 100, rng)
    mnt = src / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or not _mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here")
    try:
        write_random(mnt / "elsewhere", 100, rng)
        one = backup(repo, src, one_file_system=True)
        paths = {e.path for e in repo.list_tree(one, recursive=True)}
        assert paths == {"here", "mnt"}  # the mount point stays, empty
        every = backup(repo, src, "full", source="every")
        assert "mnt/elsewhere" in {e.path for e in repo.list_tree(every, recursive=True)}
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
