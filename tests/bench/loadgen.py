"""A minimal HTTP/1.1 load generator for proxies, run as its own process (asyncio, raw sockets).

    python -m tests.bench.loadgen --proxy 127.0.0.1:8080 --target 127.0.0.1:8443 \
        --mode https --connections 16 --duration 8 --ca proxy-ca.pem --auth agent:TOKEN

Modes:
  http       absolute-form GET through the proxy, keep-alive
  https      CONNECT + TLS (trusting --ca), then keep-alive GETs inside the tunnel
  https-new  a new tunnel (TCP + CONNECT + TLS) for every request, then close
  connect    a new connection per request sending only CONNECT: the proxy's answer to it
  ttfb       like https (or http with --plain), but records the time to the first body
             byte and to the first complete server-sent event (a blank line in the body)

Each connection first makes one unmeasured request (warm-up); then requests run until
--requests are done or --duration seconds have passed. Prints one JSON object:
requests, ok (2xx), statuses, errors, seconds, rps, p50_ms, p90_ms, p99_ms, max_ms,
and for ttfb ttfb_p50_ms / ttfb_p99_ms / first_event_p50_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

MODES = ("http", "https", "https-new", "connect", "ttfb")
TIMEOUT = 15.0
_NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


@dataclass(frozen=True)
class Plan:
    proxy: tuple[str, int]
    target: tuple[str, int]
    mode: str
    path: str
    connections: int
    requests: int | None
    duration: float | None
    ca: str | None
    auth: str | None
    plain: bool  # ttfb over plain HTTP instead of a tunnel

    @property
    def tunnel(self) -> bool:
        return self.mode in ("https", "https-new", "connect") or (
            self.mode == "ttfb" and not self.plain
        )

    @property
    def new_connection_per_request(self) -> bool:
        return self.mode in ("https-new", "connect")


@dataclass
class Tally:
    plan: Plan
    started: float = 0.0
    issued: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    first_events: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)

    def take(self) -> bool:
        """Claim the next request, if the count or the time budget allows one more."""
        plan = self.plan
        if plan.requests is not None and self.issued >= plan.requests:
            return False
        if plan.duration is not None and time.perf_counter() - self.started >= plan.duration:
            return False
        self.issued += 1
        return True


def _proxy_auth_header(auth: str | None) -> bytes:
    if not auth:
        return b""
    return b"Proxy-Authorization: Basic " + base64.b64encode(auth.encode()) + b"\r\n"


def build_requests(plan: Plan) -> tuple[bytes, bytes]:
    """(CONNECT request or b"", the GET request) for this plan, built once."""
    host, port = plan.target
    authority = f"{host}:{port}".encode()
    auth = _proxy_auth_header(plan.auth)
    if plan.tunnel:
        connect = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority, authority, auth)
        target, auth = plan.path.encode(), b""
    else:
        connect, target = b"", b"http://%s%s" % (authority, plan.path.encode())
    get = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: capgate-bench\r\nAccept: */*\r\n%s\r\n" % (
        target,
        authority,
        auth,
    )
    return connect, get


@dataclass
class Response:
    status: int
    keep_alive: bool
    first_byte: float | None = None  # perf_counter when the first body byte arrived
    first_event: float | None = None  # ... when the body first held a blank line (SSE event)


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    """Read one response; with `head_only`, a 2xx has no body (the answer to CONNECT)."""
    head = await reader.readuntil(b"\r\n\r\n")
    response = Response(status=int(head[9:12]), keep_alive=head[:8] == b"HTTP/1.1")
    length: int | None = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            response.keep_alive = b"close" not in value.lower()
    if head_only and 200 <= response.status < 300:
        return response
    body = b""

    def arrived(data: bytes) -> None:
        nonlocal body
        now = time.perf_counter()
        if response.first_byte is None:
            response.first_byte = now
        if response.first_event is None:
            body += data
            if b"\n\n" in body:
                response.first_event = now

    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            arrived((await reader.readexactly(size + 2))[:-2])
    elif length is not None:
        if length:
            arrived(await reader.readexactly(length))
    elif response.status not in (204, 304):
        arrived(await reader.read())  # body until the connection closes
        response.keep_alive = False
    return response


class Client:
    """One connection's worth of load: opens (and re-opens) its connection as needed."""

    def __init__(self, plan: Plan, tally: Tally, tls: ssl.SSLContext | None) -> None:
        self.plan, self.tally, self.tls = plan, tally, tls
        self.connect_req, self.get_req = build_requests(plan)
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(*self.plan.proxy)
        if self.plan.tunnel:
            writer.write(self.connect_req)
            status = (await read_response(reader, head_only=True)).status
            if status != 200:
                writer.close()
                raise ValueError(f"CONNECT answered {status}")
            await writer.start_tls(self.tls, server_hostname=self.plan.target[0])  # type: ignore[arg-type]
        return reader, writer

    def _close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None

    async def _connect_only(self) -> int:
        reader, writer = await asyncio.open_connection(*self.plan.proxy)
        try:
            writer.write(self.connect_req)
            return (await read_response(reader, head_only=True)).status
        finally:
            writer.close()

    async def one(self, record: bool) -> None:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(TIMEOUT):
                if self.plan.mode == "connect":
                    response = Response(await self._connect_only(), keep_alive=False)
                else:
                    if self.conn is None:
                        self.conn = await self._open()
                    reader, writer = self.conn
                    writer.write(self.get_req)
                    response = await read_response(reader)
                    if not response.keep_alive or self.plan.new_connection_per_request:
                        self._close()
        except (*_NETWORK_ERRORS, TimeoutError) as exc:
            self._close()
            if record:
                name = type(exc).__name__
                self.tally.errors[name] += 1
                self.tally.error_examples.setdefault(name, str(exc)[:200])
            return
        if record:
            end = time.perf_counter()
            self.tally.statuses[response.status] += 1
            self.tally.latencies.append(end - start)
            if response.first_byte is not None:
                self.tally.ttfbs.append(response.first_byte - start)
            if response.first_event is not None:
                self.tally.first_events.append(response.first_event - start)

    async def run(self) -> None:
        while self.tally.take():
            await self.one(record=True)
        self._close()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(plan: Plan) -> dict[str, object]:
    tls: ssl.SSLContext | None = None
    if plan.tunnel:
        tls = ssl.create_default_context(cafile=plan.ca)
    tally = Tally(plan)
    clients = [Client(plan, tally, tls) for _ in range(plan.connections)]
    await asyncio.gather(*(c.one(record=False) for c in clients))  # warm-up
    tally.started = time.perf_counter()
    await asyncio.gather(*(c.run() for c in clients))
    seconds = time.perf_counter() - tally.started
    done = len(tally.latencies)
    result: dict[str, object] = {
        "mode": plan.mode,
        "connections": plan.connections,
        "requests": done,
        "ok": sum(n for s, n in tally.statuses.items() if 200 <= s < 300),
        "statuses": {str(s): n for s, n in sorted(tally.statuses.items())},
        "errors": dict(tally.errors),
        "error_examples": tally.error_examples,
        "seconds": round(seconds, 3),
        "rps": round(done / seconds, 1) if seconds else 0.0,
        "p50_ms": round(_pct(tally.latencies, 0.50), 3),
        "p90_ms": round(_pct(tally.latencies, 0.90), 3),
        "p99_ms": round(_pct(tally.latencies, 0.99), 3),
        "max_ms": round(max(tally.latencies, default=0) * 1000, 3),
    }
    if plan.mode == "ttfb":
        result["ttfb_p50_ms"] = round(_pct(tally.ttfbs, 0.50), 3)
        result["ttfb_p99_ms"] = round(_pct(tally.ttfbs, 0.99), 3)
        result["first_event_p50_ms"] = round(_pct(tally.first_events, 0.50), 3)
    return result


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--proxy", required=True, type=_hostport, help="HOST:PORT of the proxy")
    parser.add_argument("--target", required=True, type=_hostport, help="HOST:PORT upstream")
    parser.add_argument("--mode", choices=MODES, default="http")
    parser.add_argument("--path", default="/bench")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--requests", type=int, help="stop after this many measured requests")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--ca", help="PEM bundle to trust for TLS inside tunnels")
    parser.add_argument("--auth", help="USER:PASSWORD for Proxy-Authorization (Basic)")
    parser.add_argument("--plain", action="store_true", help="ttfb over plain HTTP")
    parser.add_argument("--cpu", type=int, help="pin this process to that CPU")
    args = parser.parse_args(argv)
    if args.requests is None and args.duration is None:
        parser.error("give --requests or --duration (or both)")
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    plan = Plan(
        proxy=args.proxy,
        target=args.target,
        mode=args.mode,
        path=args.path,
        connections=args.connections,
        requests=args.requests,
        duration=args.duration,
        ca=args.ca,
        auth=args.auth,
        plain=args.plain,
    )
    json.dump(asyncio.run(run(plan)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
