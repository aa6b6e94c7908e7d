"""capgate's own answers to the agent: the 407 challenge and the JSON refusals.

Every body is short JSON naming what was refused and why; none carries a value or an
upstream byte.
"""

from __future__ import annotations

import json

from mitmproxy import http

from .checks import Destination

REALM = "capgate"


def proxy_auth_required() -> http.Response:
    body = {"error": "capgate: proxy authentication required", "reason": "proxy_auth"}
    return http.Response.make(
        407,
        json.dumps(body),
        {"Proxy-Authenticate": f'Basic realm="{REALM}"', "Content-Type": "application/json"},
    )


DENY_MESSAGES = {
    "no_capability": "capgate: no capability allows this request",
    "host_mismatch": "capgate: the Host header does not match the destination",
    "plaintext": "capgate: this capability is not allowed over plain http",
    "tripwire": "capgate: the request carries a credential or secret value",
    "bad_destination": "capgate: the destination host is not a valid name or address",
    "length_required": "capgate: a request body that capgate edits needs a Content-Length",
    "body_too_large": "capgate: the request body is larger than capgate buffers",
    "bad_target": "capgate: the request target is not a valid path",
    "bad_header": "capgate: a request header value contains a line break",
    "audit_unavailable": "capgate: the decision log cannot be written; refusing requests"
    " until it can (--audit-fail-closed)",
}


def deny_response(
    status: int, reason: str, dest: Destination | None, method: str, path: str
) -> http.Response:
    """The JSON refusal an agent can read: what was refused and why, no values."""
    body: dict[str, object] = {"error": DENY_MESSAGES.get(reason, "capgate: denied")}
    body["reason"] = reason
    if dest is not None:
        body.update(scheme=dest.scheme, host=dest.host, port=dest.port)
    body.update(method=method, path=path)
    return http.Response.make(status, json.dumps(body), {"Content-Type": "application/json"})
