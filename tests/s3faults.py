"""A fault-injecting HTTP proxy in front of an S3 endpoint, for error-path tests: `FaultProxy`.

The proxy listens on 127.0.0.1 and forwards every request unchanged (the Host header too, so
signatures still verify upstream) to `upstream`, except when a queued fault matches the
request's method: then it answers with an S3 error (`status`), or reads the whole request body
and closes the connection without an answer (`drop_before_store`: the PUT failed after its
body was sent, nothing stored), or forwards the request and closes the connection instead of
passing the answer back (`drop_after_store`: stored, but the client never hears so). With
`strip_conditional` it removes `If-None-Match` from every request, as a store that ignores
conditional writes would. `seen` counts requests per method, `requests` lists (method, path)
of each, and `peak` is the most requests of one method that were in flight at once.
A fault with `path` set matches only requests whose path contains it.
A stalled store is silence: `stall` takes the request's head, reads none of its body and
answers nothing until `resume()` (or `close()`), when it closes the connection; `stall()` does
that to every request from then on.
`trickle` forwards the request and passes the answer's body back in `piece`-byte pieces,
`delay` seconds apart: a slow link that keeps moving.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade"}


@dataclass
class Fault:
    method: str  # "PUT", "GET", "HEAD", "DELETE" or "*"
    action: str  # "status", "drop_before_store", "drop_after_store"
    status: int = 503
    code: str = "SlowDown"
    path: str = ""  # only requests whose path contains this
    delay: float = 0.0  # trickle: seconds between pieces of the body
    piece: int = 4096  # trickle: bytes per piece


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: deque[Fault] = deque()
        self.seen: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self.peak: Counter[str] = Counter()
        self._inflight: Counter[str] = Counter()
        self.strip_conditional = False
        self._stall_all = False
        self._resumed = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, method: str, action: str, times: int = 1, status: int = 503, code: str = "SlowDown",
            path: str = "", delay: float = 0.0, piece: int = 4096) -> None:
        with self._lock:
            for _ in range(times):
                self.faults.append(Fault(method, action, status, code, path, delay, piece))

    def stall(self) -> None:
        """Answer no request from now on, until `resume()`."""
        with self._lock:
            self._stall_all = True
            self._resumed.clear()

    def resume(self) -> None:
        """End the stall: held requests get their connection closed, new ones are served."""
        with self._lock:
            self._stall_all = False
            self._resumed.set()

    def _take(self, method: str, path: str = "") -> Fault | None:
        with self._lock:
            self.seen[method] += 1
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.method in (method, "*") and fault.path in path:
                    self.faults.remove(fault)
                    return fault
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._inflight[h.command] += 1
            self.peak[h.command] = max(self.peak[h.command], self._inflight[h.command])
        try:
            self._serve(h)
        finally:
            with self._lock:
                self._inflight[h.command] -= 1

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        method = h.command
        fault = self._take(method, h.path)
        with self._lock:
            stalled = self._stall_all
        if stalled or (fault is not None and fault.action == "stall"):
            self._resumed.wait()  # without reading the body: a large one fills the sender's buffers
            h.close_connection = True
            return
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if fault is not None and fault.action == "status":
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                       f"<Message>injected {fault.code}</Message></Error>").encode()
            h.send_response(fault.status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload) if method != "HEAD" else 0))
            h.end_headers()
            if method != "HEAD":
                h.wfile.write(payload)
            return
        if fault is not None and fault.action == "drop_before_store":
            h.close_connection = True
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP}
        if self.strip_conditional:
            headers = {k: v for k, v in headers.items() if k.lower() != "if-none-match"}
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(method, h.path, body=body if body or method in ("PUT", "POST") else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if fault is not None and fault.action == "drop_after_store":
            h.close_connection = True
            return
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data) if method != "HEAD" else resp.getheader("Content-Length", "0")))
        h.end_headers()
        if method == "HEAD":
            return
        if fault is not None and fault.action == "trickle":
            for at in range(0, len(data), fault.piece):
                h.wfile.write(data[at:at + fault.piece])
                h.wfile.flush()
                time.sleep(fault.delay)
            return
        h.wfile.write(data)

    def close(self) -> None:
        self._resumed.set()
        self.server.shutdown()
        self.server.server_close()
