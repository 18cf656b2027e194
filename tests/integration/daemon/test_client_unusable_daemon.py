"""A daemon the client reaches but cannot use is named for what it is, in one line: a socket this
user may not connect to."""

from __future__ import annotations

import os
import subprocess

import pytest
from cairnd_harness import CAIRN, env_for, write_config

# Another user, able to read (and run) the client wherever it is installed, nothing more.
NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
          "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_a_socket_this_user_may_not_use_is_permission_denied_not_nothing_listens(start_daemon, rundir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairnd.toml"), str(tmp_path / "repo"), sock, {"app": str(src)},
                          socket_mode="0600")
    daemon = start_daemon("--config", config, socket_path=sock)
    r = subprocess.run([*NOBODY, CAIRN, "--socket", sock, "sets"], capture_output=True, text=True, timeout=30,
                       env=env_for())
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    first, hint = r.stderr.splitlines()
    assert first.startswith(f"cairn: error: unable to reach cairnd at unix socket '{sock}': Permission denied"), first
    assert "mode 0600" in first and "this user is nobody" in first and "nothing listens" not in first, first
    assert hint.startswith("hint: ") and "socket_group" in hint, hint
    daemon.ok("sets")  # the daemon serves on, and its own user reaches it
