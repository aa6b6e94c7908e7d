"""Matching a request to the first capability of a role, through the host index."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.caps import CapsConfig, parse_caps


def config_of(*capabilities: dict, roles: dict | None = None) -> CapsConfig:
    """A config from capability dicts (JSON is YAML); role 'r' gets all unless told."""
    names = [c["name"] for c in capabilities]
    document = {
        "version": 1,
        "capabilities": list(capabilities),
        "roles": roles if roles is not None else {"r": {"capabilities": names}},
    }
    return parse_caps(json.dumps(document), "caps.yaml")


def cap(name: str, *hosts: str, **match) -> dict:
    plaintext = "http" in match.get("schemes", [])
    return {"name": name, "match": {"hosts": list(hosts), **match}, "allow_plaintext": plaintext}


def matched(
    config: CapsConfig,
    scheme="https",
    host="api.example.com",
    port=443,
    method="GET",
    path="/",
    role="r",
) -> str | None:
    found = config.matcher(role).match(scheme, host, port, method, path)
    return found.name if found else None


def test_first_capability_in_file_order_wins():
    config = config_of(
        cap("narrow", "api.example.com", paths=["/a/**"]), cap("broad", "*.example.com")
    )

    assert matched(config, path="/a/b") == "narrow"
    assert matched(config, path="/other") == "broad"


def test_file_order_wins_over_exact_host_before_wildcard():
    config = config_of(cap("wild", "*.example.com"), cap("exact", "api.example.com"))

    assert matched(config) == "wild"


def test_role_sees_only_its_capabilities():
    config = config_of(
        cap("a", "api.example.com"),
        cap("b", "other.example.com"),
        roles={"r": {"capabilities": ["b"]}},
    )

    assert matched(config) is None
    assert matched(config, host="other.example.com") == "b"


def test_unknown_role_matches_nothing():
    config = config_of(cap("a", "api.example.com"))

    assert matched(config, role="nobody") is None


def test_host_without_port_does_not_match_a_non_default_port():
    config = config_of(cap("gh", "api.github.com"))

    assert matched(config, host="api.github.com", port=8443) is None
    assert matched(config, host="api.github.com", port=443) == "gh"


def test_host_with_port_matches_exactly_that_port():
    config = config_of(cap("gh", "api.github.com:8443"))

    assert matched(config, host="api.github.com", port=8443) == "gh"
    assert matched(config, host="api.github.com", port=443) is None


def test_wildcard_does_not_match_the_apex_domain():
    config = config_of(cap("w", "*.example.com"))

    assert matched(config, host="a.b.example.com") == "w"
    assert matched(config, host="example.com") is None


def test_scheme_defaults_to_https_only():
    config = config_of(cap("a", "api.example.com"))

    assert matched(config, scheme="http", port=80) is None


def test_plaintext_capability_matches_http_on_port_80():
    config = config_of(cap("a", "api.example.com", schemes=["http"]))

    assert matched(config, scheme="http", port=80) == "a"


def test_methods_are_compared_upper_case():
    config = config_of(cap("a", "api.example.com", methods=["get"]))

    assert matched(config, method="get") == "a"
    assert matched(config, method="POST") is None


def test_single_star_stays_inside_one_segment():
    config = config_of(cap("a", "api.example.com", paths=["/users/*"]))

    assert matched(config, path="/users/42") == "a"
    assert matched(config, path="/users/42/keys") is None


def test_double_star_spans_segments_and_the_directory_itself():
    config = config_of(cap("a", "api.example.com", paths=["/repos/**"]))

    assert [matched(config, path=p) for p in ("/repos", "/repos/", "/repos/a/b/c")] == ["a"] * 3
    assert matched(config, path="/repository") is None


def test_query_string_is_ignored_when_matching_paths():
    config = config_of(cap("a", "api.example.com", paths=["/user"]))

    assert matched(config, path="/user?admin=1") == "a"


def test_dot_segments_do_not_escape_a_path_glob():
    config = config_of(cap("a", "api.example.com", paths=["/repos/**"]))

    assert matched(config, path="/repos/../admin") is None
    assert matched(config, path="/repos/%2e%2e/admin") is None


def test_path_params_on_dot_segments_do_not_escape_a_path_glob():
    config = config_of(cap("a", "api.example.com", paths=["/repos/**"]))

    assert matched(config, path="/repos/x/..;/..;/admin") is None


def test_encoded_slashes_cannot_add_segments_to_a_single_segment_glob():
    config = config_of(cap("a", "api.example.com", paths=["/repos/*/issues"]))

    assert matched(config, path="/repos/a%2Fadmin/issues") is None
    assert matched(config, path="/repos/a%5cadmin/issues") is None
    assert matched(config, path="/repos/a%20b/issues") == "a"


def test_encoded_slashes_are_fine_where_the_glob_spans_segments():
    config = config_of(cap("a", "api.example.com", paths=["/files/**"]))

    assert matched(config, path="/files/dir%2Fname.txt") == "a"


def test_could_match_answers_for_the_destination_alone():
    config = config_of(cap("a", "api.example.com", paths=["/only"], methods=["PUT"]))
    matcher = config.matcher("r")

    assert matcher.could_match("https", "api.example.com", 443)
    assert not matcher.could_match("https", "api.example.com", 8443)
    assert not matcher.could_match("https", "evil.example", 443)


# --- the index agrees with a linear scan ----------------------------------------------

HOST_PATTERNS = [
    "a.com",
    "b.a.com",
    "c.b.a.com",
    "x.org",
    "*.a.com",
    "*.b.a.com",
    "a.com:8443",
    "*.a.com:8443",
    "10.0.0.1",
    "*.org",
]
REQUEST_HOSTS = [
    "a.com",
    "b.a.com",
    "c.b.a.com",
    "d.c.b.a.com",
    "x.org",
    "y.x.org",
    "10.0.0.1",
    "0.1",
]
PATHS = ["/x", "/x/1", "/x/1/2", "/y", "/z", "/x/../y", "/"]

capability_specs = st.fixed_dictionaries(
    {
        "hosts": st.lists(st.sampled_from(HOST_PATTERNS), min_size=1, max_size=3),
        "schemes": st.sampled_from([None, ["https"], ["http"], ["http", "https"]]),
        "methods": st.sampled_from([None, ["GET"], ["POST", "GET"]]),
        "paths": st.sampled_from([None, ["/x/**"], ["/x/*"], ["/y", "/z"], ["/**"]]),
        "in_role": st.booleans(),
    }
)
requests = st.tuples(
    st.sampled_from(["https", "http"]),
    st.sampled_from(REQUEST_HOSTS),
    st.sampled_from([443, 80, 8443]),
    st.sampled_from(["GET", "POST", "DELETE"]),
    st.sampled_from(PATHS),
)


def build(specs: list[dict]) -> CapsConfig:
    capabilities = []
    for i, spec in enumerate(specs):
        match = {k: spec[k] for k in ("hosts", "schemes", "methods", "paths") if spec[k]}
        capabilities.append(cap(f"c{i}", *match.pop("hosts"), **match))
    members = [f"c{i}" for i, s in enumerate(specs) if s["in_role"]]
    return config_of(*capabilities, roles={"r": {"capabilities": members}})


@settings(max_examples=150, deadline=None)
@given(st.lists(capability_specs, min_size=0, max_size=12), st.lists(requests, max_size=10))
def test_indexed_matcher_agrees_with_a_linear_scan(specs, request_list):
    config = build(specs)
    matcher = config.matcher("r")
    for scheme, host, port, method, path in request_list:
        linear = next(
            (c for c in config.capabilities_of("r") if c.matches(scheme, host, port, method, path)),
            None,
        )
        destination = any(
            scheme in c.schemes and any(h.matches(scheme, host, port) for h in c.hosts)
            for c in config.capabilities_of("r")
        )

        assert matcher.match(scheme, host, port, method, path) is linear
        assert matcher.could_match(scheme, host, port) == destination
