"""Deadlines on capgate's upstream connections: connect, and the wait for an answer.

mitmproxy puts no time limit on opening an upstream connection (the kernel's SYN
retries run for minutes) nor on waiting for the response head. `UpstreamDeadlines`:

- connect: `server_connect` runs inside the task that opens the connection; if it is not
  connected within CONNECT_DEADLINE_S that task is cancelled with a message saying so,
  and the agent gets capgate's JSON 504 (`upstream_timeout`) and a row;
- answer: a request fully sent whose response head has not arrived RESPONSE_DEADLINE_S
  after the request ended is answered 504 with capgate's JSON (an HTTP/1 upstream: the
  answer is fed to mitmproxy as the upstream's, with `Connection: close`, so it passes
  the response hooks and gets its row, reason `upstream_timeout`; an HTTP/2 upstream
  connection is closed instead, a 502). A response that has begun is not cut: a long
  stream (SSE, downloads) is the upstream's business.

Both come from CAPGATE_UPSTREAM_CONNECT_TIMEOUT / CAPGATE_UPSTREAM_TIMEOUT (seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import weakref
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import events

from .flowstate import get_state

logger = logging.getLogger("capgate.deadlines")

CONNECT_DEADLINE_S = 10.0
RESPONSE_DEADLINE_S = 60.0
CONNECT_ENV = "CAPGATE_UPSTREAM_CONNECT_TIMEOUT"
RESPONSE_ENV = "CAPGATE_UPSTREAM_TIMEOUT"
CHECK_EVERY_S = 0.25
REASON = "upstream_timeout"


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise ValueError(f"{name} must be a number of seconds above 0 (at most 86400)")
    return value


def timeout_body(stage: str, seconds: float) -> bytes:
    return json.dumps(
        {
            "error": f"capgate: the upstream did not {stage} within {seconds:g} s",
            "reason": REASON,
            "cause": "timeout",
        }
    ).encode()


class UpstreamDeadlines:
    name = "capgate-deadlines"

    def __init__(self, connect_s: float | None = None, response_s: float | None = None) -> None:
        self.connect_s = connect_s if connect_s is not None else _seconds(CONNECT_ENV, 10.0)
        self.response_s = response_s if response_s is not None else _seconds(RESPONSE_ENV, 60.0)
        self._connecting: weakref.WeakKeyDictionary[Any, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary()
        )
        self._waiting: dict[int, tuple[http.HTTPFlow, float]] = {}
        self._checker: asyncio.Task[None] | None = None

    # -- connect -------------------------------------------------------------------------

    def server_connect(self, data: Any) -> None:
        task = asyncio.current_task()
        if task is None:
            return
        server = data.server
        loop = asyncio.get_running_loop()
        self._connecting[server] = loop.call_later(
            self.connect_s, self._connect_expired, task, server.address
        )

    def _connect_expired(self, task: asyncio.Task[Any], address: Any) -> None:
        host, port = (address or ("?", 0))[:2]
        logger.warning(
            "upstream %s:%s: no connection within %g s; refused", host, port, self.connect_s
        )
        for flow, _ in self._waiting.values():  # their rows say why
            if (flow.request.host, flow.request.port) == (host, port):
                state = get_state(flow)
                if state is not None and state.reason is None:
                    state.reason = REASON
        task.cancel(f"capgate: upstream connect timed out after {self.connect_s:g} s")

    def server_connected(self, data: Any) -> None:
        self._disarm(data.server)

    def server_connect_error(self, data: Any) -> None:
        self._disarm(data.server)

    def server_disconnected(self, data: Any) -> None:
        self._disarm(data.server)

    def _disarm(self, server: Any) -> None:
        handle = self._connecting.pop(server, None)
        if handle is not None:
            handle.cancel()

    # -- waiting for the answer ------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.request(flow)  # a streamed body: the connection may open before `request`

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        loop = asyncio.get_running_loop()
        self._waiting[id(flow)] = (flow, loop.time() + self.response_s)
        if self._checker is None or self._checker.done():
            self._checker = loop.create_task(self._check())

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._waiting.pop(id(flow), None)

    def error(self, flow: http.HTTPFlow) -> None:
        self._waiting.pop(id(flow), None)

    def done(self) -> None:
        if self._checker is not None:
            self._checker.cancel()

    async def _check(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            await asyncio.sleep(CHECK_EVERY_S)
            now = loop.time()
            for key, (flow, deadline) in list(self._waiting.items()):
                if flow.response is not None or not flow.live:
                    self._waiting.pop(key, None)
                elif now >= deadline:
                    self._waiting.pop(key, None)
                    await self._answer_timeout(flow)

    async def _answer_timeout(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is not None:
            state.reason = REASON
        logger.warning(
            "upstream %s did not answer %s %s within %g s; answered 504",
            flow.request.pretty_host,
            flow.request.method,
            state.path if state is not None else "",
            self.response_s,
        )
        server = flow.server_conn
        handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
        if handler is None:
            return
        if server.alpn == b"h2" or server.address is None:
            io = handler.transports.get(server)
            if io is not None and io.handler is not None:
                io.handler.cancel("capgate: upstream answer timed out")
            return
        body = timeout_body("answer", self.response_s)
        head = (
            "HTTP/1.1 504 Gateway Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        await handler.server_event(events.DataReceived(server, head + body))
