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
"""

from __future__ import annotations

import http.client
import threading
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
            path: str = "") -> None:
        with self._lock:
            for _ in range(times):
                self.faults.append(Fault(method, action, status, code, path))

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
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        fault = self._take(method, h.path)
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
        if method != "HEAD":
            h.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
