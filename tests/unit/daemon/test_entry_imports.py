"""`cairnd --init` and a refused configuration load none of the daemon's rooms (daemon/runtime/main.py).

Each case runs the real entry point in a fresh interpreter and then lists what it imported: the
running daemon's parts (gRPC, the change journal, the services) are more than half of a start's
CPU, and a command that only creates a repository or only reports a bad argument must not pay
for them. The last case shows the check sees those imports when the daemon does run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOMS = ("cairn.daemon.runtime.process", "cairn.daemon.rpc.server", "cairn.daemon.changes.tracker",
         "cairn.daemon.operations.service", "grpc", "watchdog", "prometheus_client")

PROBE = """
import json, os, sys
from cairn.daemon.runtime import main
code = main.main(sys.argv[1:])
os.write(3, json.dumps({"code": code, "modules": sorted(sys.modules)}).encode())
"""

PROBE_RUN = """
import json, os, sys, signal, threading
from cairn.daemon.runtime import main
guard = threading.Timer(20, lambda: os.kill(os.getpid(), signal.SIGTERM))  # a daemon that never serves
guard.daemon = True
guard.start()
def ready():
    while not os.path.exists(sys.argv[sys.argv.index("--socket") + 1]):
        threading.Event().wait(0.02)
    os.write(3, json.dumps({"modules": sorted(sys.modules)}).encode())
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=ready, daemon=True).start()
main.main(sys.argv[1:])
"""


def probe(tmp_path: Path, source: str, *args: str) -> dict:
    """Run `source` with fd 3 as the report pipe."""
    r, w = os.pipe()
    wrapper = f"import os\nos.dup2({w}, 3)\n" + source
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *args], pass_fds=(w,), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CAIRN_HOME": str(tmp_path / "home")})
    os.close(w)
    out, err = proc.communicate(timeout=60)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    assert data, (out.decode(), err.decode())
    return json.loads(data)


def loaded(report: dict) -> list[str]:
    return [m for m in ROOMS if m in report["modules"]]


def test_init_loads_none_of_the_rooms(tmp_path: Path) -> None:
    report = probe(tmp_path, PROBE, "--repo", str(tmp_path / "repo"), "--init", "--no-encryption")
    assert report["code"] == 0 and (tmp_path / "repo" / "config").is_dir()
    assert loaded(report) == []


def test_a_refused_configuration_loads_none_of_the_rooms(tmp_path: Path) -> None:
    config = tmp_path / "cairnd.toml"
    config.write_text(f'[repository]\npath = "{tmp_path}/repo"\nbogus = 1\n')
    report = probe(tmp_path, PROBE, "--config", str(config))
    assert report["code"] == 1
    assert loaded(report) == []


def test_a_running_daemon_loads_them(tmp_path: Path) -> None:
    assert probe(tmp_path, PROBE, "--repo", str(tmp_path / "repo"), "--init", "--no-encryption")["code"] == 0
    report = probe(tmp_path, PROBE_RUN, "--repo", str(tmp_path / "repo"), "--socket", str(tmp_path / "s.sock"))
    assert set(loaded(report)) >= {"cairn.daemon.runtime.process", "cairn.daemon.rpc.server", "grpc"}
