"""Bad input gets the right status or a clear one-line error, and the daemon serves on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import grpc
import pytest
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc
from cairnd_harness import CAIRN, CAIRND, env_for, init_repo, write_config
from mounts import mount_tmpfs


def run_cairnd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRND, *args], capture_output=True, text=True, timeout=timeout, env=env_for())


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('[[source]]\nname = "app"\npaths = ["/srv"]\nrpo = "soon"\n', "source[0].rpo"),
        ('[daemon]\nsockt = "/x"\n', "daemon.sockt"),
        ('[[source]]\nname = "app"\npaths = ["/srv"]\nschedule = { weekly = "0 3 * * 0" }\n', "source[0].schedule"),
        ('[[source]]\nname = "app"\npaths = ["/srv"]\nkeep = { last = 3 }\n', "source[0].keep: never applied"),
    ],
)
def test_malformed_config_exits_1_with_one_line_naming_the_key(tmp_path, body, key):
    path = tmp_path / "cairn.toml"
    path.write_text(f'[repository]\npath = "{tmp_path / "repo"}"\n' + body)
    r = run_cairnd("--config", str(path))
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert line.startswith("cairnd: error: invalid config") and key in line


@pytest.mark.parametrize(
    "args",
    [(), ("--config", "a.toml", "--repo", "r"), ("--bogus",), ("--config", "a.toml", "--source", "s"),
     # an empty value is not the option left out (the default socket, the key file of the config)
     ("--repo", ""), ("--config", " "), ("--repo", "r", "--socket", ""), ("--repo", "r", "--key-file", ""),
     ("--repo", "r", "--passphrase-file", ""), ("--repo", "r", "--socket-group", ""),
     # gRPC names the socket as text: a byte that is not UTF-8 was a traceback
     ("--repo", "r", "--socket", "/tmp/s\udcff.sock")],
)
def test_bad_arguments_exit_2_with_one_line(args, tmp_path):
    repo = init_repo(str(tmp_path / "r"))
    args = tuple(repo if a == "r" else a for a in args)
    r = run_cairnd(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert one_line(r.stderr).startswith("cairnd: error: ")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [(("--repo", "s3://b/p", "--stall-timeout", "soon"), 2,
      "cairnd: error: --stall-timeout: expected a duration like '5m', got 'soon'"),
     (("--repo", "s3://b/p", "--stall-timeout", "0s"), 2,
      "cairnd: error: --stall-timeout: expected a duration above zero, got '0s'"),
     (("--repo", "s3://b/p", "--stall-timeout", ""), 2,
      "cairnd: error: --stall-timeout needs a value, got an empty string"),
     (("--repo", "r", "--stall-timeout", "5m"), 2,
      "cairnd: error: --stall-timeout needs an s3:// repository, got --repo 'r'"),
     (("--config", "c", "--stall-timeout", "5m"), 1,
      "cairnd: error: --stall-timeout needs an s3:// repository; the configuration's repository.path is 'r'")],
)
def test_a_bad_stall_timeout_flag_is_one_line(args, code, line, tmp_path):
    """--stall-timeout is checked as [repository] stall_timeout is, before the store is asked."""
    repo = str(tmp_path / "r")
    config = tmp_path / "c.toml"
    config.write_text(f'[repository]\npath = "{repo}"\n')
    args = tuple({"r": repo, "c": str(config)}.get(a, a) for a in args)
    r = run_cairnd(*args)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert one_line(r.stderr) == line.replace("'r'", f"'{repo}'")


def test_read_only_daemon_needs_an_existing_repository(tmp_path, rundir):
    r = run_cairnd("--repo", str(tmp_path / "missing"), "--read-only", "--socket", os.path.join(rundir, "s"))
    assert r.returncode == 1
    assert "is not a Cairn repository" in r.stderr
    assert not os.path.exists(tmp_path / "missing")


def test_unreachable_daemon_is_one_clear_line(rundir):
    r = subprocess.run([CAIRN, "--socket", os.path.join(rundir, "nobody.sock"), "status"],
                       capture_output=True, text=True, timeout=30, env=env_for())
    assert r.returncode == 1
    assert r.stderr.startswith("cairn: error: unable to reach cairnd at unix socket")
    assert "hint: is cairnd running?" in r.stderr
    # wal-fetch as PostgreSQL's restore_command: an archive it cannot ask is not "no such file"
    # (exit 1-125: recovery would end there and promote early) but an exit above 125, which stops it
    pg_wal = os.path.join(rundir, "pg_wal")
    os.mkdir(pg_wal)
    r = subprocess.run([CAIRN, "--socket", os.path.join(rundir, "nobody.sock"), "wal-fetch",
                        "000000010000000000000007", os.path.join(pg_wal, "RECOVERYXLOG")],
                       capture_output=True, text=True, timeout=30, env=env_for())
    assert r.returncode > 125 and "unable to reach cairnd" in r.stderr, (r.returncode, r.stderr)
    assert not os.path.exists(os.path.join(pg_wal, "RECOVERYXLOG"))


def run_cairn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRN, *args], capture_output=True, text=True, timeout=30, env=env_for(env))


def test_sockets_and_addresses_that_cannot_be_used_are_one_line(rundir, tmp_path):
    """What stands at the socket path is named, not gRPC's dump; a socket path that is not UTF-8
    and a port outside 1-65535 are usage errors, not a traceback or another port."""
    (tmp_path / "afile").write_text("not a socket")
    listener = socket.socket(socket.AF_UNIX)  # a socket nobody accepts on
    listener.bind(os.path.join(rundir, "dead.sock"))
    listener.close()
    cases = [
        (("--socket", str(tmp_path / "afile"), "status"), None, 1, f"'{tmp_path / 'afile'}': it is not a socket"),
        (("--socket", os.path.join(rundir, "dead.sock"), "status"), None, 1,
         "nothing listens on it (connection refused)"),
        (("--socket", os.path.join(rundir, "none.sock"), "status"), None, 1, "': No such file or directory"),
        (("--socket", os.path.join(rundir, "s\udcff.sock"), "status"), None, 2, "is not valid UTF-8"),
        (("status",), {"CAIRN_SOCKET": os.path.join(rundir, "s\udcff.sock")}, 2, "is not valid UTF-8"),
        (("--address", "127.0.0.1:99999", "status"), None, 2, "port 99999 is outside 1-65535"),
        (("--address", "\udcff:1", "status"), None, 2, "is not valid UTF-8"),
        (("--address", "127.0.0.1:1", "--tls-server-name", "\udcff", "status"), None, 2, "is not valid UTF-8"),
    ]
    for args, env, code, text in cases:
        r = run_cairn(*args, env=env)
        assert r.returncode == code and "Traceback" not in r.stderr, (args, r.returncode, r.stderr)
        first = r.stderr.splitlines()[0]
        assert first.startswith("cairn: error: ") and text in first and "connect failed" not in first, (args, r.stderr)


def test_hook_commands_that_are_not_there_are_named_at_start_and_reload(start_daemon, rundir, tmp_path):
    """A freeze or thaw command that does not exist was first heard of when a set failed; the
    start and every reload now warn of each one (only warn: a tool may come after cairnd)."""
    (tmp_path / "src").mkdir()
    sock = os.path.join(rundir, "hooks.sock")
    config = write_config(str(tmp_path / "c.toml"), str(tmp_path / "repo"), sock, {"app": str(tmp_path / "src")})
    good = open(config, encoding="utf-8").read()
    missing = str(tmp_path / "no" / "freeze")
    with open(config, "a", encoding="utf-8") as f:
        f.write(f'quiesce = {{ mode = "cold", freeze = ["{missing}"], thaw = [["true"], ["no-such-thaw-cmd"]] }}\n')
    daemon = start_daemon("--config", config, socket_path=sock)
    log = daemon.log()
    assert f"source 'app': freeze hook '{missing}' is not an executable file" in log, log
    assert "source 'app': thaw hook 'no-such-thaw-cmd' is not found on PATH" in log, log
    assert "hook 'true'" not in log
    r = daemon.cli("backup")  # the set fails as before, in one line naming the hook
    assert r.returncode == 1 and one_line(r.stderr).startswith(
        f"cairn: error: freeze hook ({missing}) could not be started"), r.stderr

    mark = len(daemon.log().splitlines())
    with open(config, "w", encoding="utf-8") as f:
        f.write(good + 'quiesce = { mode = "cold", freeze = ["true"], on_failure = ["no-such-report-cmd"] }\n')
    daemon.proc.send_signal(signal.SIGHUP)
    end = time.monotonic() + 20
    while not any("configuration reloaded" in line for line in daemon.log().splitlines()[mark:]):
        assert time.monotonic() < end, daemon.log()
        time.sleep(0.05)
    lines = daemon.log().splitlines()[mark:]
    assert [line for line in lines if "level=warning" in line and "hook" in line] == [
        next(line for line in lines if "on_failure hook 'no-such-report-cmd' is not found on PATH" in line)], lines
    assert "source app" in daemon.ok("status")


@pytest.fixture
def served(start_daemon, rundir, tmp_path):
    """A daemon on a config with one source 'app' holding one full set."""
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file.txt").write_bytes(b"content\n")
    (src / "big.bin").write_bytes(os.urandom(24 << 20))
    sock = os.path.join(rundir, "bad.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)})
    daemon = start_daemon("--config", config, socket_path=sock)
    daemon.ok("backup", "--level", "full")
    return daemon


def still_serves(daemon) -> None:
    """The daemon answers and a backup still works."""
    assert "source app" in daemon.ok("status")
    out = daemon.ok("backup", "--source", "app")
    assert len(out.strip().splitlines()[-1]) == 64


def test_unknown_set_path_source_and_level(served, tmp_path):
    cases = [
        (("ls", "deadbeef"), 3, "deadbeef"),
        (("diff", "deadbeef", "latest"), 3, "deadbeef"),
        (("restore", "deadbeef", "--target", str(tmp_path / "t1")), 3, "deadbeef"),
        (("ls", "latest", "no/such/dir"), 3, "no/such/dir"),
        (("restore", "latest", "no/such/file", "--target", str(tmp_path / "t2")), 3, "no/such/file"),
        (("sets", "--source", "nope"), 3, "unknown source 'nope'"),
        (("backup", "--source", "nope"), 3, "unknown source 'nope'"),
        (("backup", "--level", "weekly"), 2, "unknown level 'weekly'"),
        (("verify", "--set", "deadbeef"), 3, "deadbeef"),
        (("restore-db", "latest", "--database", "db", "--target", str(tmp_path / "t3")), 3, "holds no database 'db'"),
        (("bogus",), 2, "invalid choice"),
    ]
    for args, code, text in cases:
        r = served.cli(*args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("cairn: error: ") and text in r.stderr.splitlines()[0], (args, r.stderr)
    # Nothing was written for refused restores.
    assert not os.path.exists(tmp_path / "t1") and not os.path.exists(tmp_path / "t2")
    # A source directory gone is a failure of the set (1), not a usage error (2).
    os.rename(tmp_path / "src", tmp_path / "src.away")
    r = served.cli("backup", "--level", "incremental")
    assert r.returncode == 1 and "unable to read source path" in r.stderr, (r.returncode, r.stderr)
    os.rename(tmp_path / "src.away", tmp_path / "src")
    still_serves(served)


def test_targets_and_patterns_the_client_cannot_use_are_one_line(served, tmp_path):
    """A target that cannot be made or written, and a pattern that is not text: one line on
    stderr (no traceback), a non-zero exit, nothing written."""
    (tmp_path / "afile").write_text("a file, not a directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    cases = [
        (("restore", "latest", "--target", str(tmp_path / "afile" / "sub")), 1, "Not a directory"),
        (("restore", "latest", "--target", str(tmp_path / "afile" / "sub"), "--stream"), 1, "Not a directory"),
        (("restore", "latest", "--target", ""), 2, "--target needs a directory"),
        (("restore", "latest", "--target", str(tmp_path / "t4"), "--include", "x\udcffy"), 2,
         "is not valid UTF-8"),
    ]
    if os.geteuid() != 0:
        cases.append((("restore", "latest", "--target", str(ro / "sub")), 1, "Permission denied"))
    for args, code, text in cases:
        r = served.cli(*args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert "Traceback" not in r.stderr and lines[0].startswith("cairn: error: ") and text in lines[0], \
            (args, r.stderr)
    assert not os.path.exists(tmp_path / "t4")


def test_empty_values_are_usage_errors_not_the_option_left_out(served, tmp_path):
    """protobuf sends "" as unset: `backup --source ""` took the only source, `verify --set ""`
    checked every set, `--socket ""` reached the default daemon, `--to-passphrase-file ""` was a
    traceback. Each is exit 2 and one line naming the option, and nothing runs."""
    before = served.ok("--json", "sets")
    cases = [
        (("backup", "--source", ""), "--source needs a source name"),
        (("backup", "--level", ""), "--level needs a level"),
        (("sets", "--source", " "), "--source needs a source name"),
        (("sets", "--host", ""), "--host needs a host name"),
        (("ls", "latest", "--host", ""), "--host needs a host name"),
        (("verify", "--set", ""), "--set needs a set id"),
        (("verify", "--read-data-subset", ""), "--read-data-subset needs"),
        (("prune", "--host", ""), "--host needs a host name"),
        (("prune", "--keep-within", ""), "--keep-within needs a duration"),
        (("prune", "--wal-keep", ""), "--wal-keep needs a duration"),
        (("copy", "--to", str(tmp_path / "copy"), "--to-passphrase-file", ""), "--to-passphrase-file needs a file"),
        (("key", "add", "--passphrase-file", ""), "--passphrase-file needs a file"),
        (("--token", "", "status"), "--token needs a token"),
        (("--socket", "", "status"), "--socket needs a socket path"),
        (("check-db", "db", "--timeout", "nan"), "argument --timeout"),
        (("check-db", "db", "--timeout", "-1"), "argument --timeout"),
    ]
    for args, text in cases:
        r = served.cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.returncode, r.stdout, r.stderr)
        assert r.stderr.startswith("cairn: error: ") and text in r.stderr.splitlines()[0], (args, r.stderr)
    assert served.ok("--json", "sets") == before  # no set was taken, none forgotten
    assert not os.path.exists(tmp_path / "copy")
    # the daemon refuses a timeout the client would not send
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.CairnStub(served.channel()).CheckDb(pb.CheckDbRequest(database="db", timeout=float("nan")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    still_serves(served)


def test_wal_push_of_a_file_that_is_not_regular_is_one_line(served, tmp_path):
    """A FIFO named like a segment held `wal-push` in its open (then its read) forever, and
    PostgreSQL's archiver with it: it is refused at once, as a directory is."""
    fifo = tmp_path / "000000010000000000000001"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        r = served.cli("wal-push", str(path), "--system-id", "1", timeout=20)
        assert r.returncode == 1, (path, r.returncode, r.stderr)
        assert one_line(r.stderr).startswith(f"cairn: error: unable to read WAL file '{path}': "), r.stderr
    still_serves(served)


