"""Bounded resources before authentication: the request head, the number of header
lines, and every buffered request body, whatever the protocol.

mitmproxy 12 has no option for any of these: an unfinished HTTP/1 request head is
buffered without limit (its source says `FIXME: protect against header size DoS`), and
a request body without a length (HTTP/2 has no chunked coding) is buffered without
limit unless the global `body_size_limit` is set, which would also kill streamed uploads
with a known length. capgate therefore wraps two of mitmproxy's layer methods, once per
process (like its error pages in responses.py):

- `Http1Server.read_headers`: 431 and close when the head grows past MAX_HEAD_BYTES or
  holds more than MAX_HEADER_LINES lines, before any hook has run; `Http1Client`'s the
  same for an upstream's response head (502 to the agent).
- `HttpStream.state_consume_request_body`: 413 when a body capgate buffers grows past
  the flow's limit (`BODY_LIMIT_KEY` in flow.metadata: `--body-limit`, set in
  `requestheaders`), for every protocol.

HTTP/2 heads are bounded by hpack's header list limit (64 KiB by default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import flow as mitmflow
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1

from capgate.broker.types import Decision

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADER_LINES = 200
BODY_LIMIT_KEY = "capgate.body_limit"

logger = logging.getLogger("capgate.limits")
_INSTALLED = False


def head_problem(
    data: bytes, max_bytes: int = MAX_HEAD_BYTES, max_lines: int = MAX_HEADER_LINES
) -> str | None:
    """Why a (possibly unfinished) request head is refused, or None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = data if end < 0 else data[:end]
    if len(head) > max_bytes:
        return "request head too large"
    if head.count(b"\n") > max_lines:
        return "too many header lines"
    return None


def _bounded_read_headers(original: Callable[..., Any]) -> Callable[..., Any]:
    def read_headers(self: Any, event: events.ConnectionEvent) -> Generator[Any, Any, None]:
        if isinstance(event, events.DataReceived):
            problem = head_problem(bytes(self.buf))
            if problem is not None:
                logger.warning("refused a request head from %s: %s", self.conn.peername, problem)
                yield commands.SendData(self.conn, _http1.make_error_response(431, problem))
                yield commands.CloseConnection(self.conn)
                self.state = self.done
                return
        yield from original(self, event)

    read_headers.capgate = True  # type: ignore[attr-defined]
    return read_headers


def _bounded_response_head(original: Callable[..., Any]) -> Callable[..., Any]:
    """The same bound on an upstream's response head: an upstream that never ends its
    head (or sends thousands of lines) gets its connection closed and the agent a 502."""

    def read_headers(self: Any, event: events.ConnectionEvent) -> Generator[Any, Any, None]:
        if isinstance(event, events.DataReceived) and self.stream_id is not None:
            problem = head_problem(bytes(self.buf))
            if problem is not None:
                logger.warning("refused a response head from the upstream: %s", problem)
                yield commands.CloseConnection(self.conn)
                yield _http1.ReceiveHttp(
                    http_layers.ResponseProtocolError(
                        self.stream_id,
                        f"upstream response head refused: {problem}",
                        http_layers.ErrorCode.GENERIC_SERVER_ERROR,
                    )
                )
                return
        yield from original(self, event)

    read_headers.capgate = True  # type: ignore[attr-defined]
    return read_headers


def _bounded_consume(original: Callable[..., Any]) -> Callable[..., Any]:
    def consume(self: Any, event: events.Event) -> Generator[Any, Any, None]:
        flow = self.flow
        limit = flow.metadata.get(BODY_LIMIT_KEY) if flow is not None else None
        if (
            limit is not None
            and isinstance(event, http_layers.RequestData)
            and len(self.request_body_buf) + len(event.data) > limit
        ):
            state = flow.metadata.get("capgate")
            if state is not None:
                state.decision, state.reason = Decision.DENY, "body_too_large"
            message = "Request body exceeds capgate's body limit."
            flow.error = mitmflow.Error(message)
            yield http_layers.HttpErrorHook(flow)
            yield http_layers.SendHttp(
                http_layers.ResponseProtocolError(
                    self.stream_id, message, http_layers.ErrorCode.REQUEST_TOO_LARGE
                ),
                self.context.client,
            )
            self.request_body_buf.clear()
            self.client_state = self.state_errored
            flow.live = False
            return
        yield from original(self, event)

    consume.capgate = True  # type: ignore[attr-defined]
    return consume


def install_limits() -> None:
    """Wrap mitmproxy's head reader and body buffer (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    server = _http1.Http1Server
    server.read_headers = _bounded_read_headers(server.read_headers)  # type: ignore[method-assign]
    client = _http1.Http1Client
    client.read_headers = _bounded_response_head(client.read_headers)  # type: ignore[method-assign]
    stream = http_layers.HttpStream
    stream.state_consume_request_body = _bounded_consume(  # type: ignore[method-assign]
        stream.state_consume_request_body
    )
    _INSTALLED = True
