"""The daemon as systemd and operators see it: readiness and watchdog notifications, health,
socket permissions, reload on SIGHUP, TCP with TLS and a token, a clean stop."""

from __future__ import annotations

import grp
import json
import os
import signal
import stat
import subprocess
import time

import grpc
import pytest
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc
from cairnd_harness import CAIRN, CAIRND, env_for, free_port, openssl, tcp_config, write_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def test_ready_watchdog_health_reflection_socket_mode_and_stop(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    daemon = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src), watchdog_usec=400_000)
    assert daemon.notify.wait_for("READY=1", 0)
    assert daemon.notify.wait_for("STATUS=", 0)
    assert daemon.notify.wait_for("WATCHDOG=1", 5)

    mode = os.stat(daemon.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660

    channel = daemon.channel()
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "cairn.v1.Cairn"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    # Reflection lists the API, so generic tools (grpcurl) can talk to the daemon.
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"cairn.v1.Cairn", "grpc.health.v1.Health"} <= names
    channel.close()

    before = daemon.notify.count()
    code, took = daemon.terminate(timeout=30)
    assert code == 0 and took < 10
    assert daemon.notify.wait_for("STOPPING=1", 1, after=before)
    assert not os.path.exists(daemon.socket)


def test_second_daemon_on_the_same_socket_is_refused(start_daemon, tmp_path):
    first = start_daemon("--repo", str(tmp_path / "repo"))
    r = subprocess.run(
        [os.path.join(os.path.dirname(CAIRN), "cairnd"), "--repo", str(tmp_path / "repo2"), "--socket", first.socket],
        capture_output=True, text=True, timeout=20, env=env_for(),
    )
    assert r.returncode == 1 and "another cairnd is serving it" in r.stderr
    assert str(tmp_path / "repo") + "\n" in first.ok("status")


def test_sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_invalid(start_daemon, rundir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "f").write_text("b")
    sock = os.path.join(rundir, "hup.sock")
    config = str(tmp_path / "cairn.toml")
    write_config(config, str(tmp_path / "repo"), sock, {"one": str(a)})
    daemon = start_daemon("--config", config, socket_path=sock)

    def names() -> list[str]:
        return [s["name"] for s in json.loads(daemon.ok("--json", "status"))["sources"]]

    assert names() == ["one"]
    write_config(config, str(tmp_path / "repo"), sock, {"one": str(a), "two": str(b)})
    before = daemon.notify.count()
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.notify.wait_for("RELOADING=1", 5, after=before)
    assert daemon.notify.wait_for("READY=1", 5, after=before)
    assert names() == ["one", "two"]
    daemon.ok("backup", "--source", "two", "--level", "full")

    with open(config, "a", encoding="utf-8") as f:
        f.write('\n[[source]]\nname = "three"\npaths = ["/srv"]\nrpo = "soon"\n')
    before = daemon.notify.count()
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.notify.wait_for("READY=1", 5, after=before)
    assert names() == ["one", "two"]
    deadline = time.monotonic() + 5
    while "reload failed" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "source[2].rpo" in daemon.log()
    assert daemon.alive
    daemon.ok("backup", "--source", "two")





