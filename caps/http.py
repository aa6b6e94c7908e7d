"""The HTTP rules capgate enforces, in one place: the caps loader checks a file with them
and the proxy checks every request and edit with the same functions, so a file can never
load with something the request path would then refuse.

- Destinations: `Destination(scheme, host, port)`, `https_port_for(port)`; host names,
  default ports and authority parsing (`parse_authority`) are in hosts.py.
- Request targets: `path_without_query`, `target_problem`; framing: `transfer_coding_problem`,
  `connection_nominations`.
- Header names and values: `FORBIDDEN_HEADERS`, `valid_header_name`, `valid_header_value`,
  `header_problem` (the reason codes of a refused header edit), `has_line_break`.
- Query parameters and paths a transform writes: `valid_query_name`,
  `valid_query_value`, `valid_path`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from capgate.caps.hosts import DEFAULT_PORTS

# The longest header name a transform may write (names are short; 256 is generous).
MAX_HEADER_NAME = 256
# The longest header value, query value or path a transform may write, in UTF-8 bytes.
MAX_VALUE_BYTES = 8192

# Headers that route or frame the request: a transform changing them could redirect a
# credential (Host) or desynchronise the connection (framing). caps.yaml may not name
# them and no edit or minted credential ever writes them.
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

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab
_PATH_FORBIDDEN = re.compile(r"[\x00-\x20\x7f?#]")


# --- ports and destinations ----------------------------------------------------------------


def https_port_for(port: int) -> int:
    """The port an https capability would use for a plain-http request on `port`: the
    https default for the http default, the same port otherwise."""
    return DEFAULT_PORTS["https"] if port == DEFAULT_PORTS["http"] else port


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a request really goes: lower-case scheme, normalised host, port."""

    scheme: str
    host: str  # normalised (normalize_host)
    port: int


# --- request targets -----------------------------------------------------------------------


def path_without_query(target: str) -> str:
    """The path of a request target, without its query string and fragment."""
    if "?" in target:
        target = target.partition("?")[0]
    if "#" in target:
        target = target.partition("#")[0]
    return target


def target_problem(target: str, method: str = "GET") -> str | None:
    """`bad_target` for a request target that is not origin-form (`/...`, or `*` for
    OPTIONS), or that carries a fragment.

    Only origin-form may reach the upstream: an absolute-form target (`https://other/x`,
    which an HTTP/2 `:path` can carry) is forwarded to an HTTP/1.1 upstream as its
    request line, and servers route by that line's host over the Host header. A fragment
    is not valid HTTP, and an upstream that keeps `#` as a path character resolves
    `/ok#/../admin` past the path glob."""
    if target == "*":
        return None if method.upper() == "OPTIONS" else "bad_target"
    if not target.startswith("/") or "#" in target:
        return "bad_target"
    return None


# The Connection options capgate forwards: every other token nominates a header as
# hop-by-hop, and an intermediary upstream would drop it (a header capgate set, say).
CONNECTION_OPTIONS = frozenset({"close", "keep-alive", "upgrade", "te"})


def connection_nominations(value: str) -> list[str]:
    """The header names a Connection header value nominates (lower case), beyond the
    options capgate keeps."""
    tokens = (token.strip().lower() for token in value.split(","))
    return [token for token in tokens if token and token not in CONNECTION_OPTIONS]


def transfer_coding_problem(values: list[str]) -> str | None:
    """`bad_framing` unless the request's Transfer-Encoding is absent or exactly one
    `chunked`: other codings (`gzip, chunked`) are framed differently by different
    servers, so capgate refuses them."""
    if not values:
        return None
    if len(values) == 1 and values[0].strip().lower() == "chunked":
        return None
    return "bad_framing"


# --- headers -------------------------------------------------------------------------------


def valid_header_name(name: str) -> bool:
    """An RFC 9110 token of at most MAX_HEADER_NAME characters."""
    return len(name) <= MAX_HEADER_NAME and bool(_HEADER_NAME.fullmatch(name))


def forbidden_header(name: str) -> bool:
    """Whether a transform may never write this header (it routes or frames the request)."""
    return name.lower() in FORBIDDEN_HEADERS


def valid_header_value(value: str) -> bool:
    """No CR, LF, NUL or other control character except tab; at most 8 KiB of UTF-8."""
    return not _CONTROL.search(value) and len(value.encode("utf-8", "replace")) <= MAX_VALUE_BYTES


def header_problem(name: str, value: str | None) -> str | None:
    """Why capgate will not write this header (`invalid_header_name`, `forbidden_header`,
    `invalid_header_value`), or None. `value` None checks the name only."""
    if not valid_header_name(name):
        return "invalid_header_name"
    if forbidden_header(name):
        return "forbidden_header"
    if value is not None and not valid_header_value(value):
        return "invalid_header_value"
    return None


def has_line_break(value: bytes) -> bool:
    """Whether a raw header value carries CR, LF or NUL (an obs-fold, or a header
    injection): a request with one is refused (`bad_header`)."""
    return b"\r" in value or b"\n" in value or b"\x00" in value


# --- query parameters and paths --------------------------------------------------------------


def valid_query_name(name: str) -> bool:
    """Non-empty, no control character, and none of `&`, `=`, `#`."""
    return bool(name) and not any(ord(c) < 0x20 or c in "&=#" for c in name)


def valid_query_value(value: str) -> bool:
    """No control character except tab (the value is percent-encoded later); at most 8 KiB."""
    return valid_header_value(value)


def valid_path(path: str) -> bool:
    """An origin-form path without query or fragment, whitespace or control characters."""
    return (
        path.startswith("/")
        and not _PATH_FORBIDDEN.search(path)
        and len(path.encode("utf-8", "replace")) <= MAX_VALUE_BYTES
    )
