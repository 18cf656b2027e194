"""Listing one very large directory costs the real daemon about that directory's tree bytes,
not its entries decoded at once: `cairn ls SET big` of a directory of 100,000 entries (a set
made straight in the repository, so no files need exist) must not raise the daemon's peak
resident size (VmHWM) by more than a bound well below what decoding the tree whole costs.

Measured with 200,000 entries (CAIRN_BIG_DIRECTORY_ENTRIES=200000, a tree of 42 MB): the
daemon's peak grew by 322 MB (VmHWM 86 -> 408 MB) when the tree was decoded whole, and by 49 MB
(86 -> 135 MB) now that it is read one entry at a time: the tree's plaintext, the stored blob it
came from, and a batch of replies.

The client streams too: `cairn ls -r` and `cairn --json ls -r` of such a set print each batch
as it arrives, so the client's peak does not grow with the listing (CLIENT_GROWTH below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
from cairn.store.content.packs import TYPE_DATA, TYPE_TREE
from cairn.store.model import SetStats
from cairn.store.repository import Repository
from cairn.store.snapshots.sets import encode_set
from cairn.store.snapshots.trees import Entry, encode_tree
from cairnd_harness import CAIRN, env_for, init_repo, write_config

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


def _set_with_big_directory(repo_path: str, entries: int, stored_chunk: bool = False) -> tuple[str, int]:
    """A set of source 'app' whose root holds 'big', a directory of `entries` files (chunk ids
    only: listing reads no file data; with `stored_chunk` each file is one chunk the repository
    holds, the same for all, so a restore's manifest can be made); (set id, bytes of the big tree)."""
    repo = Repository.open_local(repo_path)
    try:
        now_ns = time.time_ns()
        writer = repo.writer()
        chunk = writer.put_data(TYPE_DATA, bytes(4096)) if stored_chunk else None
        files = [Entry(name=f"file-{i:07d}.dat".encode(), kind="file", mode=0o100644, uid=1000, gid=1000,
                       mtime_ns=now_ns + i, ctime_ns=now_ns + i, ino=10_000 + i, size=4096 + i,
                       chunks=[chunk or os.urandom(32)]) for i in range(entries)]
        big = encode_tree(files)
        del files
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


# The client's own peak for a recursive listing, beyond its peak for a listing of two entries.
# Measured with 200,000 entries: the text listing grew it by 204 MB and --json by 579 MB when the
# client collected every entry before printing; streamed, both stay within a few MB whatever
# the count (3 and 8 MB: a batch of replies, and the widest columns seen).
CLIENT_GROWTH = 40 * 1024 * 1024


# Runs a command as its child and writes the child's peak resident size (in KiB) into argv[1].
# A small process forks it: the kernel counts in a process's peak what it held before its exec,
# and a child forked by this test process would carry the test's own size (the big tree built).
_PEAK_OF = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _client_peak(d, argv: list[str], out_path) -> int:
    """Run `cairn ARGV` against daemon `d` with its output into `out_path`; its peak resident
    size (the kernel's maximum RSS of the process: its VmHWM when it ended)."""
    peak = f"{out_path}.peak"
    with open(out_path, "wb") as sink:
        r = subprocess.run([sys.executable, "-c", _PEAK_OF, peak, CAIRN, "--socket", d.socket, *argv], stdout=sink,
                           stderr=subprocess.PIPE, env=env_for(), timeout=300)
    assert r.returncode == 0, f"cairn {' '.join(argv)} -> {r.returncode}: {r.stderr.decode()}"
    with open(peak, encoding="ascii") as f:
        return int(f.read()) * 1024


@pytest.mark.slow
def test_the_client_streams_a_recursive_listing(start_daemon, rundir, tmp_path):
    """`cairn ls -r` (and `--json`) of a set of ENTRIES files prints the entries as their batches
    arrive: the client's peak resident size does not grow with the listing."""
    src = tmp_path / "src"
    src.mkdir()
    repo_path = init_repo(str(tmp_path / "repo"))
    set_id, _ = _set_with_big_directory(repo_path, ENTRIES, stored_chunk=True)
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), repo_path, sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    sid = set_id[:12]
    small = _client_peak(d, ["ls", sid], tmp_path / "root.txt")
    text = _client_peak(d, ["ls", "-r", sid], tmp_path / "all.txt")
    as_json = _client_peak(d, ["--json", "ls", "-r", sid], tmp_path / "all.json")

    lines = (tmp_path / "all.txt").read_text().splitlines()
    assert len(lines) == ENTRIES + 2
    assert lines[0].endswith(" big/") and lines[1].endswith(" big/file-0000000.dat")
    assert lines[-2].endswith(f" big/file-{ENTRIES - 1:07d}.dat") and lines[-1].endswith(" small")
    # aligned as one table while no wider cell comes (sizes of 4 digits fill the daemon's first batch)
    assert len({line.index(" big/") for line in lines[:1000]}) == 1, "the columns are not aligned"
    assert all(len(line.split()) == 7 for line in lines)  # MODE UID GID SIZE DATE TIME NAME
    listed = json.loads((tmp_path / "all.json").read_text())  # one JSON array, as before
    assert [e["path"] for e in listed[:2]] == ["big", "big/file-0000000.dat"] and listed[-1]["path"] == "small"
    assert len(listed) == ENTRIES + 2 and listed[1]["size"] == 4096
    dry = _client_peak(d, ["restore", sid, "--target", str(tmp_path / "t"), "--dry-run"], tmp_path / "dry.txt")
    dry_json = _client_peak(d, ["--json", "restore", sid, "--target", str(tmp_path / "t"), "--dry-run"],
                            tmp_path / "dry.json")

    lines = (tmp_path / "dry.txt").read_text().splitlines()
    assert lines[-1].startswith(f"dry run: {ENTRIES + 2} entries ({ENTRIES + 1} files,"), lines[-1]
    assert len(lines) == ENTRIES + 3 and lines[1] == "would write file big/file-0000000.dat (4.0 KiB)", lines[:3]
    doc = json.loads((tmp_path / "dry.json").read_text())  # one JSON document, as before
    assert len(doc["entries"]) == ENTRIES + 2 and doc["entries"][1] == {"path": "big/file-0000000.dat",
                                                                        "kind": "file", "size": 4096}
    assert doc["dry_run"] and doc["set"] == set_id and doc["errors"] == [] and doc["bytes"] >= 4096 * ENTRIES
    print(f"{ENTRIES} entries: client peak {small / 1e6:.1f} MB for 2 entries, {text / 1e6:.1f} MB for ls -r, "
          f"{as_json / 1e6:.1f} MB for --json ls -r, {dry / 1e6:.1f} and {dry_json / 1e6:.1f} MB for restore "
          "--dry-run and its --json")
    for what, peak in (("ls -r", text), ("--json ls -r", as_json), ("restore --dry-run", dry),
                       ("--json restore --dry-run", dry_json)):
        assert peak - small < CLIENT_GROWTH, (
            f"cairn {what} of {ENTRIES} entries raised the client's peak by {(peak - small) / 1e6:.0f} MB: "
            "it held the listing before printing it")


