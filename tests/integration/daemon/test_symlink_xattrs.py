"""Extended attributes of a symlink (trusted.* and security.* ones: user.* cannot be set on a
link; an SELinux label is one) are kept by a set, and every restore puts them back on the link
itself, never on what it points to: written by the daemon, streamed, mended by --delta, which
also finds a link that lacks them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from cairnd_harness import Daemon

XATTRS = {"trusted.app": b"on the link", "security.label": b"system_u:object_r:etc_t:s0"}


def _link_xattrs(path: str) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* attributes need root")
def test_a_symlinks_own_xattrs_come_back_on_the_link(start_daemon: Callable[..., Daemon], rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    with open(os.path.join(src, "target.txt"), "w") as f:
        f.write("the file the link names\n")
    link = os.path.join(src, "link")
    os.symlink("target.txt", link)
    for name, value in XATTRS.items():
        os.setxattr(link, name, value, follow_symlinks=False)
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]

    for how in ((), ("--stream",)):
        target = os.path.join(rundir, "plain" + "".join(how))
        d.ok("restore", set_id, "--target", target, *how)
        assert _link_xattrs(os.path.join(target, "link")) == XATTRS, how
        assert _link_xattrs(os.path.join(target, "target.txt")) == {}, how  # not through the link

    for how in ((), ("--stream",)):
        target = os.path.join(rundir, "delta" + "".join(how))
        d.ok("restore", set_id, "--target", target)
        os.removexattr(os.path.join(target, "link"), "trusted.app", follow_symlinks=False)
        os.setxattr(os.path.join(target, "link"), "trusted.stray", b"not in the set", follow_symlinks=False)
        dry = d.ok("restore", set_id, "--target", target, "--delta", "--dry-run", *how)
        assert "would fix metadata of link" in dry, dry
        d.ok("restore", set_id, "--target", target, "--delta", *how)
        assert _link_xattrs(os.path.join(target, "link")) == XATTRS, how
        again = d.ok("restore", set_id, "--target", target, "--delta", "--dry-run", *how)
        assert "0 changes" in again, again
