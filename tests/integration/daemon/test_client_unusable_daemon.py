"""A daemon the client reaches but cannot use is named for what it is, in one line: a socket this
user may not connect to, a daemon of another version that does not serve the call."""

from __future__ import annotations

import os
import subprocess
from concurrent import futures

import grpc
import pytest
from cairn import __version__
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairnd_harness import CAIRN, env_for, write_config

# Another user, able to read (and run) the client wherever it is installed, nothing more.
NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
          "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_a_socket_this_user_may_not_use_is_permission_denied_not_nothing_listens(start_daemon, rundir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sock = os.path.join(rundir, "cairnd.sock")
    config = write_config(str(tmp_path / "cairnd.toml"), str(tmp_path / "repo"), sock, {"app": str(src)},
                          socket_mode="0600")
    daemon = start_daemon("--config", config, socket_path=sock)
    r = subprocess.run([*NOBODY, CAIRN, "--socket", sock, "sets"], capture_output=True, text=True, timeout=30,
                       env=env_for())
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    first, hint = r.stderr.splitlines()
    assert first.startswith(f"cairn: error: unable to reach cairnd at unix socket '{sock}': Permission denied"), first
    assert "mode 0600" in first and "this user is nobody" in first and "nothing listens" not in first, first
    assert hint.startswith("hint: ") and "socket_group" in hint, hint
    daemon.ok("sets")  # the daemon serves on, and its own user reaches it


def _older_daemon(sock: str) -> grpc.Server:
    """A server standing where cairnd's socket is, as a daemon of another version does: it answers
    Status (with its version) and knows none of the other calls."""
    def status(request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        return pb.StatusReply(daemon=pb.DaemonInfo(version="0.0.1"))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(status, request_deserializer=pb.StatusRequest.FromString,
                                                  response_serializer=pb.StatusReply.SerializeToString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("cairn.v1.Cairn", {"Status": handler})])
    server.add_insecure_port("unix:" + sock)
    server.start()
    return server


def test_a_daemon_of_another_version_is_named_with_both_versions(rundir, tmp_path):
    sock = os.path.join(rundir, "old.sock")
    server = _older_daemon(sock)
    try:
        target = tmp_path / "target"
        for args in (("sets",), ("restore", "latest", "--target", str(target)), ("--json", "sets")):
            r = subprocess.run([CAIRN, "--socket", sock, *args], capture_output=True, text=True, timeout=30,
                               env=env_for())
            assert r.returncode == 1 and r.stdout == "", (args, r.returncode, r.stdout, r.stderr)
            assert "Method not" not in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
            assert "(cairnd 0.0.1) does not serve the call" in r.stderr, (args, r.stderr)
            assert f"another version of Cairn than this client (cairn {__version__})" in r.stderr, (args, r.stderr)
            if args[0] != "--json":
                assert len(r.stderr.splitlines()) == 2 and r.stderr.splitlines()[1].startswith("hint: "), r.stderr
        assert not target.exists()
    finally:
        server.stop(None)