def test_a_recovery_daemon_listens_on_tcp_from_its_command_line(start_daemon, tmp_path, tls_files):
    """`cairnd --repo R --read-only --listen ... --tls-cert ... --tls-key ... --token-file ...`: the
    disaster-recovery daemon serves remote clients with no configuration file to write."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("from the lost host\n")
    repo = str(tmp_path / "repo")
    writer = start_daemon("--repo", repo, "--source", str(src))
    writer.ok("backup", "--level", "full")
    writer.terminate(30)

    address = f"127.0.0.1:{free_port()}"
    tcp = ["--listen", address, "--tls-cert", tls_files["cert"], "--tls-key", tls_files["key"],
           "--token-file", tls_files["token"]]
    start_daemon("--repo", repo, "--read-only", *tcp)
    remote = [CAIRN, "--address", address, "--tls-ca", tls_files["ca"], "--token-file", tls_files["token"]]
    r = subprocess.run([*remote, "restore", "latest", "--target", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=60, env=env_for())
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "f.txt").read_text() == "from the lost host\n"
    r = subprocess.run([CAIRN, "--address", address, "--tls-ca", tls_files["ca"], "sets"], capture_output=True,
                       text=True, timeout=30, env=env_for())
    assert r.returncode == 1 and "refused the call" in r.stderr  # the token is required, as with daemon.listen

    # The flags go together: one line, exit 2, before anything starts.
    for args, expected in (
        (["--read-only", *tcp[:6]],
         "cairnd: error: --listen needs --token-file: TCP is served only with TLS and a token"),
        (["--read-only", *tcp[2:]], "cairnd: error: --tls-cert, --tls-key and --token-file go with --listen HOST:PORT"),
        (["--read-only", "--listen", "nowhere", *tcp[2:]], "cairnd: error: --listen: "),
        (["--init", *tcp], "cairnd: error: --init creates the repository and exits; --listen does not go with it"),
    ):
        r = subprocess.run([CAIRND, "--repo", repo, *args], capture_output=True, text=True,
                           timeout=30, env=env_for())
        assert r.returncode == 2 and r.stderr.startswith(expected) and r.stderr.count("\n") == 1, (args, r.stderr)
    # With a configuration, the flags complete or replace its keys; a listener still needs all three.
    config = tmp_path / "cairnd.toml"
    config.write_text(f'[repository]\npath = "{repo}"\n[daemon]\nread_only = true\n'
                      f'socket = "{tmp_path / "s.sock"}"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'tls_cert = "{tls_files["cert"]}"\n')
    r = subprocess.run([CAIRND, "--config", str(config), "--listen", address, "--check-config"],
                       capture_output=True, text=True, timeout=60, env=env_for())
    assert r.returncode == 1 and r.stderr.strip() == (
        "cairnd: error: a TCP listener needs --tls-key, --token-file (or daemon.tls_key, daemon.token_file in the "
        "configuration): TCP is served only with TLS and a token"), r.stderr


def test_tcp_needs_tls_and_the_token(start_daemon, rundir, tmp_path, tls_files):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("remote\n")
    config, sock, address = tcp_config(rundir, tmp_path, tls_files, str(src))
    daemon = start_daemon("--config", config, socket_path=sock)
    daemon.ok("backup", "--level", "full")
    ca = open(tls_files["ca"], "rb").read()

    # TLS without the token, and with a wrong one: refused.
    for creds in (
        grpc.ssl_channel_credentials(ca),
        grpc.composite_channel_credentials(grpc.ssl_channel_credentials(ca), grpc.access_token_call_credentials("no")),
    ):
        with grpc.secure_channel(address, creds) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.CairnStub(channel).ListSets(pb.ListSetsRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                list(pb_grpc.CairnStub(channel).Restore(pb.RestoreRequest(set="latest"), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Plain text on the TCP port: no answer at all.
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.CairnStub(channel).ListSets(pb.ListSetsRequest(), timeout=5)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    # The client with the CA and the token file: works, restores from "another host".
    remote = [CAIRN, "--address", address, "--tls-ca", tls_files["ca"]]
    r = subprocess.run([*remote, "sets"], capture_output=True, text=True, timeout=30, env=env_for())
    assert r.returncode == 1 and "refused the call" in r.stderr
    ok = subprocess.run([*remote, "--token-file", tls_files["token"], "restore", "latest",
                         "--target", str(tmp_path / "out")], capture_output=True, text=True, timeout=30, env=env_for())
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "f.txt").read_text() == "remote\n"
    # PATH arguments after the options, as the interface writes them
    ok = subprocess.run([*remote, "--token-file", tls_files["token"], "restore", "latest", "--target",
                         str(tmp_path / "out2"), "f.txt"], capture_output=True, text=True, timeout=30, env=env_for())
    assert ok.returncode == 0 and [p.name for p in (tmp_path / "out2").rglob("*") if p.is_file()] == ["f.txt"], \
        ok.stderr
    r = subprocess.run([*remote, "--token", "x", "--token-file", tls_files["token"], "sets"], capture_output=True,
                       text=True, timeout=30, env=env_for())
    assert r.returncode == 2 and "exclude each other" in r.stderr
    # a CA that did not sign the daemon's certificate: the client's one line and hint, no library log
    other = tmp_path / "other-ca"
    other.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=another CA", cwd=str(other))
    r = subprocess.run([CAIRN, "--address", address, "--tls-ca", str(other / "ca.pem"), "--token-file",
                        tls_files["token"], "sets"], capture_output=True, text=True, timeout=30, env=env_for())
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and lines[0].startswith(f"cairn: error: unable to reach cairnd at {address}"), r.stderr
    assert len(lines) == 2 and "--tls-ca" in lines[1], r.stderr


def test_metrics_endpoint_counts_sets_and_the_socket_gets_its_group(start_daemon, rundir, tmp_path):
    import urllib.request

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    port = free_port()
    sock = os.path.join(rundir, "metrics.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": str(src)},
                          schedules={"app": {"full": "0 3 * * 0", "incremental": "*/5 * * * *"}},
                          metrics=f"127.0.0.1:{port}", socket_group="nogroup")
    daemon = start_daemon("--config", config, socket_path=sock)
    st = os.stat(sock)
    assert st.st_gid == grp.getgrnam("nogroup").gr_gid and stat.S_IMODE(st.st_mode) == 0o660
    daemon.ok("backup", "--level", "full")
    assert daemon.cli("backup", "--source", "app", "--level", "full").returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert 'cairn_sets_total{level="full",source="app",status="success"} 2.0' in text
    assert 'cairn_last_success_timestamp_seconds{level="full",source="app"}' in text

    # Status shows the scheduler's next runs, soonest first.
    source = json.loads(daemon.ok("--json", "status"))["sources"][0]
    runs = source["next_runs"]
    assert set(runs) == {"full", "incremental"} and list(runs) == ["incremental", "full"]
    assert time.time() < runs["incremental"] <= time.time() + 300
    assert "next incremental:" in daemon.ok("status")
