"""Host normalisation and caps.yaml host patterns."""

from __future__ import annotations

import pytest

from capgate.caps import default_port, normalize_host
from capgate.caps.hosts import HostPattern, parse_host_pattern


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("API.GitHub.COM", "api.github.com"),
        ("api.github.com.", "api.github.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("a。b.com", "a.b.com"),
        ("[::1]", "::1"),
        ("[2001:DB8:0:0:0:0:0:1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("１２７.０.０.１", "127.0.0.1"),
        ("my_host.internal", "my_host.internal"),
        ("localhost", "localhost"),
    ],
)
def test_equivalent_spellings_normalise_to_one_host(raw: str, expected: str):
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "a..b",
        "a b.com",
        "1.2.3.999",
        "1.2.3.4.5",
        "[::1",
        "[nothost]",
        "::g",
        "-a.com",
        "xn--zz.example",
        "a" * 64 + ".com",
        "0x1.0xfffffffff",
    ],
)
def test_a_host_that_is_neither_dns_name_nor_ip_is_a_value_error(raw: str):
    with pytest.raises(ValueError):
        normalize_host(raw)


def test_default_ports_are_443_for_https_and_80_for_http():
    assert (default_port("https"), default_port("HTTP")) == (443, 80)


def test_exact_pattern_without_port_matches_only_the_default_port():
    pattern = parse_host_pattern("api.github.com")

    assert pattern.matches("https", "api.github.com", 443)
    assert not pattern.matches("https", "api.github.com", 8443)
    assert not pattern.matches("http", "api.github.com", 443)


def test_pattern_with_port_matches_that_port_only():
    pattern = parse_host_pattern("api.github.com:8443")

    assert pattern.matches("https", "api.github.com", 8443)
    assert not pattern.matches("https", "api.github.com", 443)


def test_wildcard_matches_subdomains_at_any_depth_but_not_the_apex():
    pattern = parse_host_pattern("*.example.com")

    assert pattern.matches("https", "a.example.com", 443)
    assert pattern.matches("https", "a.b.example.com", 443)
    assert not pattern.matches("https", "example.com", 443)
    assert not pattern.matches("https", "badexample.com", 443)


def test_patterns_are_normalised_like_requests():
    assert parse_host_pattern("*.Bücher.Example.:8080") == HostPattern(
        host="xn--bcher-kva.example", port=8080, wildcard=True
    )
    assert parse_host_pattern("[::1]:8443") == HostPattern(host="::1", port=8443, wildcard=False)


def test_wildcard_over_ip_address_is_rejected():
    with pytest.raises(ValueError, match="DNS name suffix"):
        parse_host_pattern("*.0.0.1")
