"""A git smart-HTTP server over TLS on 127.0.0.1 for the client matrix: `git http-backend`
behind HTTP Basic, so a clone or push works only when capgate injected the credential."""

from __future__ import annotations

import base64
import hmac
import os
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass
class GitUpstream:
    port: int
    root: Path
    authorizations: list[str]
    _server: ThreadingHTTPServer
    _thread: threading.Thread

    def url(self, repo: str) -> str:
        return f"https://localhost:{self.port}/{repo}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _GitHandler(BaseHTTPRequestHandler):
    server: _GitServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        given = self.headers.get("Authorization", "")
        self.server.authorizations.append(given)
        if not hmac.compare_digest(given, self.server.expected):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "agent",  # enables receive-pack (push)
            "REMOTE_ADDR": "127.0.0.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, capture_output=True, env=env, timeout=60
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _GitServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, expected: str, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _GitHandler)
        self.root = root
        self.expected = expected
        self.authorizations: list[str] = []
        self.socket = tls.wrap_socket(self.socket, server_side=True)


def start_git_upstream(
    root: Path, username: str, password: str, cert: Path, key: Path
) -> GitUpstream:
    """Serve the bare repositories under `root`, requiring Basic `username:password`."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    server = _GitServer(root, expected, tls)
    thread = threading.Thread(target=server.serve_forever, name="git-upstream", daemon=True)
    thread.start()
    return GitUpstream(server.server_address[1], root, server.authorizations, server, thread)
