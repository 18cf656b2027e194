"""SIGTERM in the middle of a large backup, one backup per source, and a daemon that cannot
write the restore target: the client writes the files, not the daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc
from cairn.store.repository import Repository
from cairnd_harness import snapshot, write_config

SHUTDOWN_TIMEOUT = 10


def test_sigterm_during_a_backup_stops_in_time_and_leaves_a_sound_repository(
    start_daemon, rundir, tmp_path, big_tree
):
    small = tmp_path / "small"
    small.mkdir()
    (small / "note.txt").write_text("small source\n")
    repo = str(tmp_path / "repo")
    sock = os.path.join(rundir, "term.sock")
    config = write_config(str(tmp_path / "cairn.toml"), repo, sock, {"big": big_tree, "small": str(small)},
                          shutdown_timeout=SHUTDOWN_TIMEOUT)
    daemon = start_daemon("--config", config, socket_path=sock)
    channel = daemon.channel()
    stub = pb_grpc.CairnStub(channel)

    call = stub.Backup(pb.BackupRequest(source="big", level="full"))
    started = next(call)
    assert started.started.source == "big"
    progress = next(call)
    assert progress.WhichOneof("event") == "progress"

    # One backup per source: a second request gets a clear answer, not a second job.
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Backup(pb.BackupRequest(source="big", level="full")))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "a backup of source 'big' is already running (started" in err.value.details()
    # Listings run alongside the backup; status shows it running.
    status = json.loads(daemon.ok("--json", "status"))
    running = {s["name"]: s["running"] for s in status["sources"]}
    assert running["big"]["level"] == "full" and running["small"] is None

    code, took = daemon.terminate(timeout=SHUTDOWN_TIMEOUT + 5)
    assert took < SHUTDOWN_TIMEOUT + 1
    assert code == 0, daemon.log()
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    # The client following the backup was told why it ended.
    assert err.value.code() == grpc.StatusCode.ABORTED
    channel.close()

    # The unfinished set was abandoned safely: the repository checks clean and lists no such set.
    r = Repository.open_local(repo)
    try:
        report = r.check()
        assert report.ok, report.errors
        assert [s.source for s in r.list_sets()] == []
    finally:
        r.close()

    # The next start works, and so does a backup.
    again = start_daemon("--config", config, socket_path=sock)
    set_id = again.ok("backup", "--source", "small", "--level", "full").strip().splitlines()[-1]
    assert [(s["id"], s["source"]) for s in json.loads(again.ok("--json", "sets"))] == [(set_id, "small")]


UNPRIVILEGED = (
    "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
    # Read (and search) everything, as a backup daemon must; write nothing it does not own.
    "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
)


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a daemon as another user")
def test_daemon_without_write_access_to_the_target_still_restores(start_daemon, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data.bin").write_bytes(os.urandom(2 << 20))
    (src / "top.txt").write_text("top\n")
    os.chmod(src / "top.txt", 0o640)
    os.symlink("sub/data.bin", src / "link")
    repo = str(tmp_path / "repo")
    writer = start_daemon("--repo", repo, "--source", str(src))
    writer.ok("backup", "--level", "full")
    assert writer.terminate(timeout=20)[0] == 0

    daemon = start_daemon("--repo", repo, "--read-only", prefix=UNPRIVILEGED)
    assert _uid_of(daemon.proc.pid) == 65534
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    # The daemon's user cannot write the target...
    probe = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", f"open({str(target / 'x')!r}, 'w')"],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr
    # ...and the restore still succeeds, because the client writes.
    daemon.ok("restore", "latest", "--target", str(target), "--overwrite")
    assert snapshot(str(target)) == snapshot(str(src))
    assert os.stat(target / "top.txt").st_uid == 0


def test_sigterm_while_idle_exits_zero_with_stopping(start_daemon, tmp_path):
    daemon = start_daemon("--repo", str(tmp_path / "repo"))
    before = daemon.notify.count()
    daemon.proc.send_signal(signal.SIGINT)
    try:
        code = daemon.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"an idle daemon did not exit within 10 s of SIGINT:\n{daemon.log()}") from None
    assert code == 0, daemon.log()
    assert daemon.notify.wait_for("STOPPING=1", 1, after=before)


def _tgkill(pid: int, tid: int, sig: int) -> None:
    """Send `sig` to one thread of another process (what the kernel may do with any signal)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, tid, sig) != 0:  # SYS_tgkill on x86-64
        raise OSError(ctypes.get_errno(), "tgkill failed")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the tgkill syscall number is x86-64's")
def test_sigterm_on_a_worker_thread_stops_the_daemon_at_once(start_daemon, tmp_path):
    """The kernel delivers a process's signal to any thread that does not block it. One that
    lands on a worker thread must still wake the main loop now (it used to wait for the loop's
    next 5 s tick), and, taken there, never hang it (the old handler could deadlock inside the
    main loop's own wait)."""
    import time

    daemon = start_daemon("--repo", str(tmp_path / "repo"))
    pid = daemon.proc.pid
    worker = next(int(t) for t in sorted(os.listdir(f"/proc/{pid}/task"), key=int) if int(t) != pid)
    t = time.monotonic()
    _tgkill(pid, worker, signal.SIGTERM)
    try:
        code = daemon.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the daemon did not stop within 10 s of SIGTERM:\n{daemon.log()}") from None
    took = time.monotonic() - t
    assert code == 0, daemon.log()
    assert took < 3.0, f"stopping took {took:.1f} s: the signal waited for the main loop's tick"
