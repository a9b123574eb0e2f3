"""A tiny HTTP proxy in front of the live server, whose behaviour a test switches at will.

Modes: "pass" forwards; "reset" closes the connection without an answer (a network error);
"503" and "429" answer so without forwarding; "lost" forwards (the service stores the events)
and then answers 502, as a gateway that lost the response would. `fail_times` limits the
failing modes to that many requests, after which the proxy passes. `hold_post = n` forwards
the n-th POST and then holds its answer until `release` is set (`held` tells the test).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.mode = "pass"
        self.fail_times: int | None = None
        self.retry_after = "1"
        self.hold_post: int | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._posts = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def posts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST"]

    def _begin(self, method: str, path: str, body: bytes | None) -> tuple[dict[str, Any], str]:
        ids: list[str] = []
        if body:
            try:
                ids = [e.get("event_id") for e in json.loads(body).get("events", [])]
            except (ValueError, AttributeError):
                ids = []
        with self._lock:
            number = None
            if method == "POST":
                self._posts += 1
                number = self._posts
            mode = self.mode
            if mode != "pass" and self.fail_times is not None:
                self.fail_times -= 1
                if self.fail_times <= 0:
                    self.mode, self.fail_times = "pass", None
            entry = {
                "at": time.monotonic(),
                "method": method,
                "path": path,
                "events": len(ids),
                "ids": ids,
                "mode": mode,
                "number": number,
            }
            self.requests.append(entry)
        return entry, mode


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy: Proxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        entry, mode = proxy._begin(self.command, self.path, body)
        self.close_connection = True
        if mode == "reset":
            return  # no answer at all: the client sees the connection closed
        if mode in ("503", "429"):
            headers = {"Retry-After": proxy.retry_after} if mode == "429" else {}
            self._answer(int(mode), b'{"detail": "proxy says no"}', "application/json", headers)
            return
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
        try:
            forward = {
                name: value
                for name, value in self.headers.items()
                if name.lower() in ("authorization", "content-type", "accept")
            }
            conn.request(self.command, self.path, body=body, headers=forward)
            upstream = conn.getresponse()
            data = upstream.read()
            status = upstream.status
            content_type = upstream.getheader("Content-Type", "application/json")
        finally:
            conn.close()
        entry["status"] = status
        if mode == "lost":
            self._answer(502, b"bad gateway", "text/plain", {})
            return
        if entry["number"] is not None and entry["number"] == proxy.hold_post:
            proxy.held.set()
            proxy.release.wait(30)
        self._answer(status, data, content_type, {})

    def _answer(self, status: int, data: bytes, content_type: str, headers: dict) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client is gone (killed): nothing to tell it
