"""An echo upstream for the end-to-end tests: it answers with what it received.

Every response body (except the special modes) is JSON:
`{"method", "path", "query", "headers": [[name, value], ...], "body"}` — the request
exactly as it left the proxy. Query parameters steer the answer (they are echoed too):

- `echo_headers=a,b`  copy those request headers into response headers `X-Echo-<name>`
- `encoding=gzip|deflate|br`  compress the body with that Content-Encoding
- `status=N`  answer with status N
- `delay_ms=N`  wait before answering
- path `/redirect`  302 with a Location carrying the request's Authorization value
- path `/sse`  a server-sent-event stream, chunked, whose events carry the Authorization
  value split across chunk boundaries; `events=N`, `gap_ms=N`
- path `/large`  a chunked ~1 MiB body with the Authorization value at chunk edges
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import brotli


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class EchoLog:
    """Requests the upstream received, so tests can check that a denied one never arrived."""

    items: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Received) -> None:
        with self.lock:
            self.items.append(item)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()

    def paths(self) -> list[str]:
        with self.lock:
            return [i.path for i in self.items]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _EchoServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the canary scan reads the test's own output

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        received = Received(
            method=self.command,
            path=url.path,
            query=url.query,
            headers=list(self.headers.items()),
            body=body,
        )
        self.server.log.add(received)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if delay := params.get("delay_ms"):
            time.sleep(int(delay) / 1000)
        authorization = self.headers.get("Authorization", "")
        if url.path.startswith("/sse"):
            return self._sse(authorization, params)
        if url.path.startswith("/large"):
            return self._large(authorization)
        document = {
            "method": received.method,
            "path": received.path,
            "query": received.query,
            "headers": received.headers,
            "body": body.decode("utf-8", "replace"),
        }
        payload = json.dumps(document).encode()
        status = int(params.get("status", "200"))
        extra: list[tuple[str, str]] = []
        if url.path.startswith("/redirect"):
            status = 302
            extra.append(("Location", f"https://api.test/landing?auth={authorization}"))
        for name in filter(None, params.get("echo_headers", "").split(",")):
            for value in self.headers.get_all(name) or []:
                extra.append((f"X-Echo-{name}", value))
        encoding = params.get("encoding")
        if encoding == "gzip":
            payload = gzip.compress(payload)
        elif encoding == "deflate":
            payload = zlib.compress(payload)
        elif encoding == "br":
            payload = brotli.compress(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _chunked(self, content_type: str, chunks: Iterator[bytes], gap: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            if gap:
                time.sleep(gap)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _sse(self, authorization: str, params: dict[str, str]) -> None:
        events = int(params.get("events", "3"))
        gap = int(params.get("gap_ms", "300")) / 1000

        def chunks() -> Iterator[bytes]:
            value = authorization.encode()
            half = len(value) // 2
            for i in range(events):
                # Split the echoed value across two chunks: the scrubber must carry over.
                yield b'data: {"n": %d, "echo": "%s' % (i, value[:half])
                yield value[half:] + b'"}\n\n'

        self._chunked("text/event-stream", chunks(), gap)

    def _large(self, authorization: str) -> None:
        value = authorization.encode()

        def chunks() -> Iterator[bytes]:
            filler = b"x" * 65531
            for i in range(16):
                cut = (i * 7) % max(len(value), 1)
                yield filler + value[:cut]
                yield value[cut:] + b"\n"

        self._chunked("application/octet-stream", chunks())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.log = EchoLog()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs in the handler's thread, not in the accept loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


@dataclass
class Upstream:
    """A running echo server: its port, its log, and how to stop it."""

    host: str
    port: int
    tls: bool
    log: EchoLog
    _server: _EchoServer
    _thread: threading.Thread

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_upstream(cert: str | None = None, key: str | None = None) -> Upstream:
    """Start an echo upstream on 127.0.0.1 on an ephemeral port (TLS when cert is given)."""
    tls = None
    if cert and key:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
    server = _EchoServer(("127.0.0.1", 0), tls)
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    thread = threading.Thread(target=server.serve_forever, name="echo-upstream", daemon=True)
    thread.start()
    port = server.server_address[1]
    return Upstream("127.0.0.1", port, tls is not None, server.log, server, thread)
