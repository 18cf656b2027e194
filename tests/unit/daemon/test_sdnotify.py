"""sd_notify messages over a real datagram socket, the watchdog interval and the pinger."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
from cairn.daemon.runtime.sdnotify import Notifier, WatchdogPinger, watchdog_interval


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_reach_the_socket(listener):
    path, sock = listener
    notifier = Notifier(env={"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving 2 sources")
    assert receive(sock) == ["READY=1", "STATUS=serving 2 sources"]
    assert notifier.status("backup of app:\n 40%")
    assert receive(sock) == ["STATUS=backup of app: 40%"]
    assert notifier.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]
    assert notifier.reloading()
    fields = receive(sock)
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
    assert int(fields[1].split("=")[1]) > 0
    assert notifier.stopping("stopping: waiting for set")
    assert receive(sock) == ["STOPPING=1", "STATUS=stopping: waiting for set"]


def test_abstract_socket_names():
    name = f"cairn-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == ["READY=1"]
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op():
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_unreachable_socket_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False
    assert "unable to notify systemd" in caplog.text


def test_reads_the_process_environment(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert Notifier().stopping()
    assert receive(sock) == ["STOPPING=1"]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert watchdog_interval(env) == expected


def test_pinger_pings_while_healthy_and_withholds_when_not(listener):
    path, sock = listener
    healthy = [True]
    pinger = WatchdogPinger(Notifier(env={"NOTIFY_SOCKET": path}), interval=0.02, healthy=lambda: healthy[0])
    pinger.start()
    try:
        assert receive(sock) == ["WATCHDOG=1"]
        assert receive(sock) == ["WATCHDOG=1"]
        healthy[0] = False
        # Drain pings that raced with the switch, then expect silence.
        sock.settimeout(0.2)
        drained = 0
        while True:
            try:
                sock.recv(4096)
                drained += 1
            except TimeoutError:
                break
        assert drained <= 2
        assert pinger.unhealthy_reported
        healthy[0] = True
        sock.settimeout(2)
        assert receive(sock) == ["WATCHDOG=1"]
    finally:
        assert pinger.stop(2)
    assert pinger.healthy


def test_pinger_treats_a_failing_health_check_as_unhealthy(listener):
    path, sock = listener

    def broken() -> bool:
        raise RuntimeError("boom")

    pinger = WatchdogPinger(Notifier(env={"NOTIFY_SOCKET": path}), interval=0.02, healthy=broken)
    pinger.start()
    try:
        sock.settimeout(0.15)
        with pytest.raises(TimeoutError):
            sock.recv(4096)
    finally:
        assert pinger.stop(2)
    assert pinger.failure is None
