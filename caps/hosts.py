"""Host names: normalisation, default ports, authorities and the host patterns of caps.yaml.

Two spellings of one destination must compare equal, so both the hosts written in
caps.yaml and the hosts the proxy connects to go through `normalize_host`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

# UTS-46 (the mapping browsers use); Python's own codec only knows IDNA 2003.
import idna as _idna

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_HOST_LENGTH = 253


def default_port(scheme: str) -> int:
    """The port a URL of `scheme` uses when it names none (443 for https, 80 for http)."""
    try:
        return DEFAULT_PORTS[scheme.lower()]
    except KeyError:
        raise ValueError(f"unknown scheme {scheme!r}; expected http or https") from None


def normalize_host(host: str) -> str:
    """The canonical spelling of a DNS name or IP address; ValueError if it is neither.

    Lower case, one trailing dot dropped, IPv6 brackets dropped (and the address
    compressed), IDNA to ASCII (UTS-46), and the numeric IPv4 forms an URL parser accepts
    (`2130706433`, `0x7f.1`, `0177.0.0.1`) written as a dotted quad.
    """
    if not isinstance(host, str):
        raise ValueError("empty host")
    return _normalized(host)


@lru_cache(maxsize=4096)
def _normalized(host: str) -> str:
    """normalize_host's work, cached: it runs two or three times per request on the same
    few names (IPv4 and IDNA parsing cost microseconds); errors are not cached."""
    if not host.strip():
        raise ValueError("empty host")
    host = host.strip()
    if host.startswith("[") or ":" in host:
        return _normalize_ipv6(host)
    if not host.isascii():
        host = _to_ascii(host)
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise ValueError("empty host")
    ipv4 = _parse_ipv4(host)
    if ipv4 is not None:
        return ipv4
    _check_dns_name(host)
    return host


def is_ip_address(host: str) -> bool:
    """Whether a normalised host is an IP address rather than a DNS name.

    Cheap on purpose (it runs per request): after `normalize_host`, only IPv6 has a colon
    and only IPv4 ends in an all-digit label.
    """
    return ":" in host or host.rpartition(".")[2].isdigit()


def _normalize_ipv6(host: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unbalanced brackets in host {host!r}")
        host = host[1:-1]
    try:
        return ipaddress.IPv6Address(host).compressed
    except ValueError:
        raise ValueError(f"not an IPv6 address: {host!r}") from None


def _to_ascii(host: str) -> str:
    try:
        return _idna.encode(host, uts46=True).decode("ascii")
    except (UnicodeError, ValueError):
        # idna.IDNAError is a UnicodeError; the text names the host only.
        raise ValueError(f"not a valid internationalised host name: {host!r}") from None


def _parse_ipv4_part(part: str) -> int | None:
    """One dotted part in inet_aton syntax (decimal, 0x hex, leading-0 octal), or None."""
    try:
        if part[:2] in ("0x", "0X"):
            return int(part[2:], 16) if part[2:] else 0
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def _parse_ipv4(host: str) -> str | None:
    """The dotted quad for a numeric IPv4 host, None for a DNS name.

    As in the WHATWG URL parser: a host whose last label is numeric must be an IPv4
    address, so `1.2.3.999` is an error rather than a DNS name.
    """
    parts = host.split(".")
    if _parse_ipv4_part(parts[-1]) is None:
        return None
    numbers = [_parse_ipv4_part(p) if p else None for p in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise ValueError(f"not a valid IPv4 address: {host!r}")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise ValueError(f"IPv4 address out of range: {host!r}")
    address = values[-1]
    for position, number in enumerate(values[:-1]):
        address += number << (8 * (3 - position))
    return str(ipaddress.IPv4Address(address))


def _check_dns_name(host: str) -> None:
    if len(host) > _MAX_HOST_LENGTH:
        raise ValueError(f"host name longer than {_MAX_HOST_LENGTH} characters")
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"not a valid host name: {host!r} (bad label {label!r})")
        if label.startswith("xn--"):
            try:
                _idna.decode(label)
            except (UnicodeError, ValueError):
                raise ValueError(f"not a valid A-label: {label!r}") from None


@dataclass(frozen=True)
class HostPattern:
    """A caps.yaml host: an exact host or `*.suffix`, with an optional port.

    `port=None` matches only the default port of the request's scheme. A wildcard
    `*.example.com` matches `a.example.com` and `a.b.example.com`, never `example.com`,
    and never an IP address.
    """

    host: str  # the exact host, or the suffix after "*." for a wildcard
    port: int | None
    wildcard: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"*.{host}" if self.wildcard else host
        return text if self.port is None else f"{text}:{self.port}"

    def matches(self, scheme: str, host: str, port: int) -> bool:
        """Whether a normalised destination falls under this pattern (a linear check)."""
        wanted_port = DEFAULT_PORTS.get(scheme) if self.port is None else self.port
        if port != wanted_port:
            return False
        if not self.wildcard:
            return host == self.host
        return host.endswith("." + self.host) and not is_ip_address(host)


def parse_host_pattern(text: str) -> HostPattern:
    """Parse and normalise one caps.yaml host; ValueError says what was expected."""
    text = text.strip()
    try:
        host, port = split_authority(text)
    except BadPort as exc:
        raise ValueError(f"bad port in host pattern {text!r}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"bad host pattern {text!r}: {exc}") from None
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise ValueError(
            f"bad host pattern {text!r}: a wildcard is allowed only as a whole first "
            "label, as in '*.example.com'"
        )
    try:
        normalised = normalize_host(host)
    except ValueError as exc:
        raise ValueError(f"bad host pattern {text!r}: {exc}") from None
    if wildcard and (is_ip_address(normalised) or _parse_ipv4_suffix(host)):
        raise ValueError(f"bad host pattern {text!r}: a wildcard needs a DNS name suffix")
    return HostPattern(host=normalised, port=port, wildcard=wildcard)


def _parse_ipv4_suffix(host: str) -> bool:
    return all(label.isdigit() for label in host.rstrip(".").split("."))


class BadPort(ValueError):
    """The port of an authority is not a number in 1-65535."""


def split_authority(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` → (host as written, port or None).

    A bracketed host keeps its brackets (normalize_host then requires an IPv6 address
    inside); a host with more than one colon and no brackets is a bare IPv6 address.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("unbalanced '['")
        host, rest = text[: close + 1], text[close + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("expected ':PORT' after ']'")
        return host, _port(rest[1:])
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port)
    return text, None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadPort("expected 1-65535")
    return int(text)


def parse_authority(value: str, scheme: str) -> tuple[str, int]:
    """A Host header or :authority → (normalised host, port, the scheme's default if
    none); ValueError when it is neither a DNS name nor an IP address."""
    host, port = split_authority(value)
    return normalize_host(host), port if port is not None else default_port(scheme)
