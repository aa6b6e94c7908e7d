"""A raw HTTP/2 client for attack shapes real clients refuse to send: any `:path`
(absolute form, raw 0xFF bytes), a body without content-length, any header bytes.

`h2_via_tunnel` sends CONNECT, negotiates h2 (ALPN) over TLS inside the tunnel, sends one
request with header validation turned off, and returns `H2Reply(status, headers, body)`.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events

from .clients import proxy_authorization


@dataclass
class H2Reply:
    status: int  # 0 when the stream was reset or the connection closed first
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reset: bool = False

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower().encode():
                return value
        return None


def h2_via_tunnel(
    proxy_port: int,
    token: str,
    connect: str,
    *,
    ca: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None = None,
    sni: str | None = None,
    chunks: int = 1,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    trailers: list[tuple[bytes, bytes]] | None = None,
) -> H2Reply:
    """One HTTP/2 request inside a CONNECT tunnel; `headers` include the pseudo-headers
    as given (nothing is added). `body` is sent in `chunks` DATA frames, no length.
    `alpn` is offered as is; mitmproxy offers the same list upstream, so an HTTP/1.1-only
    upstream gets the request converted to HTTP/1.1."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    try:
        head = f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n"
        head += f"Proxy-Authorization: {proxy_authorization(token)}\r\n\r\n"
        sock.sendall(head.encode())
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            data = sock.recv(1)
            if not data:
                raise ConnectionError("proxy closed the CONNECT")
            answer += data
        assert answer.startswith(b"HTTP/1.1 200"), answer
        context = ssl.create_default_context(cafile=ca)
        context.check_hostname = False
        context.set_alpn_protocols(list(alpn))
        conn = context.wrap_socket(sock, server_hostname=sni or connect.rsplit(":", 1)[0])
        assert conn.selected_alpn_protocol() == "h2"
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        h2conn = h2.connection.H2Connection(config=config)
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        stream_id = h2conn.get_next_available_stream_id()
        h2conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            size = max(1, -(-len(body) // chunks))
            pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1 and not trailers
                h2conn.send_data(stream_id, piece, end_stream=last)
                conn.sendall(h2conn.data_to_send())
            if trailers:
                h2conn.send_headers(stream_id, trailers, end_stream=True)
        conn.sendall(h2conn.data_to_send())
        return _read(conn, h2conn, stream_id)
    finally:
        sock.close()


def _read(conn: ssl.SSLSocket, h2conn: h2.connection.H2Connection, stream_id: int) -> H2Reply:
    reply = H2Reply(0, [], b"")
    body = bytearray()
    while True:
        try:
            data = conn.recv(65536)
        except (TimeoutError, OSError, ssl.SSLError):
            break
        if not data:
            break
        for event in h2conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                for name, value in event.headers:
                    if name == b":status":
                        reply.status = int(value)
                    else:
                        reply.headers.append((name, value))
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                body += event.data
                h2conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                reply.body = bytes(body)
                return reply
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                reply.reset = True
                reply.body = bytes(body)
                return reply
            elif isinstance(event, h2.events.ConnectionTerminated):
                reply.body = bytes(body)
                return reply
        pending = h2conn.data_to_send()
        if pending:
            conn.sendall(pending)
    reply.body = bytes(body)
    return reply
