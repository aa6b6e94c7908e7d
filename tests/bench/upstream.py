"""The benchmark's local upstream: nginx when installed, else a small asyncio server.

nginx (private config, loopback, ephemeral ports) answers every path with a fixed small
JSON body over HTTP and HTTPS. The asyncio server below answers the same, and also serves
`/sse?events=N&gap_ms=M`: a chunked `text/event-stream` whose events arrive M ms apart,
for time-to-first-byte measurements (nginx cannot delay). It always runs, as its own
process:

    python -m tests.bench.upstream --cert CERT --key KEY   # prints {"http": P, "https": Q}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from tests.bench.procs import Procs, free_port, wait_port

BODY = b'{"ok":true,"server":"bench"}\n'
# About the size of one streamed LLM token event (OpenAI-style chat completion chunk).
SSE_EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[{"index":0,"delta":{"content":" token %d"}}]}\n\n'
)

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Upstream:
    kind: str  # "nginx" or "asyncio"
    http_port: int  # fixed small body
    https_port: int
    sse_http_port: int  # the asyncio server: /sse and the fixed body
    sse_https_port: int
    ca_pem: Path  # the CA that signed the upstream's certificate


def start_upstream(procs: Procs, workdir: Path, ca_pem: Path, cert: Path, key: Path) -> Upstream:
    """Start the upstream processes (stopped with `procs`), on `cpu` 1 when pinning."""
    cpu = procs.side_cpu
    py = procs.spawn(
        [sys.executable, "-m", "tests.bench.upstream", "--cert", str(cert), "--key", str(key)],
        name="upstream-asyncio",
        cpu=cpu,
        capture_stdout=True,
    )
    ports = json.loads(py.read_line(timeout=20))
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        return Upstream(
            "asyncio", ports["http"], ports["https"], ports["http"], ports["https"], ca_pem
        )
    ngdir = workdir / "nginx"
    ngdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):  # a freed port can be taken by someone else before nginx binds it
        http_port, https_port = free_port(), free_port()
        conf = ngdir / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                dir=ngdir,
                http_port=http_port,
                https_port=https_port,
                cert=cert,
                key=key,
                body=BODY.decode().strip(),
            )
        )
        proc = procs.spawn(
            [nginx, "-p", str(ngdir), "-e", str(ngdir / "error.log"), "-c", str(conf)],
            name=f"nginx-{attempt}",
            cpu=cpu,
        )
        try:
            wait_port(http_port, proc, timeout=10)
            wait_port(https_port, proc, timeout=10)
        except RuntimeError:
            procs.stop(proc)
            continue
        return Upstream("nginx", http_port, https_port, ports["http"], ports["https"], ca_pem)
    raise RuntimeError("nginx did not start; see " + str(ngdir / "error.log"))


# -- the asyncio server (runs in its own process) ------------------------------------------


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    fixed = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(BODY),
        BODY,
    )
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            target = lines[0].split(b" ")[1].decode()
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            url = urlsplit(target)
            if url.path != "/sse":
                writer.write(fixed)
                continue
            query = dict(parse_qsl(url.query))
            events, gap = int(query.get("events", "5")), int(query.get("gap_ms", "200")) / 1000
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(events):
                if i:
                    await asyncio.sleep(gap)
                data = SSE_EVENT % i
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError):
        pass
    finally:
        writer.close()


async def _main(cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    plain = await asyncio.start_server(_serve_one, "127.0.0.1", 0)
    tls = await asyncio.start_server(_serve_one, "127.0.0.1", 0, ssl=ctx)
    ports = {
        "http": plain.sockets[0].getsockname()[1],
        "https": tls.sockets[0].getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    async with plain, tls:
        await asyncio.gather(plain.serve_forever(), tls.serve_forever())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.cert, args.key))
