"""A window whose state directory fills up (a real 1 MiB tmpfs, real hooks): when the record
cannot be rewritten before a further level, the levels that began thaw before the error
propagates and the record is gone; when it cannot be written at all, nothing freezes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cairn.daemon.windows.quiesce import Hook, Window
from cairn.daemon.windows.records import list_record_paths
from cairn.errors import FailedPreconditionError

FULL = r"unable to write window record '.*app\.json': No space left on device"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (skipped where nothing can be mounted)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"unable to mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def hook(script: str) -> Hook:
    return Hook(("sh", "-c", script), timeout=20)


def lines(p: Path) -> list[str]:
    return p.read_text().split() if p.exists() else []


def test_a_record_that_cannot_be_rewritten_mid_freeze_thaws_the_levels_that_began(tmp_path: Path,
                                                                                  small_fs: Path) -> None:
    log, state, fill = tmp_path / "log", str(small_fs / "state"), small_fs / "fill"
    # level 1's freeze fills the state directory's file system: level 2's record cannot be written
    levels = [([hook(f'head -c 4M /dev/zero > "{fill}" 2>/dev/null; echo f1 >> "{log}"')],
               [hook(f'echo t1 >> "{log}"')]),
              ([hook(f'echo f2 >> "{log}"')], [hook(f'echo t2 >> "{log}"')])]
    w = Window(state, "app", "cold", levels=levels)
    with pytest.raises(FailedPreconditionError, match=FULL):
        with w:
            pytest.fail("the body must not run")
    assert lines(log) == ["f1", "t1"]  # level 2 never began: only level 1 thawed
    assert w.thawed and w.started_levels == 1 and list_record_paths(state) == []

    # full (the room the record freed is taken too): the first record cannot be written, so
    # nothing freezes and nothing is left
    fd = os.open(fill, os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    ok = [([hook(f'echo f3 >> "{log}"')], [hook(f'echo t3 >> "{log}"')])]
    with pytest.raises(FailedPreconditionError, match=FULL):
        with Window(state, "app", "cold", levels=ok):
            pytest.fail("the body must not run")
    assert lines(log) == ["f1", "t1"] and list_record_paths(state) == []

    fill.unlink()  # room again: the next window works
    with Window(state, "app", "cold", levels=ok):
        assert len(list_record_paths(state)) == 1
    assert lines(log) == ["f1", "t1", "f3", "t3"] and list_record_paths(state) == []
