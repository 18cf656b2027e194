"""An object store that stops answering (its process stopped, its connections left open): the
daemon's `cairn status` still answers, from what the daemon knows itself, with a warning, well
before the S3 client's own timeouts and retries would end the store's reads; the calls that need
the store (`sets`, `ls`, `key list`, a backup) fail with one line once `[repository]
stall_timeout` has passed without an answer, a backup so failed leaves no set behind and the next
one succeeds once the store is back; and a daemon started against the stalled store exits with
one line, never having said READY, within the bound its configuration or its command line
(`cairnd --repo s3://... --read-only --stall-timeout D`, the disaster-recovery form, which has
no configuration file) gives."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from cairnd_harness import CAIRN, CAIRND
from s3daemons import Host, clean_env, s3_repository
from s3server import WeedServer

DEADLINE = 30.0  # well under one read timeout of the S3 client (60 s), let alone its retries
# The stall_timeout the daemons below are given (each request then waits 1 s). Short, since the
# tests wait it out several times; what they show holds for any bound (the default is 2 minutes):
# the calls end with the bound's line, long before the S3 client's own timeouts would end them.
STALL = "4s"
STALLED = "did not answer within 4 s"
CALL_DEADLINE = 30.0  # a call may take a few store operations in turn, each bounded by STALL
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """One store for the module (its start and stop took a third of some tests): each test keeps
    its repository under its own prefix (`prefix`), and leaves the store answering (`stalled`)."""
    with WeedServer(tmp_path_factory.mktemp("weed")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"repo{next(_prefixes)}"


def test_status_answers_while_the_store_is_stalled(tmp_path, weed, prefix) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 1000)
    passphrase = tmp_path / "pass"
    passphrase.write_text("pw\n")
    host = Host(str(tmp_path / "run"), "h1", s3_repository(weed, weed.credentials_file(), prefix, str(passphrase)),
                {"data": str(src)})
    host.init()
    host.start()
    try:
        host.ok("backup", "--source", "data")
        with weed.stalled():
            started = time.monotonic()
            try:
                replies = [host.cli("status", timeout=DEADLINE) for _ in range(2)]
            except subprocess.TimeoutExpired:
                raise AssertionError(f"cairn status did not answer within {DEADLINE:.0f}s of a stalled "
                                     "store") from None
            assert time.monotonic() - started < DEADLINE
        for r in replies:
            assert r.returncode == 0, r.stderr
            assert "did not answer" in r.stdout and "source data" in r.stdout, r.stdout
        assert "last full" in host.ok("status", timeout=DEADLINE)  # the store is back: its sets again
    finally:
        host.stop()


def _stalled_host(tmp_path, weed: WeedServer, prefix: str) -> Host:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a").write_bytes(b"a" * 1000)
    passphrase = tmp_path / "pass"
    passphrase.write_text("pw\n")
    return Host(str(tmp_path / "run"), "h1", s3_repository(weed, weed.credentials_file(), prefix, str(passphrase),
                                                          stall_timeout=STALL), {"data": str(src)})


def _one_line_error(r: subprocess.CompletedProcess, took: float, what: str) -> None:
    assert r.returncode != 0, f"{what}: {r.stdout}"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and STALLED in lines[0], f"{what}: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert took < CALL_DEADLINE, f"{what} took {took:.0f}s"


def test_calls_that_need_a_stalled_store_fail_with_one_line_within_the_bound(tmp_path, weed, prefix) -> None:
    host = _stalled_host(tmp_path, weed, prefix)
    host.init()
    host.start()
    try:
        host.ok("backup", "--source", "data")
        with weed.stalled():
            for args in (("sets",), ("ls", "latest"), ("key", "list"), ("backup", "--source", "data")):
                started = time.monotonic()
                try:
                    r = host.cli(*args, timeout=CALL_DEADLINE)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"cairn {' '.join(args)} still waited on the stalled store after "
                                         f"{CALL_DEADLINE:.0f}s") from None
                _one_line_error(r, time.monotonic() - started, f"cairn {' '.join(args)}")
        host.ok("backup", "--source", "data", timeout=120)  # the store is back: backups work again
        sets = json.loads(host.ok("sets", "--json"))
        assert len(sets) == 2, sets  # the failed backup left no set
    finally:
        host.stop()


def test_a_daemon_started_against_a_stalled_store_exits_with_one_line(tmp_path, weed, prefix) -> None:
    host = _stalled_host(tmp_path, weed, prefix)
    host.init()
    with weed.stalled(), contextlib.ExitStack() as cleanup:
        cleanup.callback(host.stop)
        started = time.monotonic()
        host.spawn()
        assert host.proc is not None and host.notify is not None
        try:
            code = host.proc.wait(CALL_DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"cairnd still waited on the stalled store after {CALL_DEADLINE:.0f}s") from None
        took = time.monotonic() - started
        err = open(host.log, errors="replace").read()
        assert code == 1, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0] == (f"cairnd: error: unable to open the repository at s3://{weed.bucket}/{prefix}: the object "
                            f"store at {weed.endpoint} {STALLED}"), err
        assert not host.notify.wait_for("READY=1", 0), host.notify.messages
        assert took < CALL_DEADLINE, took


def test_stall_timeout_on_the_command_line_bounds_a_start_without_a_configuration(tmp_path, weed, prefix) -> None:
    """The runbook's daemon (no configuration file) takes --stall-timeout: against a stalled store
    it exits with one line after that bound, not the default two minutes."""
    host = _stalled_host(tmp_path, weed, prefix)
    host.init()
    env = clean_env({"AWS_ENDPOINT_URL_S3": weed.endpoint, "AWS_REGION": "us-east-1",
                     "AWS_SHARED_CREDENTIALS_FILE": weed.credentials_file(),
                     "CAIRN_HOME": str(tmp_path / "recovery")})
    argv = [CAIRND, "--repo", f"s3://{weed.bucket}/{prefix}", "--read-only", "--passphrase-file",
            str(tmp_path / "pass"), "--socket", str(tmp_path / "recovery.sock"), "--stall-timeout", "3s"]
    with weed.stalled():
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            _, err = proc.communicate(timeout=CALL_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"cairnd still waited on the stalled store after {CALL_DEADLINE:.0f}s") from None
        took = time.monotonic() - started
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0] == (f"cairnd: error: unable to open the repository at s3://{weed.bucket}/{prefix}: the object "
                        f"store at {weed.endpoint} did not answer within 3 s"), err
    assert took < 30, took  # the 3 s bound and the start, not the default of two minutes


def test_a_reload_says_a_changed_stall_timeout_takes_effect_at_the_next_start(tmp_path, weed, prefix) -> None:
    host = _stalled_host(tmp_path, weed, prefix)
    host.init()
    host.start()
    try:
        assert host.proc is not None and host.notify is not None
        with open(host.config, encoding="utf-8") as f:
            text = f.read()
        with open(host.config, "w", encoding="utf-8") as f:
            f.write(text.replace(f'stall_timeout = "{STALL}"', 'stall_timeout = "1m"'))
        before = host.notify.count()
        host.proc.send_signal(signal.SIGHUP)
        assert host.notify.wait_for("READY=1", 30, after=before), open(host.log).read()
        log = open(host.log, errors="replace").read()
        assert "repository.stall_timeout changed: takes effect at the next start" in log, log
        assert "reload failed" not in log, log
    finally:
        host.stop()


def test_a_backup_whose_uploads_the_store_stops_reading_fails_within_the_bound(tmp_path, weed, prefix) -> None:
    """The store stops while packs are on their way (a PUT blocked in sending is silence too):
    the backup fails with one line, leaves no set, and the next one succeeds."""
    host = _stalled_host(tmp_path, weed, prefix)
    host.init()
    host.start()
    try:
        host.ok("backup", "--source", "data")
        for i in range(12):  # 96 MiB: several 16 MiB packs, so some are still to go at the stop
            (tmp_path / "src" / f"big{i}").write_bytes(os.urandom(8 * 2**20))
        client = weed.client()
        packs = f"{prefix}/packs/"
        before = client.list_objects_v2(Bucket=weed.bucket, Prefix=packs).get("KeyCount", 0)
        backup = subprocess.Popen([CAIRN, "--socket", host.socket, "backup", "--source", "data"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
        try:
            end = time.monotonic() + 60
            while client.list_objects_v2(Bucket=weed.bucket, Prefix=packs).get("KeyCount", 0) == before:
                assert backup.poll() is None and time.monotonic() < end, "no pack was uploaded"
                time.sleep(0.02)
            with weed.stalled():
                started = time.monotonic()
                try:
                    out, err = backup.communicate(timeout=CALL_DEADLINE)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"the backup still waited on the stalled store after "
                                         f"{CALL_DEADLINE:.0f}s") from None
                took = time.monotonic() - started
        finally:
            if backup.poll() is None:
                backup.kill()
                backup.wait(10)
        _one_line_error(subprocess.CompletedProcess(backup.args, backup.returncode, out, err), took, "the backup")
        host.ok("backup", "--source", "data", timeout=120)
        sets = json.loads(host.ok("sets", "--json"))
        assert len(sets) == 2, sets  # the failed backup left no set
    finally:
        host.stop()
