"""One daemon per repository and per state directory (real processes), and a private state directory.

A second cairnd on the same repository or the same state directory exits 1 with one line and
leaves the first serving; kill -9 of the first frees both for a new daemon. The state
directory is 0700 and the change journal with its -wal/-shm files 0600, whatever the umask.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess

from cairnd_harness import CAIRND, env_for, init_repo

UMASK_000 = ("sh", "-c", 'umask 000; exec "$0" "$@"')


def _second(rundir: str, *args: str, home: str) -> subprocess.CompletedProcess:
    sock = os.path.join(rundir, "second.sock")
    return subprocess.run([CAIRND, *args, "--socket", sock], capture_output=True, text=True, timeout=30,
                          env=env_for({"CAIRN_HOME": home}))


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _src(tmp_path) -> str:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text("a\n")
    return str(src)


def test_second_daemon_on_the_same_repository_is_refused(start_daemon, rundir, tmp_path):
    repo, src = str(tmp_path / "repo"), _src(tmp_path)
    first = start_daemon("--repo", repo, "--source", src)
    first.ok("backup", "--level", "full")
    entries = sorted(os.listdir(repo))

    r = _second(rundir, "--repo", repo, "--source", src, home=str(tmp_path / "other-home"))
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert line.startswith(f"cairnd: error: repository '{repo}' is in use by another cairnd")
    assert not os.path.exists(os.path.join(rundir, "second.sock"))
    # A read-only daemon would read an index the writer's prune can make stale: refused too.
    r = _second(rundir, "--repo", repo, "--read-only", home=str(tmp_path / "ro-home"))
    assert r.returncode == 1 and "is in use by another cairnd" in _one_line(r.stderr)

    assert first.alive and sorted(os.listdir(repo)) == entries
    first.ok("backup")
    assert len(json.loads(first.ok("--json", "sets"))) == 2


def test_second_daemon_on_the_same_state_directory_is_refused(start_daemon, rundir, tmp_path):
    home, src = str(tmp_path / "home"), _src(tmp_path)
    first = start_daemon("--repo", str(tmp_path / "repo"), "--source", src, home=home)
    journal = os.path.join(home, "journal.sqlite")
    assert os.path.exists(journal)
    before = os.stat(journal).st_mtime_ns

    other_repo = init_repo(str(tmp_path / "repo2"))
    other_entries = sorted(os.listdir(other_repo))
    r = _second(rundir, "--repo", other_repo, "--source", src, home=home)
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert line.startswith(f"cairnd: error: state directory '{home}' is in use by another cairnd "
                           f"(pid {first.proc.pid})")
    assert sorted(os.listdir(other_repo)) == other_entries  # refused before it touched anything
    assert os.stat(journal).st_mtime_ns == before
    assert first.alive
    first.ok("backup", "--level", "full")


def test_kill_9_frees_the_repository_and_the_state_directory(start_daemon, tmp_path):
    repo, home, src = str(tmp_path / "repo"), str(tmp_path / "home"), _src(tmp_path)
    first = start_daemon("--repo", repo, "--source", src, home=home)
    first.ok("backup", "--level", "full")
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(10) == -signal.SIGKILL

    again = start_daemon("--repo", repo, "--source", src, home=home)
    again.ok("backup")
    assert len(json.loads(again.ok("--json", "sets"))) == 2


def test_read_only_daemons_may_share_a_repository(start_daemon, tmp_path):
    repo, src = str(tmp_path / "repo"), _src(tmp_path)
    writer = start_daemon("--repo", repo, "--source", src)
    writer.ok("backup", "--level", "full")
    assert writer.terminate(timeout=30)[0] == 0
    a = start_daemon("--repo", repo, "--read-only", home=str(tmp_path / "a"))
    b = start_daemon("--repo", repo, "--read-only", home=str(tmp_path / "b"))
    assert json.loads(a.ok("--json", "sets")) == json.loads(b.ok("--json", "sets")) != []


def test_state_directory_and_journal_are_private_whatever_the_umask(start_daemon, tmp_path):
    home = str(tmp_path / "state")
    daemon = start_daemon("--repo", str(tmp_path / "repo"), "--source", _src(tmp_path), home=home,
                          prefix=UMASK_000)
    (tmp_path / "src" / "b.txt").write_text("b\n")
    daemon.ok("backup", "--level", "full")  # the journal has recorded and committed
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    journal = os.path.join(home, "journal.sqlite")
    files = [journal, journal + "-wal", journal + "-shm", os.path.join(home, "cairnd.lock")]
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
