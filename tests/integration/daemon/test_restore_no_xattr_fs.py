"""A restore onto a file system that holds no extended attributes (vfat, exFAT, ramfs, some
network file systems: an external disk at 3 a.m.) restores every entry, without its xattrs,
and says how many it could not set, as tar and cp -a do, also when the daemon writes it. (A
file or directory with a user.* attribute, such as the user.xdg.origin.url a browser leaves,
was "unable to restore ...: Operation not supported" and left out, its content with it.)"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator

import pytest
from cairnd_harness import Daemon


@pytest.fixture
def ramfs(rundir: str) -> Iterator[str]:
    """A ramfs (no extended attributes at all) mounted in the run directory."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    path = os.path.join(rundir, "ramfs")
    os.mkdir(path)
    r = subprocess.run(["mount", "-t", "ramfs", "ramfs", path], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"unable to mount a ramfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def test_entries_with_xattrs_are_restored_onto_a_file_system_without_them(start_daemon: Callable[..., Daemon],
                                                                         rundir: str, ramfs: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "downloads"))
    with open(os.path.join(src, "downloads", "report.pdf"), "wb") as f:
        f.write(b"%PDF the report\n" * 1000)
    os.setxattr(os.path.join(src, "downloads", "report.pdf"), "user.xdg.origin.url", b"https://example.net/r.pdf")
    os.setxattr(os.path.join(src, "downloads"), "user.tag", b"kept elsewhere")
    with open(os.path.join(src, "plain.txt"), "w") as f:
        f.write("plain\n")
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    for route in ((), ("--stream",)):
        target = os.path.join(ramfs, "t" + "".join(route))
        r = d.cli("--json", "restore", set_id, "--target", target, *route)
        assert r.returncode == 0, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["errors"] == [], report
        with open(os.path.join(target, "downloads", "report.pdf"), "rb") as f:
            assert f.read() == b"%PDF the report\n" * 1000
        with open(os.path.join(target, "plain.txt")) as f:
            assert f.read() == "plain\n"
        assert report["xattrs_skipped"] == 2 and report.get("written_by", "client") == ("client" if route
                                                                                     else "daemon"), report
        r = d.cli("restore", set_id, "--target", target + "-text", *route)
        assert "2 extended attributes could not be set" in r.stderr, r.stderr
