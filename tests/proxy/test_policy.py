"""Destination checks: Host/:authority against the real destination, proxy tokens."""

from __future__ import annotations

import base64

import pytest
from mitmproxy.test import tutils

from capgate.caps import Destination, parse_authority
from capgate.proxy.addon.checks import authority_mismatch, proxy_token


@pytest.mark.parametrize(
    ("value", "scheme", "expected"),
    [
        ("API.GitHub.COM.", "https", ("api.github.com", 443)),
        ("api.github.com:443", "https", ("api.github.com", 443)),
        ("example.com", "http", ("example.com", 80)),
        ("[::1]:8443", "https", ("::1", 8443)),
        ("[0:0::1]", "https", ("::1", 443)),
        ("bücher.example", "https", ("xn--bcher-kva.example", 443)),
        ("2130706433:80", "http", ("127.0.0.1", 80)),
    ],
)
def test_authorities_are_normalised_with_default_ports(value, scheme, expected) -> None:
    assert parse_authority(value, scheme) == expected


@pytest.mark.parametrize("value", ["api.github.com:99999", "[::1", "a b", ""])
def test_malformed_authorities_are_errors(value) -> None:
    with pytest.raises(ValueError):
        parse_authority(value, "https")


def _request(host_headers: list[str]):
    request = tutils.treq(host="api.github.com", port=443, scheme="https", authority="")
    request.headers.pop("host", None)
    for value in host_headers:
        request.headers.add("Host", value)
    return request


DEST = Destination("https", "api.github.com", 443)


def test_equivalent_host_spellings_are_not_a_mismatch() -> None:
    assert not authority_mismatch(_request(["API.github.com.:443"]), DEST)
    assert not authority_mismatch(_request([]), DEST)


def test_other_host_other_port_or_two_hosts_are_a_mismatch() -> None:
    assert authority_mismatch(_request(["evil.example"]), DEST)
    assert authority_mismatch(_request(["api.github.com:8443"]), DEST)
    assert authority_mismatch(_request(["api.github.com", "api.github.com"]), DEST)
    assert authority_mismatch(_request(["api.github.com:bad"]), DEST)


def test_a_dns_name_in_brackets_is_a_mismatch_not_the_name() -> None:
    """Brackets hold an IPv6 address (RFC 3986); `[api.github.com]` is no spelling of
    api.github.com that an upstream would agree on, so it is refused, not unwrapped."""
    assert authority_mismatch(_request(["[api.github.com]"]), DEST)
    assert authority_mismatch(_request(["[api.github.com]:443"]), DEST)
    v6 = Destination("https", "::1", 443)
    assert not authority_mismatch(_request(["[::1]:443"]), v6)


def test_proxy_token_is_the_basic_password() -> None:
    request = _request([])
    request.headers["Proxy-Authorization"] = "Basic " + base64.b64encode(b"agent:cg_x").decode()
    assert proxy_token(request) == "cg_x"
    request.headers["Proxy-Authorization"] = "Bearer cg_x"
    assert proxy_token(request) is None
