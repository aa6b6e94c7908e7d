"""A scripted upstream for red-team tests: it records each request's raw bytes as they
left the proxy and answers with whatever bytes the test's `respond` function returns.

Unlike the echo upstream (upstream.py), nothing is parsed into a dict: trailers, folded
lines and odd framing stay visible, and the answer can be any byte string (1xx, trailers,
a 101 upgrade followed by frames, double Content-Encoding, ...). One request per
connection; the socket is closed after the answer.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

Respond = Callable[[bytes], bytes]


def _read_until(conn: socket.socket, buffer: bytearray, mark: bytes) -> bool:
    while mark not in buffer:
        data = conn.recv(65536)
        if not data:
            return False
        buffer += data
    return True


def _read_request(conn: socket.socket) -> bytes:
    """One request, raw: head, then a Content-Length or chunked body (with trailers)."""
    buffer = bytearray()
    if not _read_until(conn, buffer, b"\r\n\r\n"):
        return bytes(buffer)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lower = head.lower()
    body = bytearray(rest)
    if b"transfer-encoding: chunked" in lower:
        while not body.endswith(b"\r\n\r\n") or b"0\r\n" not in body:
            data = conn.recv(65536)
            if not data:
                break
            body += data
    else:
        length = 0
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1].strip() or b"0")
        while len(body) < length:
            data = conn.recv(65536)
            if not data:
                break
            body += data
    return head + b"\r\n\r\n" + bytes(body)


@dataclass
class RawUpstream:
    port: int
    requests: list[bytes] = field(default_factory=list)
    respond: Respond = lambda raw: b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    # Seconds to keep reading after the answer (e.g. WebSocket frames after a 101); what
    # arrives goes to `after_answer`.
    linger: float = 0.0
    after_answer: list[bytes] = field(default_factory=list)
    # The TLS server name each connection's ClientHello carried (None: no SNI).
    snis: list[str | None] = field(default_factory=list)
    _sock: socket.socket | None = None
    _tls: ssl.SSLContext | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            raw = _read_request(conn)
            self.requests.append(raw)
            conn.sendall(self.respond(raw))
            if self.linger:
                self._read_after(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def _read_after(self, conn: socket.socket) -> None:
        conn.settimeout(self.linger)
        try:
            while data := conn.recv(65536):
                self.after_answer.append(data)
        except (TimeoutError, OSError, ssl.SSLError):
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()


def start_raw_upstream(cert: str | None = None, key: str | None = None) -> RawUpstream:
    sock = socket.create_server(("127.0.0.1", 0))
    upstream = RawUpstream(port=sock.getsockname()[1], _sock=sock)
    if cert and key:
        upstream._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        upstream._tls.load_cert_chain(cert, key)

        def record_sni(_sock: object, name: str | None, _ctx: object) -> None:
            upstream.snis.append(name)

        upstream._tls.sni_callback = record_sni  # type: ignore[assignment]
    threading.Thread(target=upstream._serve, name="raw-upstream", daemon=True).start()
    return upstream


def header_of(raw: bytes, name: str) -> str:
    """The value of a request header in raw bytes ("" when absent; first one wins)."""
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode("latin-1")
    return ""