@pytest.fixture
def read_only_fs(tmp_path):
    """A tmpfs holding an earlier restore target 'target', mounted read-only."""
    mnt = tmp_path / "rofs"
    mnt.mkdir()
    mount_tmpfs(str(mnt))
    (mnt / "target").mkdir()
    (mnt / "target" / "old.txt").write_text("an earlier copy\n")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True, timeout=30)
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_delta_restore_onto_a_read_only_file_system_is_one_line(served, read_only_fs):
    """A plain restore there failed in one line (its claim file), but a delta gave a warning for
    every entry it could not mend, then a summary: it is refused in one line before any call."""
    for target, extra in ((read_only_fs / "target", ()), (read_only_fs / "target", ("--stream",)),
                          (read_only_fs / "new" / "sub", ())):
        r = served.cli("restore", "latest", "--target", str(target), "--delta", *extra)
        assert r.returncode == 1, (target, extra, r.returncode, r.stderr)
        assert one_line(r.stderr) == f"cairn: error: unable to use '{target}': Read-only file system", r.stderr
    assert os.listdir(read_only_fs / "target") == ["old.txt"]
    r = served.cli("restore", "latest", "--target", str(read_only_fs / "target"), "--delta", "--dry-run")
    assert r.returncode == 0 and "nothing written" in r.stdout, r.stderr  # a dry run writes nothing: it may look
    still_serves(served)


