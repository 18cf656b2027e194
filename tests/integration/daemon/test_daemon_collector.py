"""The daemon's garbage-collector settings (daemon/runtime/heap.py) at work, seen from outside:
its metrics endpoint counts Python's collections per generation (python_gc_collections_total)."""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.request

from cairnd_harness import write_config

FILES = 2000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collections(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = dict(re.findall(r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$', text, re.M))
    assert set(found) == {"0", "1", "2"}, text
    return {g: float(n) for g, n in found.items()}


def test_a_backup_and_a_restore_of_many_files_take_few_collections_and_no_full_one(start_daemon, rundir,
                                                                                   tmp_path):
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(FILES // 20):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(64) + b"%d/%d" % (d, i))
    port = _free_port()
    sock = os.path.join(rundir, "gc.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)},
                          metrics=f"127.0.0.1:{port}")
    daemon = start_daemon("--config", config, socket_path=sock)
    deadline = time.monotonic() + 30  # logged just after READY
    while (frozen := re.search(r"garbage collector: thresholds \((\d+), \d+, \d+\), (\d+) start-up objects "
                               r"frozen", daemon.log())) is None:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert int(frozen.group(1)) >= 10_000 and int(frozen.group(2)) > 10_000  # gRPC's, boto3's, ours

    before = _collections(port)
    daemon.ok("backup", "--level", "full")
    target = tmp_path / "restored"
    daemon.ok("restore", "latest", "--target", str(target))
    after = _collections(port)
    for rel in ("d0/f0", "d7/f42", f"d19/f{FILES // 20 - 1}"):
        assert (target / rel).read_bytes() == (src / rel).read_bytes()

    # CPython's defaults made about 60 young collections of this work, and a full one now and
    # then, each rescanning everything the daemon holds (measured: 0.1 s apiece on a large tree).
    young = after["0"] - before["0"]
    assert young <= 20, (before, after)
    assert after["2"] == before["2"], (before, after)
