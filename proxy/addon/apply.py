"""Applying edits and minted credentials to a mitmproxy request.

Each function returns None when it applied, or a short reason code when it could not;
values never appear in a reason. Every header, query value and path is checked with the
rules in `capgate.caps.http` (the ones the caps loader and engine use) right before it is
written: a value with CR, LF or NUL would add a header on the wire.
Bodies are written only through `set_content`, which keeps Content-Length right.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from mitmproxy import http
from mitmproxy.net.http import url

from capgate.broker.providers import PROVIDERS
from capgate.broker.types import WireCredential
from capgate.caps import Edit, HeaderEdit, PathEdit, QueryEdit
from capgate.caps.http import header_problem, valid_path, valid_query_value


def auth_slots(provider: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every header name and query parameter the provider accepts a credential in (where
    capgate stamps it, and the others): `auth` clears them all of the agent's values."""
    spec = PROVIDERS.get(provider)
    if spec is None:  # the loader refuses unknown providers; stay closed anyway
        return ("Authorization",), ()
    return spec.credential_headers, spec.credential_query


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # as mitmproxy's Headers encode str


@functools.lru_cache(maxsize=1024)
def _lowered_name(name: str) -> bytes:
    return _bytes(name.lower())


@functools.lru_cache(maxsize=1024)
def _lowered(names: tuple[str, ...]) -> frozenset[bytes]:
    return frozenset(map(_lowered_name, names))


def header_values(headers: http.Headers, name: str) -> list[str]:
    """Every value of one header (case-insensitive), as `headers.get_all` gives them, from
    one pass over the raw fields (mitmproxy's multidict costs several calls per field)."""
    lowered = _lowered_name(name)
    return [v.decode("utf-8", "surrogateescape") for k, v in headers.fields if k.lower() == lowered]


def header_value(headers: http.Headers, name: str) -> str | None:
    """`headers.get(name)`: the values joined with ", " (as mitmproxy does), or None."""
    values = header_values(headers, name)
    return ", ".join(values) if values else None


def drop_headers(headers: http.Headers, names: Iterable[str]) -> None:
    """Remove every value of these header names (case-insensitive), in one pass over the
    raw fields (mitmproxy's `pop` of an absent name costs a raised KeyError)."""
    lowered = _lowered(tuple(names))
    fields = headers.fields
    kept = [field for field in fields if field[0].lower() not in lowered]
    if len(kept) != len(fields):
        headers.fields = tuple(kept)


def set_header(headers: http.Headers, name: str, value: str) -> None:
    """Replace every value of `name` with one `value`."""
    lowered = _lowered_name(name)
    kept = [field for field in headers.fields if field[0].lower() != lowered]
    headers.fields = (*kept, (_bytes(name), _bytes(value)))


def header_names(headers: http.Headers) -> set[bytes]:
    return {field[0].lower() for field in headers.fields}


def edit_query(
    request: http.Request, drop: Iterable[str] = (), add: Sequence[tuple[str, str]] = ()
) -> None:
    """Remove every value of the `drop` names, then append `add`, re-encoding the query
    once (mitmproxy's `query` view re-parses the whole URL on every access)."""
    drop = set(drop)
    target, hash_, fragment = request.path.partition("#")
    path, _, query = target.partition("?")
    fields = url.decode(query) if query else []
    kept = [field for field in fields if field[0] not in drop]
    if len(kept) == len(fields) and not add:
        return
    kept.extend(add)
    encoded = url.encode(kept)
    request.path = path + ("?" + encoded if encoded else "") + hash_ + fragment


def query_names(request: http.Request) -> set[str]:
    query = request.path.partition("#")[0].partition("?")[2]
    return {name for name, _ in url.decode(query)} if query else set()


def clear_slots(request: http.Request, headers: Sequence[str], query: Sequence[str]) -> None:
    """Remove every agent-supplied value under these names (never fail open)."""
    if headers:
        drop_headers(request.headers, headers)
    if query:
        edit_query(request, drop=query)


def stamp(request: http.Request, wire: WireCredential) -> str | None:
    """Put a minted credential on the request, replacing; companions only when absent,
    unless the operator pinned them (then they replace too)."""
    for name, secret in wire.headers:
        if header_problem(name, secret.reveal()) is not None:
            return "invalid_header_value"
    for name, secret in wire.headers:
        set_header(request.headers, name, secret.reveal())
    if wire.companion_headers:
        present = header_names(request.headers)
        for name, value in wire.companion_headers:
            if header_problem(name, value) is not None:
                continue
            if name.lower() in wire.pinned:
                set_header(request.headers, name, value)  # the operator's value wins
            elif _bytes(name.lower()) not in present:
                request.headers.fields = (*request.headers.fields, (_bytes(name), _bytes(value)))
    if wire.query or wire.companion_query:
        present_params = query_names(request)
        companions = [
            (n, v) for n, v in wire.companion_query if n in wire.pinned or n not in present_params
        ]
        stamped = [(name, secret.reveal()) for name, secret in wire.query]
        replaced = [name for name, _ in stamped] + [n for n, _ in companions if n in wire.pinned]
        edit_query(request, drop=replaced, add=stamped + companions)
    return None


def apply_edit(request: http.Request, edit: Edit) -> str | None:
    """Apply a header, query or path edit."""
    if isinstance(edit, HeaderEdit):
        problem = header_problem(edit.name, edit.value)
        if problem:
            return problem
        if edit.action == "remove":
            drop_headers(request.headers, [edit.name])
        elif edit.action == "append":
            request.headers.fields = (
                *request.headers.fields,
                (_bytes(edit.name), _bytes(edit.value or "")),
            )
        else:
            set_header(request.headers, edit.name, edit.value or "")
        return None
    if isinstance(edit, QueryEdit):
        if edit.value is not None and not valid_query_value(edit.value):
            return "invalid_query_value"
        if edit.action == "remove":
            edit_query(request, drop=[edit.name])
        elif edit.action == "append":
            edit_query(request, add=[(edit.name, edit.value or "")])
        else:
            edit_query(request, drop=[edit.name], add=[(edit.name, edit.value or "")])
        return None
    if isinstance(edit, PathEdit):
        path = edit.path
        if not valid_path(path):
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


def write_json_body(request: http.Request, document: Any) -> None:
    request.set_content(json.dumps(document, separators=(",", ":")).encode())