def _empty_set(repo_path: str) -> str:
    """A set of source 'app' whose root holds nothing (what every entry of a big set is added to)."""
    repo = Repository.open_local(repo_path)
    try:
        writer = repo.writer()
        root = writer.put_data(TYPE_TREE, encode_tree([]))
        writer.finish()
        now = time.time() - 60
        set_id, data = encode_set({
            "source": "app", "level": "full", "requested_level": "full", "base": None, "time_start": now,
            "time_end": now, "hostname": "elsewhere", "paths": ["/srv/app"], "tree": root.hex(),
            "stats": asdict(SetStats()), "tags": [], "note": "", "extra": {}})
        repo.backend.put("sets", set_id, data)
        return set_id
    finally:
        repo.close()


# Measured with 100,000 entries: the client's peak grew by 18 MB for `cairn diff` and by 30 MB for
# `cairn --json diff` when it collected (and sorted) every path before printing; streamed, by
# under 3 MB whatever the count (a batch of paths).
DIFF_GROWTH = 8 * 1024 * 1024


@pytest.mark.slow
def test_the_client_streams_a_diff(start_daemon, rundir, tmp_path):
    """`cairn diff` (and `--json`) of an empty set and one of ENTRIES files prints the changes as
    their batches arrive: the client's peak resident size does not grow with the diff."""
    src = tmp_path / "src"
    src.mkdir()
    repo_path = init_repo(str(tmp_path / "repo"))
    big, _ = _set_with_big_directory(repo_path, ENTRIES)
    empty = _empty_set(repo_path)
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), repo_path, sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    small = _client_peak(d, ["diff", empty[:12], empty[:12]], tmp_path / "none.txt")
    text = _client_peak(d, ["diff", empty[:12], big[:12]], tmp_path / "diff.txt")
    as_json = _client_peak(d, ["--json", "diff", big[:12], empty[:12]], tmp_path / "diff.json")

    assert (tmp_path / "none.txt").read_text() == "0 added, 0 modified, 0 deleted\n"
    lines = (tmp_path / "diff.txt").read_text().splitlines()
    assert len(lines) == ENTRIES + 3 and lines[-1] == f"{ENTRIES + 2} added, 0 modified, 0 deleted"
    # in tree order: a directory, what it holds, then the names after it
    assert lines[:2] == ["+ big/", "+ big/file-0000000.dat"] and lines[-2] == "+ small", lines[-3:]
    doc = json.loads((tmp_path / "diff.json").read_text())  # one JSON document, as before
    assert list(doc) == ["a", "b", "added", "modified", "deleted"]
    assert doc["a"] == big and doc["b"] == empty and doc["added"] == doc["modified"] == []
    assert len(doc["deleted"]) == ENTRIES + 2 and doc["deleted"][1] == "big/file-0000000.dat"
    print(f"{ENTRIES} entries: client peak {small / 1e6:.1f} MB for an empty diff, {text / 1e6:.1f} MB for diff, "
          f"{as_json / 1e6:.1f} MB for --json diff")
    for what, peak in (("diff", text), ("--json diff", as_json)):
        assert peak - small < DIFF_GROWTH, (
            f"cairn {what} of {ENTRIES} changes raised the client's peak by {(peak - small) / 1e6:.0f} MB: "
            "it held the diff before printing it")


