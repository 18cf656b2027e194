"""The systemd notification protocol: READY, STATUS, RELOADING, STOPPING (with the time the
stop may need, EXTEND_TIMEOUT_USEC) and watchdog pings.

Messages are datagrams sent to $NOTIFY_SOCKET (a path, or an abstract name written with a
leading '@'). Without that variable every call is a no-op, so the daemon behaves the same
outside systemd. Sending never raises: a lost notification is logged, not fatal.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from cairn.daemon.runtime.threads import ServiceThread

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to the socket systemd gave us (or does nothing)."""

    def __init__(self, address: str | None = None, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self.address = address if address is not None else environ.get("NOTIFY_SOCKET") or None

    @property
    def enabled(self) -> bool:
        """True when a notification socket is known."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send "KEY=value" fields as one datagram; return True if it was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        payload = "\n".join(fields).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, target)
        except OSError as exc:
            log.warning("unable to notify systemd at '%s': %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup finished (also ends a reload)."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """Set the one-line status `systemctl status` shows."""
        return self.notify(*_status(text))

    def reloading(self, status: str | None = None) -> bool:
        """A configuration reload started; follow with ready() when done."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", *_status(status))

    def stopping(self, status: str | None = None, needs: float | None = None) -> bool:
        """Shutdown started; with `needs`, it may take that many seconds from now, and systemd's
        stop timeout (TimeoutStopSec) is extended to them should it end sooner."""
        extend = () if needs is None else (f"EXTEND_TIMEOUT_USEC={max(1, int(needs * 1_000_000))}",)
        return self.notify("STOPPING=1", *extend, *_status(status))

    def watchdog(self) -> bool:
        """Tell the watchdog we are alive."""
        return self.notify("WATCHDOG=1")


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.split()),)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None if no watchdog is for us."""
    environ = os.environ if env is None else env
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text:
        try:
            if int(pid_text) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


class WatchdogPinger(ServiceThread):
    """Sends WATCHDOG=1 every `interval` seconds while `healthy()` says the daemon is well.

    When the daemon is unhealthy (a service thread died) the pings stop, so systemd's
    watchdog restarts the unit instead of keeping a half-dead daemon around.
    """

    def __init__(
        self, notifier: Notifier, interval: float, healthy: Callable[[], bool] | None = None
    ) -> None:
        super().__init__(name="watchdog")
        self._notifier = notifier
        self._interval = interval
        self._healthy = healthy or (lambda: True)
        self.unhealthy_reported = False

    def run_safe(self) -> None:
        while True:
            self._ping_once()
            if self.wait(self._interval):
                return

    def _ping_once(self) -> None:
        try:
            healthy = self._healthy()
        except Exception as exc:  # a broken health check counts as unhealthy
            log.error("health check failed: %s", exc)
            healthy = False
        if healthy:
            self.unhealthy_reported = False
            self._notifier.watchdog()
        elif not self.unhealthy_reported:
            self.unhealthy_reported = True
            log.error("daemon unhealthy: watchdog pings withheld so systemd restarts the service")
