"""What a short `cairn` command imports: every command starts an interpreter, and its imports are
most of a quick one's time (a `restore --delta --quick` the daemon runs, `status`, and every
WAL file recovery asks for). A delta the daemon runs needs neither the client's own delta code
(fsio/delta.py, blake3) nor the restore records; a plain restore written by the daemon needs
no tree writer. The last case shows the check sees them where the client does need them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cairnd_harness import CAIRN, env_for

# only a delta or a restore that this client writes needs these
CLIENT_WRITING = ("cairn.fsio.delta", "cairn.fsio.records", "cairn.fsio.writer", "blake3", "secrets")

PROBE = """
import json, os, sys
from cairn.client import cli
code = cli.main(sys.argv[1:])
sys.stdout.flush()
os.write(3, json.dumps({"code": code, "modules": sorted(sys.modules)}).encode())
"""


def client_modules(*args: str) -> tuple[int, set[str]]:
    """Run the real client's main in a fresh interpreter; its exit code and the modules it loaded."""
    r, w = os.pipe()
    wrapper = f"import os\nos.dup2({w}, 3)\n" + PROBE
    assert os.path.exists(CAIRN)
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *args], pass_fds=(w,), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env_for())
    os.close(w)
    out, err = proc.communicate(timeout=60)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    assert data, (out.decode(), err.decode())
    report = json.loads(data)
    return report["code"], set(report["modules"])


def test_daemon_run_restores_and_status_load_no_client_side_writer(start_daemon, rundir: str) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "d"))
    for i in range(5):
        with open(os.path.join(src, "d", f"f{i}"), "wb") as f:
            f.write(os.urandom(5000))
    d = start_daemon("--repo", os.path.join(rundir, "repo"), "--source", src)
    set_id = json.loads(d.ok("--json", "backup", "--level", "full"))["id"]
    target = os.path.join(rundir, "t")
    sock = ["--socket", d.socket]

    code, mods = client_modules(*sock, "restore", set_id, "--target", target)  # written by the daemon
    assert code == 0 and sorted(os.listdir(os.path.join(target, "d"))) == [f"f{i}" for i in range(5)]
    assert not mods & set(CLIENT_WRITING), sorted(mods & set(CLIENT_WRITING))
    os.truncate(os.path.join(target, "d", "f3"), 10)
    code, mods = client_modules(*sock, "restore", set_id, "--target", target, "--delta", "--quick")
    assert code == 0
    with open(os.path.join(target, "d", "f3"), "rb") as f, open(os.path.join(src, "d", "f3"), "rb") as g:
        assert f.read() == g.read()  # the daemon mended it
    assert not mods & set(CLIENT_WRITING), sorted(mods & set(CLIENT_WRITING))
    code, mods = client_modules(*sock, "status")
    assert code == 0 and not mods & set(CLIENT_WRITING), sorted(mods & set(CLIENT_WRITING))

    # where this client does write (a streamed delta), it loads them: the check sees them
    os.truncate(os.path.join(target, "d", "f1"), 10)
    code, mods = client_modules(*sock, "restore", set_id, "--target", target, "--delta", "--stream")
    assert code == 0 and {"cairn.fsio.delta", "cairn.fsio.records"} <= mods