def _set_of_equal_files(repo_path: str, entries: int) -> tuple[str, int]:
    """A set of source 'app' whose root holds 'big', a directory of `entries` files of 4 KiB of
    zeros (one chunk the repository holds, the same for all), and an empty file 'small';
    (set id, the files' mtime)."""
    repo = Repository.open_local(repo_path)
    try:
        mtime = (time.time_ns() - 3600 * 10**9) // 10**9 * 10**9
        writer = repo.writer()
        chunk = writer.put_data(TYPE_DATA, bytes(4096))
        files = [Entry(name=f"file-{i:07d}.dat".encode(), kind="file", mode=0o100644, uid=1000, gid=1000,
                       mtime_ns=mtime, ctime_ns=mtime, ino=10_000 + i, size=4096, chunks=[chunk])
                 for i in range(entries)]
        big_id = writer.put_data(TYPE_TREE, encode_tree(files))
        del files
        root = writer.put_data(TYPE_TREE, encode_tree([
            Entry(name=b"big", kind="dir", mode=0o40755, mtime_ns=mtime, subtree=big_id),
            Entry(name=b"small", kind="file", mode=0o100644, mtime_ns=mtime, chunks=[])]))
        writer.finish()
        now = time.time()
        stats = asdict(SetStats())
        stats.update(files=entries + 1, dirs=1, bytes_total=4096 * entries)
        set_id, data = encode_set({
            "source": "app", "level": "full", "requested_level": "full", "base": None, "time_start": now,
            "time_end": now, "hostname": "elsewhere", "paths": ["/srv/app"], "tree": root.hex(), "stats": stats,
            "tags": [], "note": "", "extra": {}})
        repo.backend.put("sets", set_id, data)
        return set_id, mtime
    finally:
        repo.close()


