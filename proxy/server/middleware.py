"""ASGI middleware: request size limits (413), an access log without values, and a last
line of defence that turns any escaped exception into a JSON 500 (never a traceback page).

The access log names method, a redacted path, status and duration: no query string (the
OAuth callback's carries the code and state), no headers, no body; the one-time token of
`/login/<token>` is replaced by `…`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("capgate.server.access")
log = logging.getLogger("capgate.server")


class _TooLarge(Exception):
    pass


def redact_path(path: str) -> str:
    if path.startswith("/login/") and not path.startswith("/login/oidc"):
        return "/login/…"
    return path[:200]


async def _json(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": code, "message": message, "fields": []}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Size limit, access log, JSON 500 for anything that escapes the app."""

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": None}
        path = redact_path(scope.get("path", ""))
        method = scope.get("method", "")

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await _json(send, 413, "too_large", f"the body exceeds {self.max_body} bytes")
            self._log(method, path, 413, started)
            return

        seen = 0
        over = False

        async def limited_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    over = True
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            if over:
                # The app answered a body it could not read (FastAPI turns a failed read
                # into its own 400): the answer is 413, whatever the app made of it.
                if status["code"] is None and message["type"] == "http.response.start":
                    status["code"] = 413
                    await _json(send, 413, "too_large", f"the body exceeds {self.max_body} bytes")
                return
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if status["code"] is None:
                await _json(send, 413, "too_large", f"the body exceeds {self.max_body} bytes")
                status["code"] = 413
        except Exception as exc:
            log.error("unhandled %s in %s %s", type(exc).__name__, method, path)
            if status["code"] is None:
                await _json(send, 500, "internal", "internal error")
                status["code"] = 500
        self._log(method, path, status["code"], started)

    @staticmethod
    def _log(method: str, path: str, code: int | None, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000
        access_log.info("%s %s %s %.1fms", method, path, code, ms)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
