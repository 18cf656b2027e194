"""The source directory's own metadata comes back with the set, through the real daemon and
client: a one-path source's directory (mode, owner, mtime, xattrs) onto the restore target,
daemon-written and streamed, and mended by --delta; with several paths each path's directory
keeps its xattrs too. (It once came back as a fresh 0755 root-owned directory.)"""

from __future__ import annotations

import json
import os

from cairnd_harness import write_config


def _meta(path) -> tuple:
    st = os.stat(path)
    xattrs = {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.")}
    return st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs


def _prepare(d) -> None:
    os.makedirs(d)
    with open(os.path.join(d, "f.txt"), "w") as f:
        f.write("data\n")
    os.chmod(d, 0o750)
    os.chown(d, 1234, 5678)
    os.setxattr(d, "user.label", b"app data")
    os.utime(d, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def test_a_one_path_sources_directory_comes_back_onto_the_target(start_daemon, rundir, tmp_path) -> None:
    src = os.path.join(rundir, "src")
    _prepare(src)
    want = _meta(src)
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    for extra in ((), ("--stream",)):
        target = os.path.join(rundir, f"t{len(extra)}")
        d.ok("restore", set_id, "--target", target, *extra)
        assert _meta(target) == want, extra
    target = os.path.join(rundir, "t0")
    os.chmod(target, 0o777)
    os.removexattr(target, "user.label")
    out = d.ok("restore", set_id, "--target", target, "--delta", "--verify")
    assert "verified" in out and _meta(target) == want
    sub = os.path.join(rundir, "part")
    d.ok("restore", set_id, "--target", sub, "f.txt")  # a path of the set: the target is not the root
    assert _meta(sub)[0] != 0o750 and "user.label" not in _meta(sub)[4]


def test_several_paths_keep_each_directorys_xattrs(start_daemon, rundir, tmp_path) -> None:
    one, two = os.path.join(rundir, "one"), os.path.join(rundir, "two")
    _prepare(one)
    _prepare(two)
    os.setxattr(two, "user.label", b"second")
    sock = os.path.join(rundir, "c.sock")
    config = write_config(str(tmp_path / "c.toml"), os.path.join(rundir, "repo"), sock, {"app": one})
    text = open(config).read().replace(f'paths = ["{one}"]', f'paths = ["{one}", "{two}"]')
    open(config, "w").write(text)
    d = start_daemon("--config", config, socket_path=sock)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    target = os.path.join(rundir, "t")
    d.ok("restore", set_id, "--target", target)
    assert _meta(os.path.join(target, "one")) == _meta(one)
    assert _meta(os.path.join(target, "two")) == _meta(two)
