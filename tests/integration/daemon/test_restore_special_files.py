"""FIFOs and device nodes come back with their metadata through the real daemon and client, and
`--delta` mends it like a file's: an xattr the target's FIFO or device has and the set does not
is removed (it was kept, so a delta that reported the entry fixed left it differing and
`--verify` failed)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable

import pytest
from cairnd_harness import Daemon


def _meta(path: str) -> tuple:
    st = os.lstat(path)
    xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}
    return stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_rdev, xattrs


@pytest.mark.skipif(os.geteuid() != 0, reason="device nodes, owners and trusted.* attributes need root")
def test_a_delta_removes_xattrs_the_set_does_not_give_a_fifo_or_device(start_daemon: Callable[..., Daemon],
                                                                      rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    os.mkfifo(os.path.join(src, "pipe"), 0o640)
    os.mknod(os.path.join(src, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(os.path.join(src, "loop"), stat.S_IFBLK | 0o660, os.makedev(7, 200))
    for name in ("pipe", "null", "loop"):
        path = os.path.join(src, name)
        os.chown(path, 4242, 123456)
        os.setxattr(path, "trusted.kept", b"the set's", follow_symlinks=False)
        os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789), follow_symlinks=False)
    want = {name: _meta(os.path.join(src, name)) for name in ("pipe", "null", "loop")}
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]

    for how in ((), ("--stream",)):
        target = os.path.join(rundir, "t" + "".join(how))
        d.ok("restore", set_id, "--target", target, *how)
        assert {name: _meta(os.path.join(target, name)) for name in want} == want, how
        for name in want:
            os.setxattr(os.path.join(target, name), "trusted.stray", b"not the set's", follow_symlinks=False)
        dry = d.ok("restore", set_id, "--target", target, "--delta", "--dry-run", *how)
        assert all(f"would fix metadata of {name}" in dry for name in want), dry
        out = d.ok("restore", set_id, "--target", target, "--delta", "--verify", *how)
        assert "verified" in out, out
        assert {name: _meta(os.path.join(target, name)) for name in want} == want, how
