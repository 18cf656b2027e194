"""A client that is not root mends, with `--delta`, a tree whose directories its owner may not
write (0555, as a set's read-only directories come back, a module cache's say): a missing file
is made in such a directory, a file of the wrong kind replaced and an extra removed, and each
directory ends with the set's mode. (Such a delta failed: "unable to restore 'ro/g':
Permission denied", while root, and the plain restore that made the tree, had no trouble.)"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable

import pytest
from cairnd_harness import CAIRN, Daemon, env_for, nobody, snapshot


def _as_nobody(d: Daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*nobody(), CAIRN, "--socket", d.socket, *args], capture_output=True, text=True,
                          env=env_for(), timeout=60)


def _chmod_tree(root: str, mode_of: Callable[[str], int]) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -w[0].count("/")):
        os.chmod(dirpath, mode_of(dirpath))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_a_delta_that_is_not_root_writes_in_read_only_directories(start_daemon: Callable[..., Daemon],
                                                                  rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "ro", "inner"))
    for rel, body in (("ro/inner/f", b"f" * 5000), ("ro/g", b"g" * 7000), ("ro/h", b"h")):
        with open(os.path.join(src, rel), "wb") as f:
            f.write(body)
    os.chmod(os.path.join(src, "ro", "inner"), 0o555)
    os.chmod(os.path.join(src, "ro"), 0o555)
    os.chown(src, 65534, 65534)  # the source root's owner comes back onto the target: nobody's
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    os.chmod(d.socket, 0o666)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    want = snapshot(src)
    target = os.path.join(rundir, "t")
    os.mkdir(target)
    os.chown(target, 65534, 65534)
    r = _as_nobody(d, "restore", set_id, "--target", target, "--stream")
    assert r.returncode == 0, r.stderr
    assert snapshot(target) == {k: (*v[:2], 65534, 65534, *v[4:]) if v[0] != "symlink" else v
                                for k, v in want.items()}

    # the damage, made by its owner: a file gone, one made a directory, an extra in a 0555 directory
    _chmod_tree(target, lambda p: 0o755)
    os.unlink(os.path.join(target, "ro", "g"))
    os.unlink(os.path.join(target, "ro", "h"))
    os.mkdir(os.path.join(target, "ro", "h"))
    with open(os.path.join(target, "ro", "inner", "extra"), "w") as f:
        f.write("not the set's\n")
    # an extra tree whose directories are read-only too: --delete removes it all
    xtra = os.path.join(target, "ro", "xtra")
    os.makedirs(os.path.join(xtra, "deep", "er"))
    for rel in ("x", "deep/y", "deep/er/z"):
        with open(os.path.join(xtra, rel), "w") as f:
            f.write("not the set's either\n")
    _chmod_tree(target, lambda p: 0o555 if p != target else 0o755)
    for p in (os.path.join(target, "ro"), os.path.join(target, "ro", "h"), os.path.join(target, "ro", "inner")):
        os.chown(p, 65534, 65534)
    os.chown(os.path.join(target, "ro", "inner", "extra"), 65534, 65534)
    for top, dirs, files in os.walk(xtra):
        for name in [*dirs, *files, ""]:
            os.chown(os.path.join(top, name) if name else top, 65534, 65534)

    r = _as_nobody(d, "restore", set_id, "--target", target, "--delta", "--delete", "--stream", "--verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert snapshot(target) == {k: (*v[:2], 65534, 65534, *v[4:]) for k, v in want.items()}
    assert stat.S_IMODE(os.stat(os.path.join(target, "ro")).st_mode) == 0o555
