"""A token endpoint on 127.0.0.1 that misbehaves on request: slow, hung, trickling, huge.

    with FaultyTokenServer() as srv:
        srv.mode = "slow"; srv.delay = 0.5   # answer a valid token after 0.5 s
        srv.mode = "hang"                     # accept, read the request, never answer
        srv.mode = "trickle"                  # send a valid answer one byte every 3 s
        srv.mode = "huge"                     # a 200 with a 50 MB body
        srv.url                               # http://127.0.0.1:PORT/token

Every call is counted (`calls`); `stop()` releases hung handlers and closes the socket.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from typing import Any

ACCESS_TOKEN = "at-FAULTcanaryAccessToken-4c5d6e7f"


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        srv = self.server.owner
        sock: socket.socket = self.request
        sock.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        with srv.lock:
            srv.calls += 1
            mode, delay = srv.mode, srv.delay
        payload = json.dumps(
            {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3600}
        ).encode()
        try:
            if mode == "hang":
                srv.stopping.wait(60)
                return
            if mode == "slow":
                time.sleep(delay)
            if mode == "huge":
                size = 50 * 1024 * 1024
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
                )
                block = b" " * 65536
                sent = 0
                while sent < size and not srv.stopping.is_set():
                    sock.sendall(block)
                    sent += len(block)
                return
            if mode == "huge_chunked":
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                )
                block = b" " * 65536
                for _ in range(800):
                    if srv.stopping.is_set():
                        return
                    sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
                return
            answer = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            if mode == "trickle":
                for i in range(len(answer)):
                    if srv.stopping.wait(delay):
                        return
                    sock.sendall(answer[i : i + 1])
                return
            sock.sendall(answer)
        except OSError:
            return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FaultyTokenServer


class FaultyTokenServer:
    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 3.0
        self.calls = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultyTokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultyTokenServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
