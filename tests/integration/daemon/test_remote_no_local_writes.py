"""A caller on the TCP listener never makes the daemon write on the daemon's own host.

A local restore (the daemon writes the target itself) is asked for with a claim file in the
target; the claim shows who made the file on this host, not that the caller is on it. Over TCP
the request is refused before anything is read or written, even when a valid claim exists at
the path it names; the same request through the Unix socket is served."""

from __future__ import annotations

import base64
import os
import subprocess

import grpc
import pytest
from cairn.fsio import claims
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc
from cairnd_harness import CAIRN, env_for, tcp_config

NONCE = "0123456789abcdef0123456789abcdef"





def _claimed(directory, extra: bool = False) -> str:
    directory.mkdir()
    claims.make_claim(str(directory / (claims.CLAIM_PREFIX + NONCE)), NONCE)
    if extra:
        (directory / "precious").write_text("keep me\n")
    return str(directory)


def _contents(directory) -> dict[str, str]:
    return {p.name: p.read_text() for p in directory.iterdir()}


def test_a_tcp_caller_cannot_make_the_daemon_write_on_its_host(start_daemon, rundir, tmp_path, tls_files):
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("from the set\n")
    config, sock, address = tcp_config(rundir, tmp_path, tls_files, str(src))
    daemon = start_daemon("--config", config, socket_path=sock)
    daemon.ok("backup", "--level", "full")
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(open(tls_files["ca"], "rb").read()),
        grpc.access_token_call_credentials("s3cret-token"))

    plain = tmp_path / "plain"
    delta = tmp_path / "delta"
    requests = {
        plain: pb.RestoreRequest(set="latest", local_claim=NONCE, target_path=os.fsencode(_claimed(plain))),
        delta: pb.RestoreRequest(set="latest", local_claim=NONCE, delta=True, delete=True,
                                 target_path=os.fsencode(_claimed(delta, extra=True))),
    }
    with grpc.secure_channel(address, creds) as channel:
        stub = pb_grpc.CairnStub(channel)
        for target, request in requests.items():
            before = _contents(target)
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Restore(request, timeout=30))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
            assert "local write" in err.value.details() and "TCP" in err.value.details()
            assert _contents(target) == before  # nothing written, nothing removed, the claim left alone

    # The same claim through the Unix socket: the daemon writes (the refusal above was the listener's).
    with grpc.insecure_channel("unix:" + sock) as channel:
        replies = list(pb_grpc.CairnStub(channel).Restore(requests[plain], timeout=30))
    assert replies and (plain / "hello.txt").read_text() == "from the set\n"


def test_copy_to_a_relative_path_is_the_callers_or_refused(start_daemon, rundir, tmp_path, tls_files):
    """`cairn copy --to DIR` with a relative DIR: through the socket it is the caller's working
    directory's DIR (the daemon is on the same host); over TCP the daemon refuses it (exit 2)
    instead of making the copy relative to its own working directory."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("copied\n")
    daemon_cwd, client_cwd = tmp_path / "daemon-cwd", tmp_path / "client-cwd"
    daemon_cwd.mkdir()
    client_cwd.mkdir()
    key = tmp_path / "copy.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    config, sock, address = tcp_config(rundir, tmp_path, tls_files, str(src))
    daemon = start_daemon("--config", config, socket_path=sock, prefix=("env", "-C", str(daemon_cwd)))
    daemon.ok("backup", "--level", "full")

    def cairn(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CAIRN, *args], cwd=client_cwd, capture_output=True, text=True, timeout=120,
                              env=env_for())

    local = cairn("--socket", sock, "copy", "--to", "near", "--to-key-file", str(key))
    assert local.returncode == 0, local.stderr
    assert (client_cwd / "near" / "config").exists() and not (daemon_cwd / "near").exists()

    remote = cairn("--address", address, "--tls-ca", tls_files["ca"], "--token-file",
                   tls_files["token"], "copy", "--to", "far", "--to-key-file", str(key))
    assert remote.returncode == 2, remote.stderr
    assert "'far' is not an absolute path" in remote.stderr
    assert list(daemon_cwd.iterdir()) == [] and not (client_cwd / "far").exists()
