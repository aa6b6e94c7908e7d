"""Running a fixture through capgate's real addon, offline.

`Harness` holds one mitmproxy `Master` for a run. Each fixture gets a fresh `MemoryBroker`
(its workspace, credentials and secrets) and a fresh `CapgateAddon`, configured through
mitmproxy's options like the live proxy. The flow goes through the hooks in the order
mitmproxy calls them: for https a CONNECT flow first (`http_connect`), then
`requestheaders`, `request`, the canned upstream response (unless the addon answered
itself), `responseheaders` (a streamed body is fed through `response.stream` in chunks)
and `response`. Nothing touches the network or a store.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import connection, hooks, http, master, options
from mitmproxy import log as mitmproxy_log
from mitmproxy.proxy.layers.http import (
    HttpConnectedHook,
    HttpConnectErrorHook,
    HttpConnectHook,
    HttpErrorHook,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)

from capgate.broker.types import PolicyDecision
from capgate.caps import default_port

from ..addon.hooks import CapgateAddon
from .fixtures import Fixture, Message
from .memory_broker import MemoryBroker

# Streamed bodies are fed in small chunks so that values split across chunks are exercised.
STREAM_CHUNK = 16


@dataclass(frozen=True)
class Sent:
    """The request as it left the proxy for the upstream."""

    method: str
    url: str
    headers: http.Headers
    body: bytes


@dataclass(frozen=True)
class Received:
    """The response as the agent got it."""

    status: int
    headers: http.Headers
    body: bytes


@dataclass(frozen=True)
class Outcome:
    sent: Sent | None
    response: Received | None
    decisions: tuple[PolicyDecision, ...]
    killed: bool = False


AddonFactory = Callable[[], Sequence[Any]]


class Harness:
    """Runs fixtures against one caps file; `extra_addons()` are placed before capgate's
    addon for each fixture, as the live proxy places them (recording uses this)."""

    def __init__(self, caps_path: Path, extra_addons: AddonFactory | None = None) -> None:
        self.caps_path = caps_path
        self.extra_addons = extra_addons or (lambda: ())
        self._master: master.Master | None = None

    async def run(self, fixture: Fixture) -> Outcome:
        broker, token = fill_broker(fixture)
        chain = [*self.extra_addons(), CapgateAddon(broker)]
        m = self._master_for_loop()
        m.addons.add(*chain)
        try:
            # The same configure() the live proxy runs: the caps file is loaded through it.
            m.options.update(capgate_caps=str(self.caps_path))
            m.addons.invoke_addon_sync(chain[-1], hooks.ConfigureHook({"capgate_caps"}))
            return await _Run(m, chain, fixture, token).go(broker)
        finally:
            for addon in chain:
                m.addons.remove(addon)

    def _master_for_loop(self) -> master.Master:
        """One Master per event loop (mitmproxy binds a Master to the loop it starts in)."""
        loop = asyncio.get_running_loop()
        if self._master is None or self._master.event_loop is not loop:
            self._master = master.Master(options.Options(), with_termlog=False)
            _drop_log_forwarding(self._master)
        return self._master


def _drop_log_forwarding(m: master.Master) -> None:
    """A Master forwards every stdlib log record to its loop (mitmproxy's legacy `add_log`
    event); replay needs none of that, and the forwarding fails once the loop is closed."""
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, mitmproxy_log.LegacyLogEvents) and handler.master is m:
            handler.uninstall()


def fill_broker(fixture: Fixture) -> tuple[MemoryBroker, str]:
    """A MemoryBroker holding the fixture's workspace, credentials and secrets."""
    broker = MemoryBroker()
    ws = fixture.workspace
    _, token = broker.add_workspace(ws.role, ws.user, workspace_id=ws.id or "")
    for cred in fixture.credentials:
        broker.add_credential(
            cred.name,
            cred.provider,
            cred.value,
            kind=cred.kind,
            config=cred.config,
            fail_reason=cred.mint_failure,
        )
    for name, value in fixture.secrets:
        broker.add_secret(name, value)
    return broker, token