def test_a_target_that_is_not_utf8_is_shown_escaped(served, tmp_path):
    """The target in restore's lines is shown as `ls -b` shows a name ('\\xff'), as every path
    for people is: it was printed as the raw byte on stdout and as '\\udcff' on stderr."""
    target = str(tmp_path / "t\udcff")  # the byte 0xff, as Python holds it
    shown = str(tmp_path / "t\\xff")
    for extra in ((), ("--stream",)):
        where = os.path.join(target, "-".join(extra) or "local")
        r = served.cli("restore", "latest", "--target", where, *extra)
        assert r.returncode == 0, (extra, r.stderr)
        last = r.stdout.splitlines()[-1]
        assert last.startswith("restored set ") and f" into {shown}/{'-'.join(extra) or 'local'}: " in last, last
    r = served.cli("restore", "latest", "--target", os.path.join(target, "local"), "--delta", "--dry-run")
    assert r.returncode == 0 and f"to write into {shown}/local; nothing written" in r.stdout, (r.stdout, r.stderr)
    for extra in ((), ("--delta",)):
        r = served.cli("restore", "latest", "--target", os.path.join(target, "local", "big.bin"), *extra)
        assert r.returncode == 2, (extra, r.returncode, r.stderr)
        assert one_line(r.stderr) == f"cairn: error: restore target '{shown}/local/big.bin' is not a directory"
    r = served.cli("restore", "latest", "--target", os.path.join(target, "local"))
    assert r.returncode == 1 and r.stderr.startswith(f"cairn: error: restore target '{shown}/local' is not empty\n")


