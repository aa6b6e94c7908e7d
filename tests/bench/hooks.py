"""Offline cost of capgate's addon hooks per request: no network, no sockets.

Drives `CapgateAddon` (with an in-memory broker) through requestheaders → request →
responseheaders → response for synthetic flows, against a 1,000-capability caps.yaml
whose matched capability has an auth transform, a header transform with a secret and a
query transform. Reports the best of several rounds, minus the cost of building the
flows themselves. `--profile` adds a pyinstrument profile of the hooks.

    .venv/bin/python -m tests.bench.hooks [--requests N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import tempfile
import time
from pathlib import Path

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from capgate.proxy.addon.hooks import CapgateAddon
from capgate.proxy.replay.memory_broker import MemoryBroker

DECOYS = 999


def write_caps(path: Path) -> None:
    lines = ["version: 1", "capabilities:"]
    for i in range(DECOYS):
        lines += [
            f"  - name: decoy{i}",
            f'    match: {{hosts: ["h{i}.example.com"]}}',
            "    transforms:",
            f"      - header: {{name: X-D, action: set, value: '\"d{i}\"'}}",
        ]
    names = ", ".join([f"decoy{i}" for i in range(DECOYS)] + ["target"])
    lines += [
        "  - name: target",
        '    match: {hosts: ["api.test"], paths: ["/v1/**"]}',
        "    transforms:",
        "      - auth: {credential: gh, provider: github_pat}",
        "      - header: {name: X-Secret, action: set, value: 'secrets[\"s\"]'}",
        "      - query: {name: ws, action: set, value: 'workspace.id'}",
        "roles:",
        "  r:",
        f"    capabilities: [{names}]",
    ]
    path.write_text("\n".join(lines))


def make_flow(proxy_auth: str) -> http.HTTPFlow:
    headers = {
        "Host": "api.test",
        "User-Agent": "python-httpx/0.28",
        "Accept": "*/*",
        "Accept-Encoding": "gzip",
        "Proxy-Authorization": proxy_auth,
    }
    flow = tflow.tflow(req=http.Request.make("GET", "https://api.test/v1/x?a=1", b"", headers))
    flow.response = None
    return flow


def canned_response() -> http.Response:
    return http.Response.make(
        200, b'{"ok":true}', {"Content-Type": "application/json", "Content-Length": "11"}
    )


async def measure(requests: int, rounds: int, profile: bool) -> None:
    broker = MemoryBroker()
    broker.add_credential("gh", "github_pat", "ghp_" + "x" * 36)
    broker.add_secret("s", "secret-value-123456")
    _, token = broker.add_workspace("r")
    proxy_auth = "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()
    addon = CapgateAddon(broker)
    with tempfile.TemporaryDirectory() as tmp, taddons.context(addon) as tctx:
        caps = Path(tmp) / "caps.yaml"
        write_caps(caps)
        tctx.configure(addon, capgate_caps=str(caps))

        async def one() -> http.HTTPFlow:
            flow = make_flow(proxy_auth)
            await addon.requestheaders(flow)
            addon.request(flow)
            flow.response = canned_response()
            addon.responseheaders(flow)
            addon.response(flow)
            return flow

        first = await one()
        assert first.response is not None and first.response.status_code == 200
        with_hooks, flows_only = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(requests):
                await one()
            with_hooks.append((time.perf_counter() - start) / requests * 1e6)
            start = time.perf_counter()
            for _ in range(requests):
                make_flow(proxy_auth).response = canned_response()
            flows_only.append((time.perf_counter() - start) / requests * 1e6)
        hooks_us = min(with_hooks) - min(flows_only)
        print(f"capgate hooks: {hooks_us:.0f} µs/request (best of {rounds} rounds of {requests})")
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002)
            profiler.start()
            for _ in range(requests):
                await one()
            profiler.stop()
            print(profiler.output_text(color=False, unicode=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(measure(args.requests, args.rounds, args.profile))


if __name__ == "__main__":
    main()