class _Run:
    """One fixture's flows through the addon chain."""

    def __init__(self, m: master.Master, chain: list[Any], fixture: Fixture, token: str) -> None:
        self.m = m
        self.chain = chain
        self.fixture = fixture
        self.proxy_auth = "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()
        self.client = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080))

    async def hook(self, event: hooks.Hook) -> None:
        # Addon by addon, in chain order, like mitmproxy; an exception fails the fixture
        # instead of being logged and swallowed.
        for addon in self.chain:
            await self.m.addons.invoke_addon(addon, event)

    async def go(self, broker: MemoryBroker) -> Outcome:
        values = self.fixture.values
        url = urlsplit(values.render(self.fixture.request.url))
        scheme = url.scheme.lower()
        host = url.hostname or ""
        port = url.port or default_port(scheme)
        if scheme == "https":
            refused = await self.connect(host, port)
            if refused is not None:
                return Outcome(None, received(refused), tuple(broker.decisions))
        flow = http.HTTPFlow(self.client, connection.Server(address=(host, port)))
        flow.request = self.agent_request(scheme, host, port, url)
        flow.live = True
        sent: Sent | None = None
        if await self.request_hooks(flow):
            return Outcome(None, None, tuple(broker.decisions), killed=True)
        if flow.response is None:
            sent = snapshot(flow.request)
            flow.response = canned_response(self.fixture.upstream, values.render)
        await self.hook(HttpResponseHeadersHook(flow))
        if callable(flow.response.stream):
            chunks = _chunks(flow.response.raw_content or b"")
            flow.response.raw_content = feed(flow.response.stream, chunks)
        await self.hook(HttpResponseHook(flow))
        return Outcome(sent, received(flow.response), tuple(broker.decisions))

    async def connect(self, host: str, port: int) -> http.Response | None:
        """The CONNECT that opens the tunnel; the refusal when the addon refused it."""
        flow = http.HTTPFlow(self.client, connection.Server(address=(host, port)))
        authority = f"{host}:{port}".encode()
        flow.request = http.Request(
            host,
            port,
            b"CONNECT",
            b"",
            authority,
            b"",
            b"HTTP/1.1",
            http.Headers([(b"Proxy-Authorization", self.proxy_auth.encode())]),
            b"",
            None,
            time.time(),
            time.time(),
        )
        flow.live = True
        await self.hook(HttpConnectHook(flow))
        if flow.response is not None and not 200 <= flow.response.status_code < 300:
            await self.hook(HttpConnectErrorHook(flow))
            return flow.response
        flow.response = http.Response.make(200)
        await self.hook(HttpConnectedHook(flow))
        return None

    def agent_request(self, scheme: str, host: str, port: int, url: Any) -> http.Request:
        spec = self.fixture.request
        render = self.fixture.values.render
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        authority = url.netloc.rpartition("@")[2]
        headers = http.Headers([(render(k).encode(), render(v).encode()) for k, v in spec.headers])
        if "host" not in headers:
            headers.insert(0, "Host", authority)
        if scheme == "http":  # plain http: the agent authenticates on every request
            headers["Proxy-Authorization"] = self.proxy_auth
        body = render(spec.body).encode() if spec.body is not None else b""
        if spec.json_body and "content-type" not in headers:
            headers["Content-Type"] = "application/json"
        if body and "transfer-encoding" not in headers:
            headers["Content-Length"] = str(len(body))
        return http.Request(
            host,
            port,
            spec.method.encode(),
            scheme.encode(),
            authority.encode() if scheme == "http" else b"",
            path.encode(),
            b"HTTP/1.1",
            headers,
            body,
            None,
            time.time(),
            time.time(),
        )

    async def request_hooks(self, flow: http.HTTPFlow) -> bool:
        """requestheaders and request; True when the addon killed the flow."""
        await self.hook(HttpRequestHeadersHook(flow))
        if _killed(flow):
            await self.hook(HttpErrorHook(flow))
            return True
        stream = flow.request.stream
        if callable(stream) and flow.response is None:
            body = feed(stream, _chunks(flow.request.raw_content or b""))
            flow.request.data.content = body  # what `store_streamed_bodies` would keep
        await self.hook(HttpRequestHook(flow))
        if _killed(flow):
            await self.hook(HttpErrorHook(flow))
            return True
        return False


def _killed(flow: http.HTTPFlow) -> bool:
    return flow.error is not None


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + STREAM_CHUNK] for i in range(0, len(data), STREAM_CHUNK)]


def feed(stream: Callable[[bytes], Any], chunks: Iterable[bytes]) -> bytes:
    """Push chunks and the end-of-body marker (b"") through a mitmproxy stream function."""
    out: list[bytes] = []
    for chunk in [*chunks, b""]:
        result = stream(chunk)
        out.extend([result] if isinstance(result, bytes) else result)
    return b"".join(out)


def snapshot(request: http.Request) -> Sent:
    return Sent(
        request.method,
        request.url,
        request.headers.copy(),
        request.get_content(strict=False) or b"",
    )


def received(response: http.Response) -> Received:
    return Received(
        response.status_code, response.headers.copy(), response.get_content(strict=False) or b""
    )


def canned_response(upstream: Message, render: Callable[[str], str]) -> http.Response:
    """The fixture's upstream answer, encoded as its headers say (gzip and so on)."""
    headers = http.Headers([(render(k).encode(), render(v).encode()) for k, v in upstream.headers])
    if upstream.json_body and "content-type" not in headers:
        headers["Content-Type"] = "application/json"
    response = http.Response.make(upstream.status, b"", headers)
    body = render(upstream.body).encode() if upstream.body is not None else b""
    response.content = body  # encodes per Content-Encoding; sets Content-Length
    return response
