"""An HTTP/2-only echo upstream (TLS, ALPN h2) built on the `h2` library.

Each request is answered with a JSON echo of its pseudo-headers and headers, and recorded
in `requests` (lists of (name, value) str pairs), so tests can assert what left the proxy
over HTTP/2. One thread per connection; stopped with `stop()`.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class H2Upstream:
    port: int
    requests: list[list[tuple[str, str]]] = field(default_factory=list)
    trailers: list[list[tuple[str, str]]] = field(default_factory=list)
    _sock: socket.socket | None = None
    _tls: ssl.SSLContext | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def _serve(self) -> None:
        assert self._sock is not None and self._tls is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(5)
            conn = self._tls.wrap_socket(raw, server_side=True)  # type: ignore[union-attr]
            h2conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
            )
            h2conn.initiate_connection()
            conn.sendall(h2conn.data_to_send())
            while data := conn.recv(65536):
                for event in h2conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self._answer(h2conn, event)
                    elif isinstance(event, h2.events.TrailersReceived):
                        self.trailers.append([(str(k), str(v)) for k, v in event.headers])
                conn.sendall(h2conn.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            raw.close()

    def _answer(self, h2conn: h2.connection.H2Connection, event: h2.events.RequestReceived) -> None:
        headers = [(str(k), str(v)) for k, v in event.headers]
        self.requests.append(headers)
        body = json.dumps({"headers": headers}).encode()
        h2conn.send_headers(
            event.stream_id,
            [
                (":status", "200"),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ],
        )
        h2conn.send_data(event.stream_id, body, end_stream=True)

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()


def start_h2_upstream(cert: str, key: str) -> H2Upstream:
    sock = socket.create_server(("127.0.0.1", 0))
    upstream = H2Upstream(port=sock.getsockname()[1], _sock=sock)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    tls.set_alpn_protocols(["h2"])
    upstream._tls = tls
    threading.Thread(target=upstream._serve, name="h2-upstream", daemon=True).start()
    return upstream