def test_daemon_validates_what_the_client_does_not(served):
    stub = pb_grpc.CairnStub(served.channel())
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Backup(pb.BackupRequest(source="app", level="weekly")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.WalPush(iter([pb.WalPushRequest(name="../etc/passwd", data=b"x")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.WalPush(iter([pb.WalPushRequest(data=b"no name")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    still_serves(served)


def test_oversized_and_malformed_messages(served):
    channel = served.channel(**{"grpc.max_send_message_length": 64 << 20})
    stub = pb_grpc.CairnStub(channel)
    huge = "x" * (5 << 20)
    with pytest.raises(grpc.RpcError) as err:
        stub.ListSets(pb.ListSetsRequest(source=huge))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:
        stub.WalPush(iter([pb.WalPushRequest(name="000000010000000000000001", data=os.urandom(5 << 20))]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    garbage = b"\x0a\xff\xff\xff\xff\x0f\x01"  # a length-delimited field longer than the message
    unary = channel.unary_unary("/cairn.v1.Cairn/ListSets")
    with pytest.raises(grpc.RpcError) as err:
        unary(garbage)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in err.value.details()
    streaming = channel.unary_stream("/cairn.v1.Cairn/Restore")
    with pytest.raises(grpc.RpcError) as err:
        list(streaming(b"\xff\xff\xff"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/cairn.v1.Cairn/NoSuchMethod")(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()
    still_serves(served)


def test_client_that_disconnects_mid_restore(served, tmp_path):
    channel = served.channel()
    stub = pb_grpc.CairnStub(channel)
    call = stub.Restore(pb.RestoreRequest(set="latest", source="app"))
    first = next(call)
    assert first.set.source == "app"
    next(call)
    call.cancel()
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.CANCELLED
    channel.close()

    # A client process killed in the middle of a restore.
    proc = subprocess.Popen([CAIRN, "--socket", served.socket, "restore", "latest", "--target", str(tmp_path / "k")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for())
    while not os.path.exists(tmp_path / "k"):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    proc.kill()
    proc.wait(10)

    still_serves(served)
    served.ok("restore", "latest", "--target", str(tmp_path / "full"))
    assert (tmp_path / "full" / "dir" / "file.txt").read_bytes() == b"content\n"
    assert os.path.getsize(tmp_path / "full" / "big.bin") == 24 << 20
