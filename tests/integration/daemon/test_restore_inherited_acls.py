"""A restore gives each entry the set's extended attributes and no others, also where the
kernel would add some: an entry made in a directory with a default ACL inherits an access ACL
(and a directory the default ACL too), a grant the set does not make. Through the real daemon
and client: into a new target below a directory with a default ACL (the target inherits it,
then everything made in it), written by the daemon and streamed, and with `--overwrite` into a
tree whose directories have one. (Every restored file came back readable by the user the
default ACL named.)"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable

import pytest
from cairnd_harness import Daemon

ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
GRANT = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in (
    (1, 7, 0xFFFFFFFF), (2, 7, 4242), (4, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)))


def _tree(root: str) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, {n: os.getxattr(path, n, follow_symlinks=False)
                                                            for n in os.listxattr(path, follow_symlinks=False)})
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* attributes need root")
def test_entries_do_not_keep_acls_inherited_from_the_target(start_daemon: Callable[..., Daemon],
                                                            rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "d", "deeper"))
    for rel in ("f", "d/g", "d/deeper/h"):
        with open(os.path.join(src, rel), "w") as f:
            f.write(rel + "\n")
    os.mkfifo(os.path.join(src, "d", "pipe"), 0o640)
    os.setxattr(os.path.join(src, "d", "g"), "user.kept", b"the set's")
    want = _tree(src)
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    shared = os.path.join(rundir, "shared")
    os.mkdir(shared)
    os.setxattr(shared, DEFAULT, GRANT)

    for route in ((), ("--stream",)):
        target = os.path.join(shared, "t" + "".join(route))
        out = d.ok("restore", set_id, "--target", target, *route)
        assert _tree(target) == want, out
        assert DEFAULT not in os.listxattr(target)  # the set's root has none: the target gets its metadata

    target = os.path.join(rundir, "over")
    d.ok("restore", set_id, "--target", target)
    for rel in ("", "d", "d/deeper"):
        os.setxattr(os.path.join(target, rel), DEFAULT, GRANT)
    os.unlink(os.path.join(target, "d", "g"))
    os.unlink(os.path.join(target, "d", "pipe"))
    d.ok("restore", set_id, "--target", target, "--overwrite")
    assert _tree(target) == want
