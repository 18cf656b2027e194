"""Round trips: back up a real tree and generated edge cases, restore, compare everything."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sysconfig

import pytest
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository
from cairn.store.storage.backend import MemoryBackend
from storekit import assert_same_tree, backup, snapshot, write_random

MIB = 1024 * 1024
ROOT = os.geteuid() == 0


def _xattrs_supported(path) -> bool:
    probe = os.path.join(path, ".xattr-probe")
    open(probe, "wb").close()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return False
        raise
    finally:
        os.unlink(probe)


def build_edge_cases(root: str, rng) -> dict:
    """Every kind of entry the store must carry; returns facts the tests check afterwards."""
    broot = os.fsencode(root)
    j = lambda *p: os.path.join(broot, *p)  # noqa: E731
    facts = {"xattrs": _xattrs_supported(root)}
    os.makedirs(j(b"dir", b"nested", b"deeper", b"deepest"))
    write_random(j(b"plain.bin"), 300_000, rng)
    write_random(j(b"dir", b"nested", b"deeper", b"deepest", b"leaf.txt"), 5_000, rng)
    write_random(j(b"big.bin"), 3 * MIB + 123, rng)
    open(j(b"empty"), "wb").close()
    os.mkdir(j(b"emptydir"))
    os.mkdir(j(b"dir", b"empty-nested"))
    # symlinks: relative, absolute, dangling, to a directory
    os.symlink(b"plain.bin", j(b"rel-link"))
    os.symlink(b"/etc/hostname", j(b"abs-link"))
    os.symlink(b"does/not/exist", j(b"dangling"))
    os.symlink(b"dir/nested", j(b"dir-link"))
    # hardlinks: a group of three across directories, and a pair
    write_random(j(b"hl-a"), 70_000, rng)
    os.link(j(b"hl-a"), j(b"dir", b"hl-b"))
    os.link(j(b"hl-a"), j(b"dir", b"nested", b"hl-c"))
    write_random(j(b"pair-1"), 10, rng)
    os.link(j(b"pair-1"), j(b"pair-2"))
    # sparse: 64 MiB with data at 0 and at 40 MiB
    with open(j(b"sparse.img"), "wb") as f:
        f.write(rng.randbytes(4096))
        f.seek(40 * MIB)
        f.write(rng.randbytes(8192))
        f.truncate(64 * MIB)
    # odd modes, a read-only directory with content
    write_random(j(b"mode751"), 100, rng)
    os.chmod(j(b"mode751"), 0o751)
    write_random(j(b"mode600"), 100, rng)
    os.chmod(j(b"mode600"), 0o600)
    write_random(j(b"mode000"), 100, rng)
    os.chmod(j(b"mode000"), 0o000)
    os.mkdir(j(b"dir", b"odd-dir"))
    os.chmod(j(b"dir", b"odd-dir"), 0o711)
    os.mkdir(j(b"readonly"))
    write_random(j(b"readonly", b"inside"), 1000, rng)
    os.mkdir(j(b"readonly", b"sub"))
    write_random(j(b"readonly", b"sub", b"deep"), 10, rng)
    os.chmod(j(b"readonly", b"sub"), 0o555)
    os.chmod(j(b"readonly"), 0o555)
    # owners
    if ROOT:
        write_random(j(b"owned"), 10, rng)
        os.chown(j(b"owned"), 1234, 5678)
        os.mkdir(j(b"owned-dir"))
        os.chown(j(b"owned-dir"), 4321, 8765)
        os.chown(j(b"rel-link"), 1111, 2222, follow_symlinks=False)
    # xattrs
    if facts["xattrs"]:
        write_random(j(b"with-xattrs"), 100, rng)
        os.setxattr(j(b"with-xattrs"), b"user.cairn.one", b"value 1")
        os.setxattr(j(b"with-xattrs"), b"user.cairn.bin", bytes(range(256)))
        os.setxattr(j(b"dir"), b"user.cairn.dir", b"on a directory")
        os.setxattr(j(b"empty"), b"user.empty", b"")
    # fifo
    os.mkfifo(j(b"a-fifo"), 0o640)
    # awkward names
    write_random(j(b"caf\xe9"), 50, rng)
    os.mkdir(j(b"dir\xff\xfe"))
    write_random(j(b"dir\xff\xfe", b"\x80inside"), 50, rng)
    write_random(j(b"new\nline"), 50, rng)
    write_random(j(b" spaces  and\ttabs "), 50, rng)
    write_random(j("ünïcödé ✓".encode()), 50, rng)
    os.symlink(b"caf\xe9", j(b"link-to-\xe9"))
    # mtimes: distinct and with nanoseconds, set last (bottom-up so directories keep theirs)
    t = 1_600_000_000_123_456_789
    for d, dirs, files in os.walk(broot, topdown=False):
        for n in files + dirs:
            t += 1_000_000_007
            os.utime(os.path.join(d, n), ns=(t, t), follow_symlinks=False)
    return facts


def test_edge_cases_round_trip(repo, src, tmp_path, rng):
    facts = build_edge_cases(str(src), rng)
    s = backup(repo, src)
    target = tmp_path / "out"
    stats = repo.restore(s, str(target))
    assert stats.errors == ()
    snap = assert_same_tree(src, target)
    t = os.fsencode(target)
    # hardlinks are links in the target, not copies
    assert os.stat(os.path.join(t, b"hl-a")).st_ino == os.stat(os.path.join(t, b"dir/nested/hl-c")).st_ino
    assert os.stat(os.path.join(t, b"hl-a")).st_nlink == 3
    assert os.stat(os.path.join(t, b"pair-2")).st_ino == os.stat(os.path.join(t, b"pair-1")).st_ino
    # holes are holes
    sp = os.stat(os.path.join(t, b"sparse.img"))
    assert sp.st_size == 64 * MIB
    assert sp.st_blocks * 512 < 1 * MIB
    # the fifo is a fifo, the odd names are there byte for byte
    assert stat.S_ISFIFO(os.lstat(os.path.join(t, b"a-fifo")).st_mode)
    for name in (b"caf\xe9", b"new\nline", b" spaces  and\ttabs ", b"dir\xff\xfe/\x80inside"):
        assert name in snap.nodes
    if ROOT:
        assert snap.nodes[b"owned"].uid == 1234 and snap.nodes[b"owned"].gid == 5678
        assert os.lstat(os.path.join(t, b"owned-dir")).st_uid == 4321
    if facts["xattrs"]:
        assert os.getxattr(os.path.join(t, b"with-xattrs"), b"user.cairn.bin") == bytes(range(256))
        assert os.getxattr(os.path.join(t, b"dir"), b"user.cairn.dir") == b"on a directory"
    assert stat.S_IMODE(os.lstat(os.path.join(t, b"readonly")).st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(os.path.join(t, b"mode751")).st_mode) == 0o751


def test_edge_cases_listing_matches_source(repo, src, rng):
    build_edge_cases(str(src), rng)
    s = backup(repo, src)
    entries = {e.path: e for e in repo.list_tree(s, recursive=True)}
    assert entries["sparse.img"].size == 64 * MIB
    assert entries["dangling"].kind == "symlink" and entries["dangling"].target == "does/not/exist"
    assert entries["a-fifo"].kind == "fifo"
    assert os.fsdecode(b"caf\xe9") in entries
    assert entries["dir/nested/deeper/deepest/leaf.txt"].size == 5_000
    assert s.stats.files == sum(1 for e in entries.values() if e.kind == "file")
    assert s.stats.bytes_total == sum(e.size for e in entries.values() if e.kind == "file")


def test_sparse_file_backup_reads_and_stores_little(repo, src, rng):
    with open(src / "sparse.img", "wb") as f:
        f.write(rng.randbytes(4096))
        f.seek(40 * MIB)
        f.write(rng.randbytes(8192))
        f.truncate(64 * MIB)
    s = backup(repo, src)
    assert s.stats.bytes_added < 1 * MIB


def test_restore_of_chosen_paths(repo, src, tmp_path, rng):
    build_edge_cases(str(src), rng)
    s = backup(repo, src)
    target = tmp_path / "part"
    stats = repo.restore(s, str(target), paths=["dir/nested", "plain.bin"])
    assert stats.errors == ()
    assert sorted(os.listdir(target)) == ["dir", "plain.bin"]
    assert os.listdir(target / "dir") == ["nested"]
    assert_same_tree(src / "dir" / "nested", target / "dir" / "nested")
    assert (target / "plain.bin").read_bytes() == (src / "plain.bin").read_bytes()


def test_multi_path_set_has_one_subtree_per_path(repo, tmp_path, rng):
    a, b = tmp_path / "one" / "alpha", tmp_path / "two" / "beta"
    for p in (a, b):
        (p / "sub").mkdir(parents=True)
        write_random(p / "sub" / "f", 1000, rng)
    s = repo.backup(BackupRequest(source="multi", paths=(str(a), str(b))))
    assert {e.path for e in repo.list_tree(s)} == {"alpha", "beta"}
    target = tmp_path / "out"
    assert repo.restore(s, str(target)).errors == ()
    assert_same_tree(a, target / "alpha")
    assert_same_tree(b, target / "beta")


def test_stdlib_round_trip(tmp_path):
    stdlib = sysconfig.get_paths()["stdlib"]
    src = tmp_path / "stdlib"
    shutil.copytree(stdlib, src, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "__pycache__", "test", "idlelib"))
    repo = Repository.open_local(str(tmp_path / "repo"), create=True)
    s = backup(repo, src, source="stdlib")
    before = snapshot(src)
    assert s.stats.files > 500 and s.stats.bytes_total > 20 * MIB
    target = tmp_path / "out"
    stats = repo.restore(s, str(target))
    assert stats.errors == () and stats.files == s.stats.files
    assert_same_tree(src, target)
    assert snapshot(src) == before, "backup must not change the source"
    report = repo.check(read_data=True)
    assert report.ok and report.warnings == ()


def test_round_trip_on_memory_backend(tmp_path, rng):
    repo = Repository.init(MemoryBackend())
    src = tmp_path / "src"
    src.mkdir()
    build_edge_cases(str(src), rng)
    s = backup(repo, src)
    assert repo.restore(s, str(tmp_path / "out")).errors == ()
    assert_same_tree(src, tmp_path / "out")


def test_restore_overwrite_replaces_changed_entries(repo, src, tmp_path, rng):
    build_edge_cases(str(src), rng)
    s = backup(repo, src)
    target = tmp_path / "out"
    repo.restore(s, str(target))
    os.chmod(target / "readonly", 0o755)
    (target / "plain.bin").write_bytes(b"scribbled")
    os.unlink(target / "rel-link")
    os.symlink("elsewhere", target / "rel-link")
    stats = repo.restore(s, str(target), overwrite=True)
    assert stats.errors == ()
    assert_same_tree(src, target)


@pytest.mark.skipif(not ROOT, reason="needs root to create device nodes")
def test_device_nodes_round_trip(repo, src, tmp_path):
    os.mknod(src / "null", stat.S_IFCHR | 0o620, os.makedev(1, 3))
    s = backup(repo, src)
    target = tmp_path / "out"
    assert repo.restore(s, str(target)).errors == ()
    st = os.lstat(target / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert_same_tree(src, target)
