"""systemd's stop timeout never cuts a stop short: with SIGTERM the real daemon tells systemd
(EXTEND_TIMEOUT_USEC beside STOPPING=1) how long its stop may take, `daemon.shutdown_timeout`
and every thaw hook at its timeout included, so a configuration whose bound is longer than the
unit's TimeoutStopSec (3 min) is not killed while it thaws an application's window."""

from __future__ import annotations

import json
import os
import signal

from cairnd_harness import write_config


def test_sigterm_extends_systemds_stop_timeout_to_the_stops_bound(start_daemon, rundir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)},
                          shutdown_timeout="150s")
    with open(config, "a", encoding="utf-8") as f:
        thaw = json.dumps(["true"])
        f.write(f'quiesce = {{ mode = "cold", freeze = ["true"], thaw = {thaw}, timeout = "90s" }}\n')
    d = start_daemon("--config", config, socket_path=sock)
    before = d.notify.count()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0, d.log()
    assert d.notify.wait_for("STOPPING=1", 5, after=before), d.notify.messages
    extend = [m for m in d.notify.messages[before:] if m.startswith("EXTEND_TIMEOUT_USEC=")]
    assert extend, d.notify.messages[before:]
    seconds = int(extend[0].split("=", 1)[1]) / 1e6
    assert 150 + 90 <= seconds <= 150 + 90 + 10, seconds  # the stop's bound, beyond TimeoutStopSec=3min
