"""capgate's own answers to the agent: the 407 challenge and the JSON refusals.

Every body is short JSON naming what was refused and why; none carries a value or an
upstream byte.
"""

from __future__ import annotations

import json

from mitmproxy import http

from capgate.caps import Destination

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
    "bad_target": "capgate: the request target is not an origin-form path",
    "bad_framing": "capgate: the request's transfer coding is not plain chunked",
    "not_http": "capgate: traffic inside the tunnel is not HTTP",
    "bad_header": "capgate: a request header value contains a line break",
    "internal_error": "capgate: internal error; the request was refused",
    "audit_unavailable": "capgate: the decision log cannot be written; refusing requests"
    " until it can (--audit-fail-closed)",
    "upstream_timeout": "capgate: the upstream did not answer in time",
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


# --- upstream failures ----------------------------------------------------------------
#
# When the upstream cannot be reached mitmproxy answers the agent itself, with an HTML page
# naming mitmproxy. capgate answers JSON instead, with the cause class (what the agent can
# act on) and never the raw error text (it can name internal hosts and addresses).

UPSTREAM_CAUSES = (  # (cause, words in mitmproxy's error message), first match wins
    ("dns", ("name or service not known", "getaddrinfo", "nodename nor servname", "no address")),
    ("timeout", ("timed out", "timeout")),
    ("tls", ("tls", "ssl", "certificate", "handshake")),
    ("connect_refused", ("connection refused", "connect call failed")),
    ("unreachable", ("unreachable", "no route")),
    ("closed", ("disconnected", "closed", "reset", "eof")),
)
UPSTREAM_MESSAGES = {
    "dns": "capgate: the upstream host name does not resolve",
    "timeout": "capgate: the upstream did not answer in time",
    "tls": "capgate: TLS with the upstream failed (certificate or handshake)",
    "connect_refused": "capgate: the upstream refused the connection",
    "unreachable": "capgate: the upstream is unreachable",
    "closed": "capgate: the upstream closed the connection before answering",
    "error": "capgate: the upstream could not be reached",
}


def upstream_cause(message: str) -> str:
    """The cause class of an upstream failure message (`error` when none fits)."""
    lowered = message.lower()
    for cause, words in UPSTREAM_CAUSES:
        if any(word in lowered for word in words):
            return cause
    return "error"


def error_body(status: int, message: str) -> bytes:
    """capgate's JSON for an answer mitmproxy makes itself (upstream failure, bad request)."""
    if status >= 500:
        cause = upstream_cause(message)
        body = {"error": UPSTREAM_MESSAGES[cause], "reason": f"upstream_{cause}", "cause": cause}
    else:
        body = {"error": "capgate: the request could not be parsed", "reason": "bad_request"}
    return json.dumps(body).encode()


def install_error_pages() -> None:
    """Make mitmproxy's own error answers capgate's JSON (HTTP/1 and HTTP/2 clients).

    mitmproxy has no hook for these answers; its two builders are replaced. Over HTTP/2
    mitmproxy still labels the body text/html.
    """
    from mitmproxy.net.http import http1
    from mitmproxy.proxy.layers.http import _http1, _http2

    def make_error_response(status_code: int, message: str = "") -> bytes:
        if status_code >= 500 and upstream_cause(message) == "timeout":
            status_code = 504  # a deadline capgate enforces (deadlines.py) or a timeout
        response = http.Response.make(
            status_code,
            error_body(status_code, message),
            {"Content-Type": "application/json", "Connection": "close"},
        )
        return http1.assemble_response(response)

    _http1.make_error_response = make_error_response
    _http2.format_error = error_body  # type: ignore[assignment]


def internal_error_response(status: int) -> http.Response:
    """capgate's answer when one of its own hooks failed: no upstream byte, no request
    byte, only the fact (500 before the upstream saw the request, 502 after)."""
    body = {"error": DENY_MESSAGES["internal_error"], "reason": "internal_error"}
    return http.Response.make(status, json.dumps(body), {"Content-Type": "application/json"})
