"""An object store that stops answering (its process stopped, its connections left open): the
daemon's `cairn status` still answers, from what the daemon knows itself, with a warning, well
before the S3 client's own timeouts and retries would end the store's reads."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from s3daemons import Host, s3_repository
from s3server import WeedServer

DEADLINE = 30.0  # well under one read timeout of the S3 client (60 s), let alone its retries


def test_status_answers_while_the_store_is_stalled(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 1000)
    passphrase = tmp_path / "pass"
    passphrase.write_text("pw\n")
    with WeedServer(tmp_path / "weed") as weed:
        host = Host(str(tmp_path / "run"), "h1", s3_repository(weed, weed.credentials_file(), "repo", str(passphrase)),
                    {"data": str(src)})
        host.init()
        host.start()
        stopped = False
        try:
            host.ok("backup", "--source", "data")
            assert weed.proc is not None
            os.kill(weed.proc.pid, signal.SIGSTOP)
            stopped = True
            started = time.monotonic()
            try:
                replies = [host.cli("status", timeout=DEADLINE) for _ in range(2)]
            except subprocess.TimeoutExpired:
                raise AssertionError(f"cairn status did not answer within {DEADLINE:.0f}s of a stalled store") from None
            assert time.monotonic() - started < DEADLINE
            for r in replies:
                assert r.returncode == 0, r.stderr
                assert "did not answer" in r.stdout and "source data" in r.stdout, r.stdout
            os.kill(weed.proc.pid, signal.SIGCONT)
            stopped = False
            assert "last full" in host.ok("status", timeout=DEADLINE)  # the store is back: its sets again
        finally:
            if stopped:
                os.kill(weed.proc.pid, signal.SIGCONT)
            host.stop()
