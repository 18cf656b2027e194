"""Killing the object store (SIGKILL of SeaweedFS) in the middle of a backup: the backup fails
with one clear line, and once the store is back on the same data directory nothing
half-written is visible, the earlier set restores, check passes and the next backup succeeds.
In the middle of a restore: the restore fails with one line, leaves only whole files, and a
delta restore finishes it once the store is back.

Twice: in the store (a pack upload in flight when the store dies, every pack the store shows
compared with the bytes sent for it), and through the real daemon and client with the daemon's
own retry settings (the set fails, the daemon stays up and reports it, and the lock the failed
backup could not release while the store was down does not hold up garbage collection)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from cairn.errors import CairnError
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.repository import Repository
from s3daemons import CAIRN, Host, clean_env, s3_repository
from s3server import WeedServer
from storekit import backup, differences, make_tree, restore_and_compare, snapshot, write_random

MIB = 1024 * 1024


class KillDuringPut:
    """Passes everything to `inner`; at pack put number `at` it SIGKILLs the store from another
    thread while that put is in flight. Records every pack body it was asked to store."""

    def __init__(self, inner, server: WeedServer, at: int) -> None:
        self.inner, self.server, self.at = inner, server, at
        self.pack_puts = 0
        self.sent: dict[str, bytes] = {}
        self.killer: threading.Thread | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, kind: str, name: str, data: bytes) -> None:
        if kind == "packs":
            self.sent[name] = bytes(data)
            self.pack_puts += 1
            if self.pack_puts == self.at and self.killer is None:
                self.killer = threading.Thread(target=self.server.kill)
                self.killer.start()
        self.inner.put(kind, name, data)


@pytest.mark.slow
def test_store_killed_during_a_backup(tmp_path, rng):
    src = tmp_path / "src"
    make_tree(str(src), rng, files=12, max_size=256 * 1024)
    server = WeedServer(tmp_path / "weed").start()
    try:
        repo = Repository.init(server.backend("killed"), RepoConfig.new(pack_size=MIB))
        first = backup(repo, str(src))
        before = snapshot(str(src))
        repo.close()
        # New data for a second backup that spans several packs.
        big = src / "big"
        big.mkdir()
        for i in range(6):
            write_random(str(big / f"b{i}.bin"), MIB, rng)
        wrapped = KillDuringPut(server.backend("killed", attempts=2, connect_timeout=2), server, at=3)
        repo = Repository.open(wrapped)
        started = time.monotonic()
        with pytest.raises(CairnError) as info:
            backup(repo, str(src))
        assert time.monotonic() - started < 120
        msg = str(info.value)
        assert "\n" not in msg and ("unreachable" in msg or "unable to" in msg), msg
        assert wrapped.killer is not None
        wrapped.killer.join(60)
        repo.close()

        server.start()  # same directory, same ports
        b = server.backend("killed")
        reopened = Repository.open(b)
        assert [s.id for s in reopened.list_sets()] == [first.id]
        # Every pack the store shows is whole: exactly the bytes that were sent for it.
        for name in b.list("packs"):
            if name in wrapped.sent:
                assert b.get("packs", name) == wrapped.sent[name], f"pack {name} is half-written"
        report = reopened.check(read_data=True)
        assert report.ok, report.errors
        assert reopened.restore(reopened.get_set(first.id), str(tmp_path / "r0")).errors == ()
        assert differences(before, snapshot(str(tmp_path / "r0"))) == []
        second = backup(reopened, str(src))
        restore_and_compare(reopened, reopened.get_set(second.id), str(src), str(tmp_path / "restored"))
        assert reopened.check(read_data=True).ok
    finally:
        server.stop()


def _keys(server: WeedServer, prefix: str, client=None) -> dict[str, int]:
    """Every object under `prefix` with its size, read straight from the store (with `client`,
    one made once: a new boto3 client per call costs tens of milliseconds)."""
    client = client or server.client()
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", ()):
            out[obj["Key"][len(prefix) + 1:]] = obj["Size"]
    return out


@pytest.mark.slow
def test_store_killed_during_a_daemon_backup(tmp_path, rng):
    """The same through the real daemon and client, with the daemon's own retry settings: the
    store is SIGKILLed once the backup's first new pack is in it. `cairn backup` fails with one
    line, the daemon stays up and its status names the failure; once the store is back on the
    same data, the failed backup left no set and nothing the index names that is not whole,
    verify --read-data is clean, the next backup succeeds and restores identical, and a prune
    leaves nothing of the failed backup behind."""
    prefix = "killed-daemon"
    with _solo_run(tmp_path, prefix, rng) as (server, host, rundir, src, first):
        packs_before = {k for k in _keys(server, prefix) if k.startswith("packs/")}
        _grow(src, 16, rng)  # six 16 MiB packs: the backup is still running when the store dies
        watcher = server.client()  # made before the backup starts, so polling is quick

        outcome: dict[str, object] = {}

        def run_backup() -> None:
            started = time.monotonic()
            outcome["result"] = host.cli("backup", "--level", "incremental", timeout=300)
            outcome["seconds"] = time.monotonic() - started

        backup_thread = threading.Thread(target=run_backup)
        backup_thread.start()
        _wait_new_pack(server, prefix, watcher, packs_before, backup_thread.is_alive, outcome)
        server.kill()
        backup_thread.join(300)
        result = outcome["result"]
        assert isinstance(result, subprocess.CompletedProcess)
        assert result.returncode == 1, (result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("cairn: error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "unreachable" in errors[0] or "unable to" in errors[0], errors[0]
        assert outcome["seconds"] < 180
        assert host.proc is not None and host.proc.poll() is None  # the daemon outlives its store

        status = host.ok("status", timeout=120)  # with the store down: what the daemon knows, and why no sets
        assert "last failure" in status and "warning: " in status and "sets are not shown" in status, status
        server.start()  # the same data directory and ports
        status = host.ok("status")
        assert "last failure" in status, status
        assert [s["id"] for s in json.loads(host.ok("--json", "sets"))] == [first]
        objects = _keys(server, prefix)
        assert [k for k in objects if k.startswith("sets/")] == [f"sets/{first}"]
        report = json.loads(host.ok("--json", "verify", "--read-data", timeout=300))
        assert report["ok"] and not report["errors"], report
        _next_backup_and_prune(server, host, rundir, src, prefix)


@pytest.mark.slow
def test_daemon_killed_during_a_backup_to_a_bucket(tmp_path, rng):
    """The daemon itself SIGKILLed once its backup's first new pack is in the bucket (the store
    stays up): restarted with the same state directory, it shows only the earlier set, the next
    backup succeeds and restores identical, a prune at once (the killed daemon's lock names a
    process of this host that is gone: it holds nothing up) leaves no lock and nothing of the
    killed backup behind, and verify --read-data is clean."""
    prefix = "killed-itself"
    with _solo_run(tmp_path, prefix, rng) as (server, host, rundir, src, first):
        packs_before = {k for k in _keys(server, prefix) if k.startswith("packs/")}
        _grow(src, 8, rng)  # three 16 MiB packs: the backup still runs when its first is in the bucket
        watcher = server.client()
        client = subprocess.Popen([CAIRN, "--socket", host.socket, "backup", "--level", "incremental"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), text=True)
        _wait_new_pack(server, prefix, watcher, packs_before, lambda: client.poll() is None, "")
        assert host.proc is not None
        host.proc.kill()
        host.proc.wait(30)
        _, err = client.communicate(timeout=120)
        assert client.returncode != 0 and "Traceback" not in err, err
        assert [k for k in _keys(server, prefix) if k.startswith("locks/")], "the kill left no lock: nothing tested"

        host.stop()  # the listener of the killed process
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(host.dir, "notify"))
        host.start()
        assert [s["id"] for s in json.loads(host.ok("--json", "sets"))] == [first]
        # what the killed backup stored is no damage: one note, exit 0 (its lock holds nothing up)
        r = host.cli("verify")
        assert r.returncode == 0 and "warning" not in r.stdout + r.stderr, (r.stdout, r.stderr)
        if {k for k in _keys(server, prefix) if k.startswith("packs/")} - packs_before:
            assert re.fullmatch(r"note: \d+ packs? not in any index, left by an interrupted write; prune removes "
                                r"(them|it)", r.stdout.splitlines()[0]), r.stdout
        else:  # the store listed the first pack while its PUT ran, and the kill cut that PUT: nothing stayed
            assert r.stdout.startswith("repository ok"), r.stdout
        _next_backup_and_prune(server, host, rundir, src, prefix)


@pytest.mark.slow
def test_store_killed_during_a_restore(tmp_path, rng):
    """The store SIGKILLed while the daemon restores a set from it: `cairn restore` fails with one
    line in bounded time and the daemon stays up; every file left in the target is whole (the
    source's bytes and size: a file whose content did not all arrive is removed, not left looking
    restored); once the store is back on the same data, `restore --delta` into the same target
    finishes it and the tree equals the source."""
    prefix = "killed-restore"
    with _solo_run(tmp_path, prefix, rng) as (server, host, rundir, src, _first):
        _grow(src, 16, rng)  # 96 MiB of incompressible files: the restore still runs when the store dies
        second = json.loads(host.ok("--json", "backup", "--level", "incremental", timeout=300))["id"]
        target = os.path.join(rundir, "restored")
        outcome: dict[str, object] = {}

        def run_restore() -> None:
            started = time.monotonic()
            outcome["result"] = host.cli("restore", second, "--target", target, timeout=300)
            outcome["seconds"] = time.monotonic() - started

        restore_thread = threading.Thread(target=run_restore)
        restore_thread.start()
        big = os.path.join(target, "big")
        deadline = time.monotonic() + 120
        while not (os.path.isdir(big) and any(e.stat().st_size for e in os.scandir(big))):
            assert restore_thread.is_alive(), f"the restore ended before it wrote a large file: {outcome}"
            assert time.monotonic() < deadline, "the restore wrote nothing in time"
            time.sleep(0.005)
        server.kill()
        restore_thread.join(300)
        result = outcome["result"]
        assert isinstance(result, subprocess.CompletedProcess)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("cairn: error:")]
        assert len(errors) == 1, result.stderr
        assert outcome["seconds"] < 180
        assert host.proc is not None and host.proc.poll() is None  # the daemon outlives its store
        want = snapshot(src)
        files_left = {p: n for p, n in snapshot(target).nodes.items() if n.kind == "file"}
        assert files_left, "nothing was restored before the store died: nothing tested"
        assert len([p for p in files_left if p.startswith(b"big/")]) < 16, "the restore had finished: nothing tested"
        for path, node in files_left.items():
            assert node == want.nodes[path], f"'{path!r}' was left in the target but is not whole"

        server.start()  # the same data directory and ports
        host.ok("restore", second, "--target", target, "--delta", timeout=300)
        assert differences(want, snapshot(target)) == []


@contextlib.contextmanager
def _solo_run(tmp_path, prefix: str, rng) -> Iterator[tuple[WeedServer, Host, str, str, str]]:
    """SeaweedFS, a daemon on it (_solo_host) and a run directory; all stopped and removed after."""
    rundir = tempfile.mkdtemp(prefix="cairn-kill-", dir="/tmp")  # short: socket paths are limited
    server = WeedServer(tmp_path / "weed").start()
    host = None
    try:
        host, src, first = _solo_host(rundir, server, prefix, rng)
        yield server, host, rundir, src, first
    finally:
        if host is not None:
            host.stop()
        server.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def _next_backup_and_prune(server: WeedServer, host: Host, rundir: str, src: str, prefix: str) -> None:
    """After a failed backup: the next one restores identical, and a prune leaves no lock or gc
    marker and a repository whose verify --read-data is clean."""
    second = json.loads(host.ok("--json", "backup", "--level", "incremental", timeout=300))["id"]
    target = os.path.join(rundir, "restored")
    host.ok("restore", second, "--target", target, timeout=300)
    assert differences(snapshot(src), snapshot(target)) == []
    host.ok("prune", timeout=300)
    left = _keys(server, prefix)
    assert not [k for k in left if k.startswith(("locks/", "gc/"))], left  # no lock or marker left over
    report = json.loads(host.ok("--json", "verify", "--read-data", timeout=300))
    assert report["ok"] and not report["errors"] and not report["warnings"], report


def _solo_host(rundir: str, server: WeedServer, prefix: str, rng) -> tuple[Host, str, str]:
    """A daemon on an encrypted repository at `prefix`, a small tree, and its first (full) set."""
    passphrase = os.path.join(rundir, "repo.pass")
    with open(passphrase, "w") as f:
        f.write(f"{prefix}\n")
    src = os.path.join(rundir, "src")
    make_tree(src, rng, files=10, max_size=128 * 1024)
    host = Host(rundir, "solo", s3_repository(server, server.credentials_file(), prefix, passphrase), {"data": src})
    host.init()
    host.start()
    return host, src, json.loads(host.ok("--json", "backup", "--level", "full"))["id"]


def _grow(src: str, files: int, rng) -> None:
    """Add `files` incompressible 6 MiB files: an incremental that stores several packs."""
    os.makedirs(os.path.join(src, "big"))
    for i in range(files):
        write_random(os.path.join(src, "big", f"b{i}.bin"), 6 * MIB, rng)


def _wait_new_pack(server: WeedServer, prefix: str, watcher, before: set[str], running, about: object) -> None:
    """Wait until a pack not in `before` is in the bucket, while `running()` says the backup runs."""
    deadline = time.monotonic() + 120
    while not {k for k in _keys(server, prefix, watcher) if k.startswith("packs/")} - before:
        assert running(), f"the backup ended before it stored a pack: {about}"
        assert time.monotonic() < deadline, "the backup stored no pack in time"
        time.sleep(0.005)