def _lay_down(target: str, entries: int, mtime: int) -> None:
    """What a restore of _set_of_equal_files wrote (as root: the owners too)."""
    big = os.path.join(target, "big")
    os.makedirs(big)
    zeros = bytes(4096)
    for i in range(entries):
        fd = os.open(os.path.join(big, f"file-{i:07d}.dat"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, zeros)
            os.fchmod(fd, 0o644)
            os.fchown(fd, 1000, 1000)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
    for path in (os.path.join(target, "small"),):
        open(path, "wb").close()
        os.utime(path, ns=(mtime, mtime))
    os.chmod(big, 0o755)
    os.utime(big, ns=(mtime, mtime))


# The client's peak for its own delta (--stream) of a tree of ENTRIES files, beyond its peak for
# the delta of a tree of two. Measured with 100,000 entries: it grew by 96 MB when the client held
# the set's whole manifest while it compared and mended; a window at a time, by 15 MB, most of it
# the names of the one directory of 100,000 entries, which its extras are found against.
DELTA_GROWTH = 32 * 1024 * 1024


@pytest.mark.slow
def test_the_client_streams_its_own_delta(start_daemon, rundir, tmp_path):
    """`cairn restore --delta --stream` (the client writes) of a set of ENTRIES files into a copy
    with damage compares and mends the target as the manifest's batches arrive: the client's
    peak resident size does not grow with the tree, and the delta writes just the damage, and
    --delete removes the extras. Its dry run streams likewise and counts what the delta writes."""
    if os.geteuid() != 0:
        pytest.skip("lays down files of another owner")
    src = tmp_path / "src"
    src.mkdir()
    repo_path = init_repo(str(tmp_path / "repo"))
    big, mtime = _set_of_equal_files(repo_path, ENTRIES)
    tiny, tiny_mtime = _set_of_equal_files(repo_path, 2)
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), repo_path, sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    small_target, target = str(tmp_path / "small"), str(tmp_path / "t")
    _lay_down(small_target, 2, tiny_mtime)
    _lay_down(target, ENTRIES, mtime)
    for i in (0, ENTRIES // 2, ENTRIES - 1):  # damage: files gone, one cut short, and extras
        os.unlink(os.path.join(target, "big", f"file-{i:07d}.dat"))
    os.truncate(os.path.join(target, "big", f"file-{ENTRIES // 3:07d}.dat"), 100)
    for extra in ("big/zz-extra", "extra"):
        with open(os.path.join(target, extra), "wb") as f:
            f.write(b"not in the set")

    delta = ["restore", "--delta", "--delete", "--quick", "--stream"]
    small = _client_peak(d, ["--json", *delta, tiny[:12], "--target", small_target], tmp_path / "small.json")
    dry = _client_peak(d, ["--json", *delta, "--dry-run", big[:12], "--target", target], tmp_path / "dry.json")
    mended = _client_peak(d, ["--json", *delta, big[:12], "--target", target], tmp_path / "delta.json")

    planned = json.loads((tmp_path / "dry.json").read_text())
    report = json.loads((tmp_path / "delta.json").read_text())
    assert report["written_by"] == "client" and report["errors"] == [], report
    assert report["files_checked"] == ENTRIES + 1 and report["files_written"] == 4
    assert report["bytes_written"] == planned["bytes_to_write"] == 4 * 4096
    assert report["deleted"] == 2 and sorted(planned["extras"]) == ["big/zz-extra", "extra"]
    assert len(planned["changes"]) == 7, planned["changes"]  # 4 files, big's time (the damage changed it), 2 deletes
    assert "fix metadata of big" in planned["changes"]
    assert sorted(os.listdir(target)) == ["big", "small"] and len(os.listdir(os.path.join(target, "big"))) == ENTRIES
    with open(os.path.join(target, "big", f"file-{ENTRIES // 3:07d}.dat"), "rb") as f:
        assert f.read() == bytes(4096)
    assert os.stat(os.path.join(target, "big")).st_mtime_ns == mtime  # its metadata set after what it holds
    print(f"{ENTRIES} entries: client peak {small / 1e6:.1f} MB for the delta of 2, {dry / 1e6:.1f} MB for the dry "
          f"run and {mended / 1e6:.1f} MB for the delta of {ENTRIES}")
    for what, peak in (("restore --delta --dry-run", dry), ("restore --delta", mended)):
        assert peak - small < DELTA_GROWTH, (
            f"cairn {what} of {ENTRIES} entries raised the client's peak by {(peak - small) / 1e6:.0f} MB: it held "
            "the manifest")
