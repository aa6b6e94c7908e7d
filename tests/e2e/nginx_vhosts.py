"""A real nginx on 127.0.0.1 with two TLS virtual hosts on one port, for tests where
routing matters: `api.test` and `other.test`, each logging which request it served and
the Authorization it carried. Single process (`master_process off`), private config and
prefix in a temp directory, stopped by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format who '$request_method $request_uri auth=[$http_authorization]';
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name api.test;
        access_log {dir}/api.log who;
        location / {{ return 200 "vhost api\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name other.test;
        access_log {dir}/other.log who;
        location / {{ return 200 "vhost other\\n"; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    for candidate in ("nginx", "/usr/sbin/nginx"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@dataclass
class Nginx:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def log(self, vhost: str) -> str:
        path = self.directory / f"{vhost}.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nginx(directory: Path, cert: Path, key: str | Path) -> Nginx:
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed (make test installs nginx-light)"
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = directory / "nginx.conf"
    conf.write_text(CONF.format(dir=directory, cert=cert, key=key, port=port))
    process = subprocess.Popen(
        [binary, "-p", str(directory), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {process.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Nginx(port, directory, process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("nginx did not start listening")
