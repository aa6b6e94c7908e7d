"""Who is asking and where the request really goes: the checks before any transform.

The destination is what mitmproxy connects to: `request.scheme/host/port` (the CONNECT
target inside a tunnel, the absolute-form URL for plain HTTP). `Host` and `:authority`
are whatever the agent wrote; they must name the same normalised destination or the
request is refused (`host_mismatch`).
"""

from __future__ import annotations

import base64
import binascii
from operator import itemgetter

from mitmproxy import http

from capgate.caps import Destination, normalize_host, parse_authority
from capgate.caps.http import (
    connection_nominations,
    has_line_break,
    target_problem,
    transfer_coding_problem,
)

from .apply import header_values

PROXY_AUTHORIZATION = "Proxy-Authorization"


def destination(request: http.Request) -> Destination:
    """The normalised real destination; ValueError for a host that is no DNS name or IP."""
    scheme = request.scheme.lower()
    return Destination(scheme, normalize_host(request.host), request.port)


def connect_destination(request: http.Request) -> Destination:
    """A CONNECT target: the scheme inside the tunnel is not known yet; assume https."""
    return Destination("https", normalize_host(request.host), request.port)


def pin_destination(request: http.Request, dest: Destination) -> None:
    """Make mitmproxy connect to the host the policy matched, spelled as matched.

    mitmproxy decodes an A-label (`xn--fa-hia.test` arrives as `faß.test`) and the
    resolver encodes it again with IDNA 2003, which maps `ß` to `ss`: the connection
    would go to `fass.test` while the policy matched `xn--fa-hia.test` (UTS-46). The
    Host header is left as the agent wrote it (it already names the same destination).
    """
    if request.host != dest.host:
        request.data.host = dest.host


def request_problem(request: http.Request) -> str | None:
    """A request shape capgate refuses before matching: `bad_target` for a target that
    is not origin-form or has a fragment, `bad_header` for a header value with CR, LF or
    NUL (an obs-fold, which mitmproxy would forward as a folded line), `bad_framing` for
    a transfer coding other than one `chunked`. The rules are in capgate.caps.http."""
    problem = target_problem(request.path, request.method)
    if problem is not None:
        return problem
    # One search over every value (joined with a space, which is no line break).
    if has_line_break(b" ".join(map(itemgetter(1), request.headers.fields))):
        return "bad_header"
    return transfer_coding_problem(header_values(request.headers, "transfer-encoding"))


def drop_nominated_headers(request: http.Request) -> None:
    """Treat the headers a `Connection:` header nominates as what they are, hop-by-hop:
    they end here (RFC 9110 7.6.1), and so does their nomination. What is forwarded
    carries only `close`, `keep-alive`, `upgrade` and `te`, so no header capgate sets
    later can be nominated for an upstream intermediary to drop."""
    values = header_values(request.headers, "connection")
    if not values:
        return
    nominated = {name for value in values for name in connection_nominations(value)}
    if not nominated:
        return
    kept = [
        token.strip()
        for value in values
        for token in value.split(",")
        if token.strip() and token.strip().lower() not in nominated
    ]
    fields = tuple(
        field
        for field in request.headers.fields
        if field[0].lower().decode("latin-1") not in nominated | {"connection"}
    )
    if kept:
        fields = (*fields, (b"Connection", ", ".join(kept).encode("latin-1")))
    request.headers.fields = fields


def authority_mismatch(request: http.Request, dest: Destination) -> bool:
    """Whether any Host header or :authority names something other than `dest`.

    More than one Host header is a mismatch too: which one the upstream reads is its choice.
    """
    claimed = header_values(request.headers, "host")
    if len(claimed) > 1:
        return True
    if request.authority:
        claimed = [*claimed, request.authority]
    for value in claimed:
        try:
            if parse_authority(value, dest.scheme) != (dest.host, dest.port):
                return True
        except ValueError:
            return True
    return False


def proxy_token(request: http.Request) -> str | None:
    """The agent token: the password of a Basic Proxy-Authorization header, if any."""
    values = header_values(request.headers, PROXY_AUTHORIZATION)
    if len(values) != 1:
        return None
    scheme, _, encoded = values[0].strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None
