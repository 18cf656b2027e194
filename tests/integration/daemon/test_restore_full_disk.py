"""A restore into a file system that fills up, through the real daemon and client: it goes on
past the files that fail (later, smaller ones may fit; --delta finishes the rest once there is
room), exits 1, and prints the first entries it could not write and one line counting the rest
by reason, not a line per entry (--json lists every one), then the way on: with room again, the
hinted `--delta` finishes the tree."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
from cairn.client.render import SHOWN_ENTRY_PROBLEMS
from mounts import mount_tmpfs

FILES = 300  # 32 KiB each: about 9.6 MB into a 4 MiB file system


@pytest.fixture
def daemon(start_daemon, tmp_path):
    src = tmp_path / "src"
    rng = random.Random(11)
    for i in range(FILES):
        d = src / f"d{i // 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03d}").write_bytes(rng.randbytes(32 * 1024))
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    d.src = src
    d.ok("backup", "--level", "full")
    return d


@pytest.mark.parametrize("how", ["daemon", "stream"])
def test_a_restore_onto_a_full_disk_says_so_in_a_few_lines(daemon, tmp_path, how):
    small = tmp_path / "small"
    small.mkdir()
    mount_tmpfs(str(small))
    try:
        extra = ["--stream"] if how == "stream" else []
        r = daemon.cli("restore", "latest", "--target", str(small / "t"), *extra)
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) <= SHOWN_ENTRY_PROBLEMS + 4, r.stderr[-2000:]
        assert sum("No space left on device" in line for line in lines[:SHOWN_ENTRY_PROBLEMS]) >= 1
        counted = [line for line in lines if "more entries could not be restored: No space left on device" in line]
        assert len(counted) == 1 and "--json lists every one" in counted[0], r.stderr
        assert lines[-2].startswith("cairn: error: ") and "entries could not be restored" in lines[-2]
        assert lines[-1] == ("hint: make room on the target's file system, then run the same restore again with "
                             "--delta: it writes only what is missing")
        total = int(lines[-2].split("cairn: error: ")[1].split()[0])
        assert int(counted[0].split("cairn: warning: ")[1].split()[0]) == total - SHOWN_ENTRY_PROBLEMS
        written = [os.path.join(dp, f) for dp, _, fs in os.walk(small / "t") for f in fs]
        assert written and len(written) + total >= FILES  # every file is restored or named
        for path in written:  # none is left partial
            rel = os.path.relpath(path, small / "t")
            assert open(path, "rb").read() == (daemon.src / rel).read_bytes(), rel
        subprocess.run(["rm", "-rf", str(small / "t")], check=True)
        r = daemon.cli("--json", "restore", "latest", "--target", str(small / "t"), *extra)
        doc = json.loads(r.stdout)
        assert r.returncode == 1 and len(doc["errors"]) > SHOWN_ENTRY_PROBLEMS  # --json names every one
        (line,) = r.stderr.splitlines()  # with --json, stderr holds only the error object
        assert json.loads(line)["error"]["hint"].startswith("make room on the target's file system")
        r = daemon.cli("--json", "restore", "latest", "--target", str(small / "t"), "--delta", *extra)
        assert r.returncode == 1 and json.loads(r.stdout)["errors"], r.stdout + r.stderr  # still no room
        (line,) = r.stderr.splitlines()
        assert "run the same delta again" in json.loads(line)["error"]["hint"]
        # with room again, the hint's command finishes the tree
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        daemon.ok("restore", "latest", "--target", str(small / "t"), "--delta", *extra)
        for dp, _, fs in os.walk(daemon.src):
            for f in fs:
                rel = os.path.relpath(os.path.join(dp, f), daemon.src)
                assert (small / "t" / rel).read_bytes() == (daemon.src / rel).read_bytes(), rel
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _one_too_large(start_daemon, tmp_path, big: int, smalls: int, small_size: int, seed: int):
    """A daemon with a full set of one file of `big` bytes ('a-big.bin', first in the stream)
    and `smalls` files of `small_size` after it; a 4 MiB tmpfs at tmp_path/small (unmounted by
    the caller). Returns (daemon, source, tmpfs)."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(seed)
    (src / "a-big.bin").write_bytes(rng.randbytes(big))
    for i in range(smalls):
        (src / f"b{i:02d}").write_bytes(rng.randbytes(small_size))
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    d.ok("backup", "--level", "full")
    small = tmp_path / "small"
    small.mkdir()
    mount_tmpfs(str(small))
    return d, src, small


def _only_the_big_one_failed(r, src, target, smalls: int, racing: int = 0) -> None:
    """The big file failed; of the small ones at most `racing` did (written by another worker
    in the instant the disk filled, before the big one's room was let go); the rest are whole."""
    assert r.returncode == 1, r.stdout + r.stderr
    failed = [e for e in json.loads(r.stdout).get("errors", []) if "unable to restore" in e]
    assert any("'a-big.bin'" in e for e in failed) and len(failed) <= 1 + racing, failed
    for i in range(smalls):
        if not any(f"'b{i:02d}'" in e for e in failed):
            assert (target / f"b{i:02d}").read_bytes() == (src / f"b{i:02d}").read_bytes()


@pytest.mark.parametrize("how", ["daemon", "stream"])
def test_a_delta_that_cannot_fit_one_file_still_writes_the_others(start_daemon, tmp_path, how):
    """A new file too large for the room left fails, and its partial temporary file goes at
    once: the smaller files after it still fit (they all failed, each delta alike, so the
    hinted rerun never made progress)."""
    d, src, small = _one_too_large(start_daemon, tmp_path, 6 << 20, 20, 32 * 1024, 5)  # 6 MiB > 4 MiB
    try:
        (small / "t").mkdir()
        extra = ["--stream"] if how == "stream" else []
        r = d.cli("--json", "restore", "latest", "--target", str(small / "t"), "--delta", *extra, timeout=120)
        _only_the_big_one_failed(r, src, small / "t", 20)
        assert not (small / "t" / "a-big.bin").exists()
        leftovers = [n for n in os.listdir(small / "t") if n not in {f"b{i:02d}" for i in range(20)}]
        assert leftovers == [], leftovers  # no temporary file holds the room
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.parametrize("how", ["daemon", "stream"])
def test_a_file_too_large_for_the_room_left_does_not_take_the_others_down(start_daemon, tmp_path, how):
    """A plain restore: the large file that fills the disk fails, and what it had written is let
    go at once, so the small files the stream brings while it is still being passed fit."""
    # 24 MiB: a lane, written while the small files come
    d, src, small = _one_too_large(start_daemon, tmp_path, 24 << 20, 40, 16 * 1024, 6)
    try:
        extra = ["--stream"] if how == "stream" else []
        r = d.cli("--json", "restore", "latest", "--target", str(small / "t"), *extra, timeout=120)
        _only_the_big_one_failed(r, src, small / "t", 40, racing=3)  # without the fix: 32 of 40 failed
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
