"""SIGKILL of cairnd on an s3:// repository (SeaweedFS) in the middle of `key add` / `key
remove`, `copy --to` another prefix of the bucket and `wal-push`; and of SeaweedFS itself in the
middle of a wal-push, a copy and a repair index.

After each kill the daemon starts again on the bucket: the repository opens with the old
secret every time (and with the new one when its addition was acknowledged), the killed copy run
again finishes and the copies verify clean and restore identical, and a WAL segment whose push
was killed is pushed again by the archiver's retry and fetched whole, never short. The local
counterpart is tests/integration/daemon/test_daemon_kill_maintenance.py.

CAIRN_CRASH_SEED picks the kill delays, CAIRN_CRASH_TRIALS how many kills each operation gets
(1 by default, sized for the suite; the local file runs 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from cairnd_harness import snapshot
from s3daemons import CAIRN, Host, clean_env, restart_after_kill, s3_repository
from s3kit import file_facts
from s3server import WeedServer

SEED = int(os.environ.get("CAIRN_CRASH_SEED", "6151"))
TRIALS = int(os.environ.get("CAIRN_CRASH_TRIALS", "1"))
MIB = 1024 * 1024


@contextlib.contextmanager
def _host(server: WeedServer, rng: random.Random) -> Iterator[tuple[Host, str, str]]:
    """A daemon on an encrypted repository under a fresh prefix, a source tree; (host, prefix, rundir)."""
    rundir = tempfile.mkdtemp(prefix="cairn-s3km-", dir="/tmp")  # short: socket paths are limited
    prefix = f"km-{rng.randrange(1 << 32):08x}"
    host = None
    try:
        with open(os.path.join(rundir, "old.pass"), "w") as f:
            f.write("the old one\n")
        src = os.path.join(rundir, "src")
        for i in range(6):
            os.makedirs(os.path.join(src, f"d{i % 2}"), exist_ok=True)
            with open(os.path.join(src, f"d{i % 2}", f"f{i}"), "wb") as f:
                f.write(rng.randbytes(MIB))
        repository = s3_repository(server, server.credentials_file(), prefix, os.path.join(rundir, "old.pass"))
        host = Host(rundir, "h", repository, {"data": src})
        host.init()
        host.start()
        yield host, prefix, rundir
    finally:
        if host is not None:
            host.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def _kill_during(host: Host, argv: list[str], delay: float) -> subprocess.CompletedProcess:
    client = subprocess.Popen([CAIRN, "--socket", host.socket, *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=clean_env())
    time.sleep(delay)
    assert host.proc is not None
    host.proc.send_signal(signal.SIGKILL)
    host.proc.wait(10)
    out, err = client.communicate(timeout=120)
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(argv, client.returncode, out, err)


def _opens(server: WeedServer, prefix: str, flag: str, path: str) -> bool:
    from cairn.errors import WrongKeyError
    from cairn.store.content import crypto
    from cairn.store.repository import Repository

    secret = crypto.Secret.from_passphrase_file(path) if flag == "passphrase" else crypto.Secret.from_key_file(path)
    try:
        Repository.open(server.backend(prefix), read_only=True, secret=secret).close()
        return True
    except WrongKeyError:
        return False


def _clean(host: Host) -> None:
    report = json.loads(host.cli("--json", "verify", "--read-data").stdout)
    odd = [w for w in report["warnings"] if not w["message"].endswith("prune removes it")]
    assert report["ok"] and not report["errors"] and not odd, report

def _check_copy(server: WeedServer, rundir: str, prefix: str, expected: dict) -> None:
    """The copy at `prefix` of `server`'s bucket (passphrase rundir/dest.pass) holds as many sets
    as `expected` (set id -> files): verify --read-data is clean and each restores as captured."""
    other = Host(os.path.join(rundir, "o"), "o", s3_repository(server, server.credentials_file(), prefix,
                                                              os.path.join(rundir, "dest.pass")), {})
    other.start()
    try:
        copied = json.loads(other.ok("--json", "sets"))
        assert len(copied) == len(expected), copied
        report = json.loads(other.cli("--json", "verify", "--read-data").stdout)
        assert report["ok"] and not report["errors"], report
        for s in copied:
            target = os.path.join(rundir, f"r-{s['id'][:8]}")
            other.ok("restore", s["id"], "--target", target)
            assert file_facts(snapshot(target)) in expected.values(), f"copy {s['id'][:8]} restores different"
    finally:
        other.stop()



@pytest.mark.slow
@pytest.mark.campaign
def test_key_operations_killed_on_a_bucket(weed):
    rng = random.Random(SEED)
    with _host(weed, rng) as (host, prefix, rundir):
        old = os.path.join(rundir, "old.pass")
        host.ok("backup", "--level", "full")
        for trial in range(TRIALS * 2):
            kind = ["passphrase", "keyfile", "write-only", "remove"][trial % 4]
            new = os.path.join(rundir, f"new{trial}")
            flag = "passphrase" if kind == "passphrase" else "keyfile"
            if kind == "remove":
                argv = ["key", "remove", host.ok("key", "add", "--new-key-file", new).split()[-1]]
            elif kind == "passphrase":
                with open(new, "w") as f:
                    f.write(f"new {trial}\n")
                argv = ["key", "add", "--passphrase-file", new]
            else:
                argv = ["key", "add", "--new-key-file", new] + (["--write-only"] if kind == "write-only" else [])
            r = _kill_during(host, argv, rng.uniform(0.05, 0.6))
            assert _opens(weed, prefix, "passphrase", old), f"trial {trial} ({kind}): the old secret no longer opens"
            if r.returncode == 0 and kind in ("passphrase", "keyfile"):
                assert _opens(weed, prefix, flag, new), f"trial {trial}: added, but the new secret does not open"
            if kind in ("keyfile", "write-only") and os.path.exists(new):
                assert os.path.getsize(new) > 0, f"trial {trial}: an empty key file was left behind"
            restart_after_kill(host)
            _clean(host)
            host.ok("backup", "--level", "incremental")
            if kind == "remove":
                if _opens(weed, prefix, flag, new):
                    host.ok(*argv)
                assert not _opens(weed, prefix, flag, new)


@pytest.mark.slow
@pytest.mark.campaign
def test_copy_to_a_bucket_killed_then_run_again(weed):
    rng = random.Random(SEED + 1)
    with _host(weed, rng) as (host, prefix, rundir):
        src = os.path.join(rundir, "src")
        expected: dict[str, dict] = {}
        for i in range(3):
            with open(os.path.join(src, f"more{i}"), "wb") as f:
                f.write(rng.randbytes(4 * MIB))
            set_id = json.loads(host.ok("--json", "backup", "--level", "incremental"))["id"]
            expected[set_id] = file_facts(snapshot(src))
        with open(os.path.join(rundir, "dest.pass"), "w") as f:
            f.write("dest\n")
        dest_prefix = f"{prefix}-copy"
        copy = ["copy", "--to", f"s3://{weed.bucket}/{dest_prefix}", "--to-passphrase-file",
                os.path.join(rundir, "dest.pass")]
        for _ in range(TRIALS):
            _kill_during(host, copy, rng.uniform(0.1, 2.0))
            restart_after_kill(host)
        host.ok(*copy)
        _check_copy(weed, rundir, dest_prefix, expected)
        _clean(host)


@pytest.mark.slow
@pytest.mark.campaign
def test_wal_push_killed_on_a_bucket(tmp_path):
    """The daemon, the client or SeaweedFS SIGKILLed while a 16 MiB segment is pushed: once all
    is back, the archiver's retry succeeds and the segment is fetched whole."""
    rng = random.Random(SEED + 2)
    server = WeedServer(tmp_path / "weed").start()  # its own: this test kills it
    try:
        with _host(server, rng) as (host, prefix, rundir):
            for trial in range(TRIALS * 3):
                victim = ["daemon", "client", "store"][trial % 3]
                seg = os.path.join(rundir, f"00000001000000000000{trial:04X}")
                with open(seg, "wb") as f:
                    f.write(rng.randbytes(16 * MIB))
                argv = ["wal-push", seg]
                delay = rng.uniform(0.05, 0.8)
                if victim == "daemon":
                    _kill_during(host, argv, delay)
                    restart_after_kill(host)
                else:
                    client = subprocess.Popen([CAIRN, "--socket", host.socket, *argv], stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, env=clean_env())
                    time.sleep(delay)
                    if victim == "client":
                        client.kill()
                        client.communicate(timeout=30)
                    else:
                        killer = threading.Thread(target=server.kill)
                        killer.start()
                        _, err = client.communicate(timeout=300)
                        assert b"Traceback" not in err, err
                        killer.join(60)
                        server.start()
                got = os.path.join(rundir, f"got{trial}")
                r = host.cli("wal-fetch", "--prefetch", "0", os.path.basename(seg), got)
                with open(seg, "rb") as f:
                    want = f.read()
                if r.returncode == 0:
                    with open(got, "rb") as f:
                        assert f.read() == want, f"trial {trial} ({victim}): a short segment was served"
                else:
                    assert not os.path.exists(got), r.stderr
                host.ok("wal-push", seg)  # the archiver's retry
                host.ok("wal-fetch", "--prefetch", "0", os.path.basename(seg), got)
                with open(got, "rb") as f:
                    assert f.read() == want, f"trial {trial} ({victim}): fetched different"
            _clean(host)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.campaign
