"""A raw HTTP/1.1 client for attack shapes that real clients refuse to send.

`via_tunnel` sends CONNECT <target> and then one request with whatever Host header, SNI and
request line the test wants; `via_absolute` sends one plain absolute-form request. Both
answer with `Reply(status, headers, body)`; bodies are de-chunked and gunzipped.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def echoed(self, name: str) -> list[str]:
        """Values of a header the echo upstream says it received."""
        return [v for k, v in self.json()["headers"] if k.lower() == name.lower()]


def proxy_authorization(token: str) -> str:
    return "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()


def _read_reply(stream: Any) -> Reply:
    status_line = stream.readline().decode("latin-1")
    if not status_line:
        raise ConnectionError("connection closed without a response")
    status = int(status_line.split()[1])
    headers: list[tuple[str, str]] = []
    while True:
        line = stream.readline().decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    body = b""
    if status in (204, 304) or 100 <= status < 200:
        pass
    elif "chunked" in lower.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                stream.readline()
                break
            parts.append(stream.read(size))
            stream.readline()
        body = b"".join(parts)
    elif "content-length" in lower:
        body = stream.read(int(lower["content-length"]))
    else:
        body = stream.read()
    if lower.get("content-encoding", "").lower() == "gzip" and body:
        body = gzip.decompress(body)
    return Reply(status, headers, body)


def _request_bytes(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body and not any(k.lower() == "content-length" for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def via_tunnel(
    proxy_port: int,
    token: str | None,
    connect: str,
    *,
    path: str = "/",
    host_header: str | None = None,
    sni: str | None = None,
    ca: str | None = None,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    tls: bool = True,
    connect_headers: list[tuple[str, str]] | None = None,
) -> Reply:
    """CONNECT `connect` (host:port as written), then one request inside the tunnel."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    try:
        head = [f"CONNECT {connect} HTTP/1.1", f"Host: {connect}"]
        head += [f"{k}: {v}" for k, v in connect_headers or []]
        if token:
            head.append(f"Proxy-Authorization: {proxy_authorization(token)}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("utf-8"))
        stream = sock.makefile("rb")
        reply = _read_reply_connect(stream)
        if reply.status != 200:
            return reply
        conn: socket.socket = sock
        if tls:
            context = ssl.create_default_context(cafile=ca)
            server_name = sni or connect.rsplit(":", 1)[0].strip("[]")
            context.check_hostname = False  # the CA is what matters; names vary by test
            conn = context.wrap_socket(sock, server_hostname=server_name)
        all_headers = [("Host", host_header if host_header is not None else connect)]
        all_headers += headers or []
        conn.sendall(_request_bytes(method, path, all_headers, body))
        return _read_reply(conn.makefile("rb"))
    finally:
        sock.close()


def _read_reply_connect(stream: Any) -> Reply:
    """A CONNECT answer: 200 has no body; a refusal has a body with its length."""
    status_line = stream.readline().decode("latin-1")
    status = int(status_line.split()[1])
    headers: list[tuple[str, str]] = []
    while True:
        line = stream.readline().decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    body = b""
    if status != 200:
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = stream.read(length) if length else b""
    return Reply(status, headers, body)


def via_absolute(
    proxy_port: int,
    token: str | None,
    url: str,
    *,
    host_header: str | None = None,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Reply:
    """One plain-http absolute-form request through the proxy."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    all_headers = [("Host", host_header if host_header is not None else parts.netloc)]
    if token:
        all_headers.append(("Proxy-Authorization", proxy_authorization(token)))
    all_headers += headers or []
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.sendall(_request_bytes(method, url, all_headers, body))
        return _read_reply(sock.makefile("rb"))
