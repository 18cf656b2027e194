"""A backup meets a file its daemon may not read (the daemon runs here as root without the
capabilities that bypass file permissions, so it reaches its own interpreter wherever the
checkout lives, and a file of another user's with mode 0600 is closed to it):
the set is committed without that file, `cairn backup` names it on stderr and the set records
it; the next backup after the file became readable stores it."""

from __future__ import annotations

import json
import os

import pytest
from cairnd_harness import init_repo

UNPRIVILEGED = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop a daemon's capabilities")
def test_a_file_the_daemon_cannot_read_is_named_and_left_out(start_daemon, rundir):
    from pathlib import Path

    src = Path(rundir) / "src"
    src.mkdir()
    (src / "open.txt").write_text("everyone\n")
    (src / "secret.bin").write_bytes(os.urandom(5000))
    os.chown(src / "secret.bin", 65534, 65534)
    os.chmod(src / "secret.bin", 0o600)  # nobody's: the daemon may not read it
    repo = init_repo(os.path.join(rundir, "repo"))
    d = start_daemon("--repo", repo, "--source", str(src), prefix=UNPRIVILEGED)
    r = d.cli("backup", "--level", "full")
    assert r.returncode == 0, r.stderr
    assert f"cairn: warning: unable to read '{src / 'secret.bin'}': Permission denied" in r.stderr
    s = json.loads(d.ok("--json", "sets"))[-1]
    assert s["stats"]["files"] == 1 and s["extra"]["errors"] == [
        f"unable to read '{src / 'secret.bin'}': Permission denied"]
    assert [e["name"] for e in json.loads(d.ok("--json", "ls", s["id"]))] == ["open.txt"]

    os.chmod(src / "secret.bin", 0o644)
    r = d.cli("backup", "--level", "incremental")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    again = json.loads(d.ok("--json", "sets"))[-1]
    assert again["stats"]["files"] == 2 and not again["extra"].get("errors")
