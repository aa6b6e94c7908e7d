"""The verdict table of `decide` and `decide_tunnel`, row by row, without mitmproxy."""

from __future__ import annotations

import dataclasses
import json

import pytest

from capgate.caps import CapsConfig, Destination, Verdict, decide, decide_tunnel, parse_caps
from capgate.caps.decide import NO_CAPABILITY, PLAINTEXT, UNMATCHED


def config(unmatched: str = "deny") -> CapsConfig:
    document = {
        "version": 1,
        "defaults": {"unmatched": unmatched},
        "capabilities": [
            {
                "name": "github-read",
                "match": {"hosts": ["api.github.com"], "methods": ["GET"], "paths": ["/repos/**"]},
            },
            {
                "name": "internal",
                "match": {"hosts": ["intranet.test:8080"], "schemes": ["http", "https"]},
                "allow_plaintext": True,
            },
            {"name": "admin-only", "match": {"hosts": ["admin.test"]}},
        ],
        "roles": {
            "agent": {"capabilities": ["github-read", "internal"]},
            "admin": {"capabilities": ["admin-only"]},
        },
    }
    return parse_caps(json.dumps(document), "caps.yaml")


DENY_BY_DEFAULT = config("deny")
ALLOW_BY_DEFAULT = config("allow")
GITHUB = Destination("https", "api.github.com", 443)


def name(verdict: Verdict) -> str | None:
    return verdict.capability.name if verdict.capability else None


def test_a_matching_capability_is_allowed_with_no_reason() -> None:
    verdict = decide(DENY_BY_DEFAULT, "agent", GITHUB, "GET", "/repos/a/b")
    assert (name(verdict), verdict.allowed, verdict.deny, verdict.reason) == (
        "github-read",
        True,
        None,
        None,
    )


def test_the_query_string_does_not_take_part_in_matching() -> None:
    verdict = decide(DENY_BY_DEFAULT, "agent", GITHUB, "GET", "/repos/a/b?page=2")
    assert name(verdict) == "github-read"


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/repos/a/b"), ("GET", "/user"), ("GET", "/repos/../admin")],
)
def test_a_method_or_path_outside_the_capability_is_no_capability(method, path) -> None:
    verdict = decide(DENY_BY_DEFAULT, "agent", GITHUB, method, path)
    assert (verdict.capability, verdict.deny, verdict.reason) == (
        None,
        NO_CAPABILITY,
        NO_CAPABILITY,
    )
    assert not verdict.allowed


def test_another_roles_capability_is_no_capability() -> None:
    admin = Destination("https", "admin.test", 443)
    assert decide(DENY_BY_DEFAULT, "agent", admin, "GET", "/").deny == NO_CAPABILITY
    assert name(decide(DENY_BY_DEFAULT, "admin", admin, "GET", "/")) == "admin-only"


def test_an_unknown_role_has_no_capability() -> None:
    assert decide(DENY_BY_DEFAULT, "nobody", GITHUB, "GET", "/repos/a").deny == NO_CAPABILITY


def test_unmatched_allow_lets_the_request_through_without_a_capability() -> None:
    verdict = decide(ALLOW_BY_DEFAULT, "agent", GITHUB, "DELETE", "/repos/a")
    assert (verdict.capability, verdict.allowed, verdict.reason) == (None, True, UNMATCHED)


@pytest.mark.parametrize("unmatched", ["deny", "allow"])
def test_plain_http_to_an_https_only_capability_is_plaintext(unmatched: str) -> None:
    """Port 80 stands for 443: the same request over https would match, so it is refused
    as plaintext, also when unmatched requests may pass."""
    plain = Destination("http", "api.github.com", 80)
    verdict = decide(config(unmatched), "agent", plain, "GET", "/repos/a")
    assert (verdict.capability, verdict.deny) == (None, PLAINTEXT)


def test_plain_http_on_another_port_is_compared_with_https_on_that_port() -> None:
    plain = Destination("http", "api.github.com", 8443)
    assert decide(DENY_BY_DEFAULT, "agent", plain, "GET", "/repos/a").deny == NO_CAPABILITY


def test_plain_http_to_a_capability_allowing_it_matches() -> None:
    plain = Destination("http", "intranet.test", 8080)
    verdict = decide(DENY_BY_DEFAULT, "agent", plain, "POST", "/anything")
    assert (name(verdict), verdict.deny) == ("internal", None)


def test_a_capability_matching_http_without_allow_plaintext_is_refused_and_named() -> None:
    """Defence in depth: the loader refuses `schemes: [http]` without allow_plaintext, a
    config built another way is still refused, and the row names the capability."""
    loaded = config()
    internal = loaded.capabilities[1]
    unsafe = dataclasses.replace(internal, allow_plaintext=False)
    capabilities = (loaded.capabilities[0], unsafe, loaded.capabilities[2])
    built = dataclasses.replace(loaded, capabilities=capabilities, _matchers={})
    verdict = decide(built, "agent", Destination("http", "intranet.test", 8080), "GET", "/")
    assert (name(verdict), verdict.deny, verdict.reason) == ("internal", PLAINTEXT, PLAINTEXT)


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        (Destination("https", "api.github.com", 443), None),
        (Destination("https", "intranet.test", 8080), None),  # its http capability counts
        (Destination("https", "api.github.com", 8443), NO_CAPABILITY),
        (Destination("https", "admin.test", 443), NO_CAPABILITY),  # another role's
    ],
)
def test_a_tunnel_opens_only_where_a_capability_could_match(dest, expected) -> None:
    assert decide_tunnel(DENY_BY_DEFAULT, "agent", dest) == expected


def test_every_tunnel_opens_when_unmatched_requests_may_pass() -> None:
    dest = Destination("https", "anywhere.test", 443)
    assert decide_tunnel(ALLOW_BY_DEFAULT, "agent", dest) is None