def test_store_killed_during_copy_and_repair(tmp_path):
    """SeaweedFS SIGKILLed during `copy --to` another prefix and during `repair index`: each
    fails with one error line, the daemon stays up, and once the store is back the same
    command succeeds, the repository verifies clean and the copies restore identical."""
    rng = random.Random(SEED + 3)
    server = WeedServer(tmp_path / "weed").start()  # its own: this test kills it
    try:
        with _host(server, rng) as (host, prefix, rundir):
            src = os.path.join(rundir, "src")
            expected: dict[str, dict] = {}
            for i in range(2):
                with open(os.path.join(src, f"more{i}"), "wb") as f:
                    f.write(rng.randbytes(8 * MIB))
                expected[json.loads(host.ok("--json", "backup", "--level", "incremental"))["id"]] = \
                    file_facts(snapshot(src))
            with open(os.path.join(rundir, "dest.pass"), "w") as f:
                f.write("dest\n")
            dest = f"{prefix}-copy"
            copy = ["copy", "--to", f"s3://{server.bucket}/{dest}", "--to-passphrase-file",
                    os.path.join(rundir, "dest.pass")]
            for argv in (copy, ["repair", "index", "--read-data"]) * TRIALS:
                client = subprocess.Popen([CAIRN, "--socket", host.socket, *argv], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=clean_env())
                time.sleep(rng.uniform(0.1, 1.0) if argv is copy else rng.uniform(0.0, 0.2))
                server.kill()
                _, err = client.communicate(timeout=300)
                assert "Traceback" not in err and len([ln for ln in err.splitlines()
                                                       if ln.startswith("cairn: error:")]) <= 1, err
                assert host.proc is not None and host.proc.poll() is None  # the daemon outlives its store
                print(f"store killed during {argv[0]}: client exit {client.returncode} {err.strip()[:160]!r}")
                server.start()  # the same data directory and ports
                host.ok(*argv, timeout=300)
            _clean(host)
            _check_copy(server, rundir, dest, expected)
    finally:
        server.stop()
