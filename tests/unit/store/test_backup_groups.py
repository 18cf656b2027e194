"""Small files of a directory are read by one pool task per group (store/snapshots/backup.py,
GROUP_FILES): each file still gets its own content, metadata and error, and large files,
hard-linked files and delta reads keep a task of their own."""

from __future__ import annotations

import concurrent.futures
import os

from cairn.store.snapshots import backup as backupmod
from storekit import backup, restore_and_compare, write_random


def _count_tasks(monkeypatch) -> dict[str, int]:
    counts = {"_read_group": 0, "_read_file": 0}
    real = concurrent.futures.ThreadPoolExecutor.submit

    def submit(self, fn, *args, **kwargs):
        name = getattr(fn, "__name__", "")
        if name in counts:
            counts[name] += 1
        return real(self, fn, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", submit)
    return counts


def test_small_files_go_in_groups_and_each_keeps_its_own_content(repo, src, tmp_path, rng, monkeypatch):
    for i in range(100):  # distinct sizes: a file handed another's result would not compare equal
        write_random(src / f"s{i:03d}", 100 + i * 37, rng)
    (src / "sub").mkdir()
    for i in range(5):
        write_random(src / "sub" / f"t{i}", 2000 + i, rng)
    write_random(src / "big1", backupmod.GROUP_FILE_MAX + 1, rng)
    write_random(src / "big2", 3 * backupmod.GROUP_FILE_MAX, rng)
    write_random(src / "linked", 500, rng)
    os.link(src / "linked", src / "linked2")
    counts = _count_tasks(monkeypatch)
    s = backup(repo, src)
    assert s.stats.files == 109
    # 100 + 5 small files in groups of at most GROUP_FILES (a directory's last group may be short)
    assert counts["_read_group"] <= 100 // backupmod.GROUP_FILES + 1 + 1 + 1, counts
    assert counts["_read_file"] == 3, counts  # big1, big2 and one read of the hard-linked file
    restore_and_compare(repo, s, str(src), str(tmp_path / "out"))


def test_a_file_that_fails_in_a_group_fails_alone(repo, src, rng, monkeypatch):
    for i in range(10):
        write_random(src / f"f{i}", 1000 + i, rng)
    real = backupmod.FileReader.read

    def read(self, path: bytes, base_chunks=None, **how):
        if path == b"f4":  # a name in its directory's descriptor (how["dir_fd"])
            raise PermissionError(13, "Permission denied")
        return real(self, path, base_chunks, **how)

    monkeypatch.setattr(backupmod.FileReader, "read", read)
    counts = _count_tasks(monkeypatch)
    s = backup(repo, src)
    names = {e.name: e for e in repo.load_tree(bytes.fromhex(s.tree))}
    assert counts["_read_group"] == 1 and b"f4" not in names and len(names) == 9
    assert all(names[f"f{i}".encode()].size == 1000 + i for i in range(10) if i != 4)
    assert any("f4" in e and "Permission denied" in e for e in s.extra.get("errors", [])), s.extra
