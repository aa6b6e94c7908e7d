"""Applying edits and minted credentials to a mitmproxy request.

Each function returns None when it applied, or a short reason code when it could not;
values never appear in a reason. Header names and values are validated here again (the
caps engine validates too): a value with CR, LF or NUL would add a header on the wire.
Bodies are written only through `set_content`, which keeps Content-Length right.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from mitmproxy import http

from capgate.broker.providers import PROVIDERS
from capgate.broker.types import WireCredential
from capgate.caps import BodyEdit, HeaderEdit, PathEdit, QueryEdit, apply_body_edit

MAX_HEADER_VALUE = 8192
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
# Headers that frame the message or steer the connection: a transform never touches them.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "expect",
    }
)


def header_problem(name: str, value: str | None) -> str | None:
    if not _TOKEN.match(name):
        return "invalid_header_name"
    if name.lower() in FORBIDDEN_HEADERS:
        return "forbidden_header"
    if value is not None and (_BAD_VALUE.search(value) or len(value) > MAX_HEADER_VALUE):
        return "invalid_header_value"
    return None


def auth_slots(provider: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Header names and query parameters where this provider's credential goes."""
    spec = PROVIDERS.get(provider)
    if spec is None:  # the loader refuses unknown providers; stay closed anyway
        return ("Authorization",), ()
    headers = (spec.header,) if spec.header else ()
    query = (spec.query_param,) if spec.query_param else ()
    return headers, query


def clear_slots(request: http.Request, headers: Sequence[str], query: Sequence[str]) -> None:
    """Remove every agent-supplied value under these names (never fail open)."""
    for name in headers:
        request.headers.pop(name, None)
    if query and request.query:
        for name in query:
            if name in request.query:
                del request.query[name]


def stamp(request: http.Request, wire: WireCredential) -> str | None:
    """Put a minted credential on the request, replacing; companions only when absent."""
    for name, secret in wire.headers:
        if header_problem(name, secret.reveal()) is not None:
            return "invalid_header_value"
    for name, secret in wire.headers:
        request.headers[name] = secret.reveal()
    for name, secret in wire.query:
        request.query.set_all(name, [secret.reveal()])
    for name, value in wire.companion_headers:
        if name not in request.headers and header_problem(name, value) is None:
            request.headers[name] = value
    for name, value in wire.companion_query:
        if name not in request.query:
            request.query[name] = value
    return None


def apply_edit(request: http.Request, edit: Any) -> str | None:
    """Apply a header, query or path edit."""
    if isinstance(edit, HeaderEdit):
        problem = header_problem(edit.name, edit.value)
        if problem:
            return problem
        if edit.action == "remove":
            request.headers.pop(edit.name, None)
        elif edit.action == "append":
            request.headers.add(edit.name, edit.value or "")
        else:
            request.headers[edit.name] = edit.value or ""
        return None
    if isinstance(edit, QueryEdit):
        if edit.value is not None and _BAD_VALUE.search(edit.value):
            return "invalid_query_value"
        if edit.action == "remove":
            if edit.name in request.query:
                del request.query[edit.name]
        elif edit.action == "append":
            request.query.add(edit.name, edit.value or "")
        else:
            request.query.set_all(edit.name, [edit.value or ""])
        return None
    if isinstance(edit, PathEdit):
        path = edit.path
        if not path.startswith("/") or any(c in path for c in " ?#\r\n\x00\t"):
            return "invalid_path"
        query = request.path.partition("?")[2]
        request.path = path + ("?" + query if query else "")
        return None
    return "unsupported_edit"


def load_json_body(request: http.Request) -> Any:
    """The decoded JSON body; ValueError when it is not JSON (or cannot be decoded)."""
    content = request.get_content(strict=True)
    if not content:
        raise ValueError("empty body")
    return json.loads(content)


def apply_body_edits(document: Any, edits: Sequence[BodyEdit]) -> tuple[Any, dict[int, str]]:
    """Apply pointer edits in order; failures by position, the rest still applied."""
    failures: dict[int, str] = {}
    for position, edit in enumerate(edits):
        try:
            document = apply_body_edit(document, edit)
        except (KeyError, IndexError, TypeError, ValueError):
            failures[position] = "pointer_error"
    return document, failures


def write_json_body(request: http.Request, document: Any) -> None:
    request.set_content(json.dumps(document, separators=(",", ":")).encode())
