"""Error paths at the edges of the daemon's API, with the real cairnd and cairn.

What must hold: a name far longer than any real one (a set id, source, host or path of 20,000
characters) gets a short one-line error and a non-zero exit, never gRPC's "Stream removed"
(the daemon's error details travel as metadata, which a client caps at a few KiB); a full
disk under the repository fails a backup with one line naming it and RESOURCE_EXHAUSTED, the
daemon serves on, and once there is room the next backup succeeds and every set restores
identical; a disk that fills while a backup writes its packs (the backup failing, or the
daemon killed -9 then) leaves no set and no temp file, verify finds the repository whole, and
the next backup once there is room succeeds; a prune on a full repository disk frees the dead
packs before it needs room to rewrite, and says in one line when even then there is none; an
endpoint cairnd cannot bind (a read-only directory, a socket path too long for sun_path, a
path under /proc, a TCP port in use) ends cairnd with one line "cairnd: error: unable to
listen on ...", exit status 1, and no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
from cairn.daemon.rpc.server import RpcServer
from cairn.daemon.rpc.servicer import CairnServicer
from cairn.daemon.runtime.config import DaemonConfig
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc
from cairn.store.content.repoconfig import RepoConfig
from cairn.store.errors import FailedPreconditionError
from cairn.store.repository import Repository
from cairn.store.storage.backend import LocalBackend
from cairnd_harness import CAIRN, env_for, init_repo, snapshot, write_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mounts import fill, mount_tmpfs

LONG = "x" * 20_000
MIB = 1024 * 1024
LONG_WIDE = "é" * 20_000  # two bytes each in UTF-8, six once percent-encoded on the wire


def error_line(stderr: str, program: str = "cairn") -> str:
    """The one line of an error on stderr (cairnd's log lines aside): no traceback, no gRPC noise."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("ts=")]
    assert lines and lines[0].startswith(f"{program}: error: "), stderr
    assert all(ln.startswith("hint: ") for ln in lines[1:]), stderr
    assert "Traceback" not in stderr and "RuntimeError" not in stderr and "Stream removed" not in stderr, stderr
    return lines[0]


def backup_id(out: str) -> str:
    set_id = out.strip().splitlines()[-1]
    assert len(set_id) == 64, out
    return set_id


# ---- names far too long ----


def test_names_far_too_long_get_one_short_line_and_the_daemon_serves_on(start_daemon, rundir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    sock = os.path.join(rundir, "long.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    backup_id(d.ok("backup", "--source", "app"))
    target = str(tmp_path / "target")
    calls = [
        (("restore", LONG, "--target", target), "unknown set"),
        (("restore", LONG_WIDE, "--target", target), "unknown set"),
        (("ls", LONG), "unknown set"),
        (("sets", "--source", LONG), "unknown source"),
        (("backup", "--source", LONG), "unknown source"),
        (("ls", "latest", "--host", LONG), "unknown host"),
        (("ls", "latest", "/" + LONG), "is not in the set"),
        (("diff", LONG, LONG_WIDE), "unknown set"),
    ]
    for args, what in calls:
        r = d.cli(*args)
        assert r.returncode != 0, (args[:2], r.stdout)
        line = error_line(r.stderr)
        assert what in line and "…" in line, line  # the argument shortened, not dropped
        assert len(line.encode()) <= 1100, (args[:2], len(line))
    assert not os.path.exists(target)
    with grpc.insecure_channel(f"unix:{sock}") as channel:  # the health service echoes its argument too
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=LONG), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value
    assert "unknown service" in info.value.details() and "…" in info.value.details()
    assert d.alive
    assert "app" in d.ok("sets")


# ---- a full disk under the repository ----


@pytest.fixture
def repofs(rundir: str) -> Iterator[str]:
    """A 4 MiB tmpfs for the repository (unmounted after the daemon is gone)."""
    mnt = os.path.join(rundir, "repofs")
    os.makedirs(mnt)
    mount_tmpfs(mnt)
    yield mnt
    if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def test_a_full_repository_disk_fails_a_backup_with_one_line_and_loses_nothing(repofs, start_daemon, rundir,
                                                                                tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "first.bin").write_bytes(os.urandom(1 << 20))
    sock = os.path.join(rundir, "full.sock")
    config = write_config(str(tmp_path / "cairn.toml"), os.path.join(repofs, "repo"), sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    first = backup_id(d.ok("backup", "--source", "app"))
    first_tree = snapshot(str(src))

    (src / "second.bin").write_bytes(os.urandom(512 << 10))
    filler = os.path.join(repofs, "fill")
    fill(filler)
    r = d.cli("backup", "--source", "app")
    assert r.returncode == 1, r.stdout
    line = error_line(r.stderr)
    assert "No space left on device" in line and "unable to write" in line, line
    with d.channel() as channel, pytest.raises(grpc.RpcError) as failed:
        for _ in pb_grpc.CairnStub(channel).Backup(pb.BackupRequest(source="app"), timeout=30):
            pass
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, failed.value.details()
    assert "No space left on device" in failed.value.details()
    assert d.alive
    d.ok("status")

    os.unlink(filler)
    second = backup_id(d.ok("backup", "--source", "app"))
    for set_id, want in ((first, first_tree), (second, snapshot(str(src)))):
        target = str(tmp_path / f"restore-{set_id[:8]}")
        d.ok("restore", set_id[:12], "--target", target)
        assert snapshot(target) == want
    d.ok("verify")


def _free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_prune_on_a_full_repository_disk_frees_the_dead_packs_first(repofs, start_daemon, rundir, tmp_path):
    """The disk is full and the operator prunes to make room: the dead packs are deleted, which
    needs no room, and the rewrite of a mostly dead pack uses the room they left. When even then
    there is none, the rewrite is refused in one line (RESOURCE_EXHAUSTED), after the dead packs
    were freed; nothing a kept set needs is touched, and once there is room a prune finishes."""
    src = tmp_path / "src"
    src.mkdir()
    sock = os.path.join(rundir, "full.sock")
    config = write_config(str(tmp_path / "cairn.toml"), os.path.join(repofs, "repo"), sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    (src / "gone.bin").write_bytes(os.urandom(1_200_000))
    alone = backup_id(d.ok("backup", "--source", "app", "--level", "full"))  # its data in a pack of its own
    (src / "gone.bin").unlink()
    (src / "x.bin").write_bytes(os.urandom(700_000))
    (src / "y.bin").write_bytes(os.urandom(700_000))
    both = backup_id(d.ok("backup", "--source", "app", "--level", "full"))  # x and y in one pack
    (src / "y.bin").unlink()
    kept = backup_id(d.ok("backup", "--source", "app", "--level", "full"))  # x alone
    kept_tree = snapshot(str(src))

    filler = fill(os.path.join(repofs, "fill"))
    os.truncate(filler, os.path.getsize(filler) - 16384)  # room for a lock, a marker, an index file
    before = _free(repofs)
    r = d.cli("--json", "prune", "--forget", alone, "--forget", both)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["packs_deleted"] >= 2 and report["packs_rewritten"] == 1, report
    assert _free(repofs) > before + 1_000_000
    assert [s["id"] for s in json.loads(d.ok("--json", "sets"))] == [kept]

    # Full again, and this time nothing is dead but a small pack of listings: the rewrite is refused.
    (src / "z.bin").write_bytes(os.urandom(600_000))
    (src / "w.bin").write_bytes(os.urandom(600_000))
    with_z = backup_id(d.ok("backup", "--source", "app", "--level", "full"))  # z and w in one pack
    (src / "z.bin").unlink()
    last = backup_id(d.ok("backup", "--source", "app", "--level", "full"))
    last_tree = snapshot(str(src))
    fill(filler)
    os.truncate(filler, os.path.getsize(filler) - 16384)
    r = d.cli("prune", "--forget", with_z)
    assert r.returncode == 1, r.stdout
    line = error_line(r.stderr)
    assert "unable to rewrite the mostly dead packs" in line and "No space left on device" in line, line
    assert "the dead packs were freed" in line, line
    os.unlink(filler)
    d.ok("verify", "--read-data")
    assert "1 rewritten" in d.ok("prune")
    d.ok("verify", "--read-data")
    for set_id, want in ((kept, kept_tree), (last, last_tree)):
        target = str(tmp_path / f"restore-{set_id[:8]}")
        d.ok("restore", set_id, "--target", target)
        assert snapshot(target) == want


@pytest.fixture
def wide_repofs(rundir: str) -> Iterator[str]:
    """A 16 MiB tmpfs for the repository (unmounted after the daemon is gone)."""
    mnt = os.path.join(rundir, "repofs")
    os.makedirs(mnt)
    mount_tmpfs(mnt, "16m")
    yield mnt
    if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def _temp_files(repo: str) -> list[str]:
    """Temp files of writes in the repository (a pack or an index being written)."""
    return [os.path.join(d, n) for d, _, names in os.walk(repo) for n in names if n.startswith(".tmp-")]


@pytest.mark.parametrize("killed", [False, True], ids=["fails", "killed"])
def test_a_repository_disk_that_fills_during_a_backup_keeps_the_repository_whole(killed, wide_repofs, start_daemon,
                                                                                 rundir, tmp_path):
    """The disk fills while a backup writes its packs (1 MiB each here, so several are in before
    the one that does not fit): the backup fails with one line naming the file and the reason,
    or the daemon is killed -9 once the disk has no room for the next pack (the backup still
    running: before that pack's write, or during it). Either way the repository shows no trace
    of the set (no set, no temp file once a daemon opened it again), verify finds it whole, and once
    there is room the next backup succeeds and every set restores identical; prune removes the
    packs the failed set left."""
    repo = os.path.join(wide_repofs, "repo")
    os.makedirs(repo, mode=0o700)
    Repository.init(LocalBackend(repo), RepoConfig.new(pack_size=MIB)).close()
    src = tmp_path / "src"
    src.mkdir()
    (src / "first.bin").write_bytes(os.urandom(MIB))
    sock = os.path.join(rundir, "full.sock")
    config = write_config(str(tmp_path / "cairn.toml"), repo, sock, {"app": str(src)})
    d = start_daemon("--config", config, socket_path=sock)
    first = backup_id(d.ok("backup", "--source", "app"))
    first_tree = snapshot(str(src))

    for i in range(8):
        (src / f"new{i}.bin").write_bytes(os.urandom(MIB))
    filler = fill(os.path.join(wide_repofs, "fill"))
    os.truncate(filler, os.path.getsize(filler) - 3 * MIB)  # three of the eight packs fit
    if not killed:
        r = d.cli("backup", "--source", "app")
        assert r.returncode == 1, r.stdout
        line = error_line(r.stderr)
        assert line.startswith(f"cairn: error: unable to write '{repo}/"), line
        assert line.endswith(": No space left on device"), line
        assert d.alive and "Traceback" not in d.log()
    else:
        client = subprocess.Popen([CAIRN, "--socket", sock, "backup", "--source", "app"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env_for())
        try:
            end = time.monotonic() + 30
            # kill -9 once the next pack does not fit (or at once should the backup have failed
            # between two looks: then right after the failure)
            while _free(wide_repofs) >= MIB and client.poll() is None:
                assert time.monotonic() < end, "the disk did not fill"
                time.sleep(0.001)
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(10)
        finally:
            client.wait(30)
        d = start_daemon("--config", config, socket_path=sock)
    assert [s["id"] for s in json.loads(d.ok("--json", "sets"))] == [first]
    r = d.cli("verify", "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "repository ok: 1 set," in r.stdout and "damage" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert _temp_files(repo) == [], _temp_files(repo)

    os.unlink(filler)
    second = backup_id(d.ok("backup", "--source", "app"))
    assert _temp_files(repo) == [], _temp_files(repo)
    d.ok("prune")
    r = d.cli("verify", "--read-data")
    assert r.returncode == 0 and "repository ok: 2 sets," in r.stdout, r.stdout + r.stderr
    assert "not in any index" not in r.stdout + r.stderr, r.stdout + r.stderr
    for set_id, want in ((first, first_tree), (second, snapshot(str(src)))):
        target = str(tmp_path / f"restore-{set_id[:8]}")
        d.ok("restore", set_id, "--target", target)
        assert snapshot(target) == want


# ---- endpoints cairnd cannot bind ----


def start_on(start_daemon, rundir: str, socket_path: str):
    """cairnd on a fresh repository with `socket_path`; returns its exit status and stderr."""
    repo = init_repo(os.path.join(rundir, "repo"))
    d = start_daemon("--repo", repo, "--socket", socket_path, socket_path=socket_path, wait_ready=False)
    code = d.proc.wait(20)
    return code, d.log()


@pytest.fixture
def read_only_dir(rundir: str) -> Iterator[str]:
    mnt = os.path.join(rundir, "ro")
    os.makedirs(mnt)
    mount_tmpfs(mnt)
    try:
        if subprocess.run(["mount", "-o", "remount,ro", mnt], capture_output=True).returncode != 0:
            pytest.skip("unable to remount a tmpfs read-only")
        yield mnt
    finally:
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)


def test_a_socket_in_a_read_only_directory_is_one_line(read_only_dir, start_daemon, rundir):
    path = os.path.join(read_only_dir, "cairnd.sock")
    code, log = start_on(start_daemon, rundir, path)
    assert code == 1
    assert error_line(log, "cairnd") == f"cairnd: error: unable to listen on '{path}': Read-only file system"
    nested = os.path.join(read_only_dir, "sub", "cairnd.sock")  # its directory cannot be made either
    code, log = start_on(start_daemon, rundir, nested)
    assert code == 1
    line = error_line(log, "cairnd")
    assert line.startswith(f"cairnd: error: unable to listen on '{nested}': unable to create") and \
        line.endswith("Read-only file system"), line


def test_a_socket_path_too_long_for_sun_path_is_one_line(start_daemon, rundir):
    directory = os.path.join(rundir, "d" * 100)
    path = os.path.join(directory, "cairnd.sock")
    assert len(path) > 107
    code, log = start_on(start_daemon, rundir, path)
    assert code == 1
    line = error_line(log, "cairnd")
    assert line == (f"cairnd: error: unable to listen on '{path}': the path is {len(path)} bytes long, a Unix "
                    "socket path may have at most 107"), line
    assert not os.path.exists(directory)  # refused before anything was made


def test_a_socket_under_proc_is_one_line(start_daemon, rundir):
    path = "/proc/cairnd.sock"
    code, log = start_on(start_daemon, rundir, path)
    assert code == 1
    line = error_line(log, "cairnd")
    assert line.startswith(f"cairnd: error: unable to listen on '{path}': ") and "No such file" in line, line


@pytest.fixture
def tls(tmp_path) -> dict[str, str]:
    """A self-signed certificate, its key and a token file."""
    cert, key, token = (str(tmp_path / n) for n in ("cert.pem", "key.pem", "token"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-subj", "/CN=localhost", "-days", "1"],
                   check=True, capture_output=True, timeout=60)
    with open(token, "w") as f:
        f.write("s3cret\n")
    return {"tls_cert": cert, "tls_key": key, "token_file": token}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_tcp_port_in_use_is_one_line_from_cairnd(start_daemon, rundir, tmp_path, tls, busy_port):
    sock = os.path.join(rundir, "tcp.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {},
                          listen=f"127.0.0.1:{busy_port}", **tls)
    d = start_daemon("--config", config, socket_path=sock, wait_ready=False)
    assert d.proc.wait(20) == 1
    line = error_line(d.log(), "cairnd")
    assert f"127.0.0.1:{busy_port}" in line and "in use" in line, line


def test_a_tcp_port_taken_after_the_checks_is_one_error_naming_why(rundir, tls, busy_port, capfd):
    """The listener itself (a port taken between cairnd's checks and its bind): a
    FailedPreconditionError with the reason, not gRPC's RuntimeError."""
    sock = os.path.join(rundir, "race.sock")
    server = RpcServer(CairnServicer(None), DaemonConfig(socket=sock, state_dir=os.path.join(rundir, "state"),
                                                          listen=f"127.0.0.1:{busy_port}", **tls))
    try:
        with pytest.raises(FailedPreconditionError) as refused:
            server.start()
        assert refused.value.message == f"unable to listen on '127.0.0.1:{busy_port}': Address already in use"
        assert "Failed to add port" not in capfd.readouterr().err  # gRPC was not asked: it would log its own line
    finally:
        with contextlib.suppress(Exception):
            server.stop(0).wait(10)
    assert not os.path.exists(sock)
