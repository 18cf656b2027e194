"""POSIX ACLs (the system.posix_acl_access and _default extended attributes) come back with a
set, also when the client that writes the restore is not root: the owner of a file may set its
ACLs, as `cp -a` and tar do. Through the real daemon and client:

- an access ACL that gives the owner no write permission is set after the file's other xattrs
  (it sets the owner's bits of the mode, and setting user.* needs write access: the file was
  refused, "Permission denied", when the ACL came first);
- a `--delta` by a client that is not root compares ACLs and mends them: one the set does not
  give is removed (a grant to another user the set does not make), one it gives is put back
  (both were left as they were: only user.* was compared)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Callable

import pytest
from cairnd_harness import CAIRN, Daemon, env_for, nobody

ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"


def _acl(owner: int, user: int, group: int, other: int) -> bytes:
    """An ACL naming user 4242 besides the owner, group and others (perms as 0-7)."""
    entries = [(1, owner, 0xFFFFFFFF), (2, user, 4242), (4, group, 0xFFFFFFFF), (0x10, user | group, 0xFFFFFFFF),
               (0x20, other, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _xattrs(path: str) -> dict[str, bytes]:
    return {n: os.getxattr(path, n) for n in sorted(os.listxattr(path))}


def _as_nobody(d: Daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*nobody(), CAIRN, "--socket", d.socket, *args], capture_output=True, text=True,
                          env=env_for(), timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_acls_come_back_and_a_delta_that_is_not_root_mends_them(start_daemon: Callable[..., Daemon],
                                                                rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "shared"))
    for name, acl in (("read-only", _acl(4, 6, 4, 0)), ("plain", None), ("shared/doc", _acl(6, 6, 4, 4))):
        path = os.path.join(src, name)
        with open(path, "w") as f:
            f.write(name + "\n")
        os.setxattr(path, "user.origin", b"the set's")
        if acl is not None:
            os.setxattr(path, ACCESS, acl)  # the mode follows: r-- for the owner of read-only
    os.setxattr(os.path.join(src, "shared"), DEFAULT, _acl(7, 7, 5, 0))
    os.chown(src, 65534, 65534)
    want = {p: _xattrs(os.path.join(src, p)) for p in ("read-only", "plain", "shared", "shared/doc")}
    modes = {p: os.stat(os.path.join(src, p)).st_mode for p in want}
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    os.chmod(d.socket, 0o666)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    target = os.path.join(rundir, "t")
    os.mkdir(target)
    os.chown(target, 65534, 65534)

    r = _as_nobody(d, "restore", set_id, "--target", target, "--stream")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p: _xattrs(os.path.join(target, p)) for p in want} == want
    assert {p: os.stat(os.path.join(target, p)).st_mode for p in want} == modes

    os.setxattr(os.path.join(target, "plain"), ACCESS, _acl(6, 7, 4, 4))  # a grant the set does not make
    os.removexattr(os.path.join(target, "shared", "doc"), ACCESS)
    os.removexattr(os.path.join(target, "shared"), DEFAULT)
    r = _as_nobody(d, "restore", set_id, "--target", target, "--stream", "--delta", "--verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p: _xattrs(os.path.join(target, p)) for p in want} == want
    assert {p: os.stat(os.path.join(target, p)).st_mode for p in want} == modes
