"""Client rules that must agree with the daemon: the default socket, exit codes, argument errors."""

from __future__ import annotations

import grpc
import pytest
from cairn.client import cli
from cairn.client.connection import default_socket, resolve_endpoint
from cairn.daemon.runtime import config as daemon_config


@pytest.mark.parametrize(
    "env",
    [
        {"XDG_RUNTIME_DIR": "/run/user/1000"},
        {"CAIRN_HOME": "/var/lib/cairn-home"},
        {"STATE_DIRECTORY": "/var/lib/cairn:/other"},
        {},
    ],
)
def test_client_default_socket_is_the_daemons(monkeypatch, env):
    for key in ("XDG_RUNTIME_DIR", "CAIRN_HOME", "STATE_DIRECTORY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    daemon_side = daemon_config.default_socket(daemon_config.default_home())
    assert default_socket() == daemon_side


def test_socket_precedence_and_remote_endpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("CAIRN_SOCKET", "/env/s.sock")
    assert resolve_endpoint().socket == "/env/s.sock"
    assert resolve_endpoint(socket="/flag.sock").socket == "/flag.sock"
    token = tmp_path / "t"
    token.write_text("abc\n")
    remote = resolve_endpoint(address="host:7443", tls_ca="/ca.pem", token_file=str(token))
    assert (remote.address, remote.socket, remote.token) == ("host:7443", None, "abc")
    with pytest.raises(Exception, match="exclude each other"):
        resolve_endpoint(socket="/x", address="host:1")
    with pytest.raises(Exception, match="--token and --token-file exclude each other"):
        resolve_endpoint(address="host:7443", token="x", token_file=str(token))
    assert resolve_endpoint(address="[::1]:7443").address == "[::1]:7443"
    for bad in ("host", "127.0.0.1", "::1", "host:", "host:port"):  # no silent default port
        with pytest.raises(Exception, match=r"invalid --address .*give HOST:PORT"):
            resolve_endpoint(address=bad)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, hint=None):
        self._code, self._details, self._hint = code, details, hint

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return (("cairn-hint", self._hint),) if self._hint else ()


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.NOT_FOUND, 3),
        (grpc.StatusCode.INVALID_ARGUMENT, 2),
        (grpc.StatusCode.FAILED_PRECONDITION, 1),
        (grpc.StatusCode.DATA_LOSS, 1),
        (grpc.StatusCode.UNAVAILABLE, 1),
    ],
)
def test_status_codes_become_exit_codes_and_one_error_line(capsys, code, exit_code):
    err = FakeRpcError(code, "unknown set 'ab12'\nsecond line", hint="try cairn sets")
    assert cli._rpc_failure(err, resolve_endpoint(socket="/s.sock")) == exit_code
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("cairn: error: ") and "\n" not in lines[0]
    assert lines[1].startswith("hint: ")


def test_usage_errors_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["restore", "latest"])  # --target missing
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("cairn: error: ") and "--target" in err[0]


def test_restore_refuses_a_non_empty_target_before_calling_the_daemon(tmp_path, capsys):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "keep").write_text("x")
    code = cli.main(["--socket", str(tmp_path / "no.sock"), "restore", "latest", "--target", str(tmp_path / "t")])
    assert code == 1
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "t" / "keep").read_text() == "x"


def test_the_command_exits_at_once_with_mains_code_and_all_its_output(tmp_path) -> None:
    """`cairn` (cli.run) skips the interpreter's teardown: the exit code is main's, and what was
    printed into a pipe's buffer still arrives, also for argparse's exits."""
    import os
    import subprocess
    import sys

    def cairn(*args: str) -> subprocess.CompletedProcess:
        code = "import sys; from cairn.client.cli import run; sys.argv = ['cairn', *sys.argv[1:]]; run()"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # pipes block-buffered
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                              env=env)

    r = cairn("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: cairn") and "restore" in r.stdout
    full = cli.build_parser().format_help()
    assert r.stdout.rstrip("\n").endswith(full.rstrip("\n")[-200:])
    r = cairn("--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    r = cairn("--socket", str(tmp_path / "no.sock"), "--json", "status")
    assert r.returncode == 1 and "unable to reach cairnd" in (r.stderr + r.stdout)


def test_a_daemon_that_stops_during_the_call_is_not_reported_unreachable(capsys):
    """grpc ends calls of a stopping server with UNAVAILABLE "Cancelling all calls": the daemon
    was reached, it stopped; the client says so instead of "is cairnd running?"."""
    err = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Cancelling all calls")
    assert cli._rpc_failure(err, resolve_endpoint(socket="/s.sock")) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "cairn: error: cairnd at unix socket '/s.sock' stopped while this call ran", lines
    assert "run the command again" in lines[1]
    assert "'cairn sets' shows whether" in lines[1] and "not committed" not in lines[1]  # it may have committed


def test_a_call_cut_off_mid_stream_says_the_connection_was_lost(capsys):
    """The daemon died while a restore streamed: the client reached it, so not 'is cairnd
    running?' but what was lost and how to finish."""
    err = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Stream removed (recvmsg:Connection reset by peer (104))")
    assert cli._rpc_failure(err, resolve_endpoint(address="127.0.0.1:7443", tls_ca="/ca.pem")) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("cairn: error: the connection to cairnd at ") and "was lost during the call" in lines[0]
    assert "--delta" in lines[1] and "--tls-ca" not in lines[1]
    assert "'cairn sets' shows whether" in lines[1] and "not committed" not in lines[1]  # it may have committed


def test_a_ca_file_that_holds_no_certificate_is_named(tmp_path):
    from cairn.client.connection import open_channel
    from cairn.errors import InvalidArgumentError

    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(InvalidArgumentError, match="holds no certificate"):
        open_channel(resolve_endpoint(address="127.0.0.1:7443", tls_ca=str(bad)))
