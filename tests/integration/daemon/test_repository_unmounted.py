"""The repository's file system goes away under a running daemon (unmounted: a bare mount point
is left): backups and listings fail with one line that says so, nothing is written onto the
bare directory (no new config-less repository fills the root file system), and once the file
system is back the next backup succeeds against the sets that were there."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import pytest
from cairnd_harness import CAIRND, Daemon, env_for, init_repo


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_an_unmounted_repository_is_named_and_never_recreated(start_daemon: Callable[..., Daemon],
                                                                rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(src)
    with open(os.path.join(src, "a.txt"), "w") as f:
        f.write("a\n")
    disk, mnt = os.path.join(rundir, "disk"), os.path.join(rundir, "mnt")
    os.makedirs(mnt)
    init_repo(disk)
    r = subprocess.run(["mount", "--bind", disk, mnt], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"unable to bind-mount: {r.stderr.strip()}")
    mounted = True
    try:
        d = start_daemon("--repo", mnt, "--source", src)
        first = json.loads(d.ok("--json", "backup", "--level", "full"))
        subprocess.run(["umount", "-l", mnt], check=True)
        mounted = False
        for args in (("backup", "--level", "incremental"), ("sets",)):
            out = d.cli(*args)
            assert out.returncode != 0, (args, out.stdout)
            assert "holds no repository config (is its file system mounted?)" in out.stderr, (args, out.stderr)
            assert "Traceback" not in out.stderr
        assert os.listdir(mnt) == []  # nothing written onto the bare mount point
        # a daemon started meanwhile (a reboot before the disk is back) says so as well
        r = subprocess.run([CAIRND, "--repo", mnt, "--source", src, "--socket", os.path.join(rundir, "other.sock")],
                           capture_output=True, text=True, timeout=60, env=env_for({"CAIRN_HOME": rundir + "/h2"}))
        assert r.returncode == 1 and "is an empty directory, not a repository (if the repository's file system " \
            "is not mounted there, mount it)" in r.stderr, r.stderr
        assert os.listdir(mnt) == []
        subprocess.run(["mount", "--bind", disk, mnt], check=True)
        mounted = True
        again = json.loads(d.ok("--json", "backup", "--level", "incremental"))
        assert again["level"] == "incremental" and again["base"] == first["id"]
        assert [s["id"] for s in json.loads(d.ok("--json", "sets"))] == [first["id"], again["id"]]
    finally:
        if mounted:
            subprocess.run(["umount", "-l", mnt], check=False)
