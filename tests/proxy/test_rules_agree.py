"""The caps loader and the request path apply the same HTTP rules: whatever a caps.yaml
may name loads, and whatever loads the proxy then writes (no file that loads and then
fails on every request), and the values the engine produces are the values the proxy
accepts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http

from capgate.caps import CapsError, HeaderEdit, PathEdit, QueryEdit, parse_caps
from capgate.caps.http import (
    FORBIDDEN_HEADERS,
    MAX_HEADER_NAME,
    valid_header_value,
    valid_path,
    valid_query_value,
)
from capgate.proxy.addon.apply import apply_edit


def _request() -> http.Request:
    return http.Request.make("GET", "https://api.test/v1/x?a=1", b"", {})


def _loads_with_header(name: str) -> bool:
    document = {
        "version": 1,
        "capabilities": [
            {
                "name": "c",
                "match": {"hosts": ["api.test"]},
                "transforms": [{"header": {"name": name, "action": "set", "value": '"v"'}}],
            }
        ],
        "roles": {"r": {"capabilities": ["c"]}},
    }
    try:
        parse_caps(json.dumps(document), "caps.yaml")
    except CapsError:
        return False
    return True


def _proxy_writes_header(name: str) -> bool:
    return apply_edit(_request(), HeaderEdit(name, "set", "v")) is None


def test_a_300_character_header_name_is_refused_at_load_not_on_every_request() -> None:
    name = "X-" + "a" * 298
    assert not _proxy_writes_header(name)
    assert not _loads_with_header(name)


@pytest.mark.parametrize(
    "name",
    [
        "X-Request-Source",
        "x" * MAX_HEADER_NAME,
        "x" * (MAX_HEADER_NAME + 1),
        "X Bad",
        "X-Ünicode",
        "X:Colon",
        "",
        *sorted(FORBIDDEN_HEADERS),
        "HOST",
        "Content-Length",
    ],
)
def test_the_loader_accepts_a_header_name_exactly_when_the_proxy_writes_it(name: str) -> None:
    assert _loads_with_header(name) == _proxy_writes_header(name)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09-_!#~ :\t\r\n\x00é()"), max_size=300))
def test_header_names_agree_for_any_text(name: str) -> None:
    assert _loads_with_header(name) == _proxy_writes_header(name)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.text(alphabet="a\t\r\n\x00\x01\x7f", max_size=10))
def test_values_the_engine_produces_are_values_the_proxy_writes(value: str) -> None:
    """evaluate() returns an edit only for a value passing the caps rule; apply_edit must
    write exactly those (and refuse the rest, as a second line)."""
    header = apply_edit(_request(), HeaderEdit("X-A", "set", value))
    assert (header is None) == valid_header_value(value)
    query = apply_edit(_request(), QueryEdit("q", "set", value))
    assert (query is None) == valid_query_value(value)
    path = apply_edit(_request(), PathEdit("/" + value))
    assert (path is None) == valid_path("/" + value)


def test_an_overlong_value_is_refused_on_both_sides() -> None:
    value = "v" * 8193
    assert not valid_header_value(value)
    assert apply_edit(_request(), HeaderEdit("X-A", "set", value)) == "invalid_header_value"
