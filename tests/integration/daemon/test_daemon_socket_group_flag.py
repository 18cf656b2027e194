"""`cairnd --socket-group GROUP` without a config file: the socket (and the directory the daemon
made for it) is given to that group, as `[daemon] socket_group` does, so a database's OS user
can run `cairn wal-fetch` against a recovery daemon (docs/disaster-recovery.md). An unknown
group stops the daemon at start with one line; `--init` refuses the option."""

from __future__ import annotations

import grp
import os
import stat
import subprocess

from cairnd_harness import CAIRND, env_for, init_repo


def _group() -> grp.struct_group:
    """A group other than root's when there is one (postgres on the test machines)."""
    for name in ("postgres", "nogroup", "daemon"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    return grp.getgrgid(os.getgid())


def test_socket_group_flag_gives_the_socket_to_the_group(tmp_path, rundir, start_daemon):
    repo = init_repo(str(tmp_path / "repo"))
    group = _group()
    sock = os.path.join(rundir, "rr", "c.sock")
    d = start_daemon("--repo", repo, "--read-only", "--socket", sock, "--socket-group", group.gr_name, socket_path=sock,
                     home=str(tmp_path / "home"))
    st = os.stat(sock)
    assert st.st_gid == group.gr_gid and stat.S_IMODE(st.st_mode) == 0o660
    parent = os.stat(os.path.dirname(sock))
    assert parent.st_gid == group.gr_gid and parent.st_mode & 0o010
    d.ok("status")


def test_unknown_socket_group_flag_stops_the_daemon(tmp_path, rundir):
    repo = init_repo(str(tmp_path / "repo"))
    r = subprocess.run([CAIRND, "--repo", repo, "--read-only", "--socket", os.path.join(rundir, "s.sock"),
                        "--socket-group", "no-such-group-cairn"], capture_output=True, text=True, env=env_for(),
                       timeout=60)
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.startswith("cairnd: error:")]
    assert len(lines) == 1 and "no-such-group-cairn" in lines[0], r.stderr
    assert not os.path.exists(os.path.join(rundir, "s.sock"))


def test_init_refuses_the_socket_group_flag(tmp_path):
    r = subprocess.run([CAIRND, "--repo", str(tmp_path / "repo"), "--init", "--no-encryption",
                        "--socket-group", "postgres"], capture_output=True, text=True, env=env_for(), timeout=60)
    assert r.returncode == 2 and "--socket-group does not go with it" in r.stderr
    assert not os.path.exists(tmp_path / "repo")
