"""Editing a live request: header and query edits, credential stamping, slot clearing."""

from __future__ import annotations

from mitmproxy import http

from capgate.broker.secretvalue import SecretValue
from capgate.broker.types import WireCredential
from capgate.caps import HeaderEdit, QueryEdit
from capgate.proxy.addon.apply import apply_edit, clear_slots, stamp


def _request(target: str = "/v1/x?a=1&key=agent&a=2", **headers: str) -> http.Request:
    return http.Request.make("GET", f"https://api.test{target}", b"", headers)


def test_clearing_removes_every_value_of_a_header_whatever_its_case():
    request = _request(Authorization="Bearer agent")
    request.headers.add("AUTHORIZATION", "Bearer second")
    clear_slots(request, ["authorization"], [])
    assert request.headers.get_all("Authorization") == []


def test_clearing_removes_every_value_of_a_query_parameter_and_keeps_the_rest():
    request = _request("/v1/x?key=a&b=1&key=c#frag")
    clear_slots(request, [], ["key"])
    assert request.path == "/v1/x?b=1#frag"


def test_stamp_replaces_the_header_and_sets_companions_only_when_absent():
    request = _request(Authorization="Bearer agent", **{"x-github-api-version": "2099-01-01"})
    wire = WireCredential(
        headers=(("Authorization", SecretValue("Bearer real")),),
        companion_headers=(("X-GitHub-Api-Version", "2022-11-28"), ("X-Other", "1")),
    )
    assert stamp(request, wire) is None
    assert request.headers.get_all("authorization") == ["Bearer real"]
    assert request.headers.get_all("x-github-api-version") == ["2099-01-01"]
    assert request.headers["X-Other"] == "1"


def test_stamp_puts_a_query_key_once_and_companion_params_when_absent():
    request = _request("/customsearch/v1?q=cats&key=agent&cx=mine")
    wire = WireCredential(
        query=(("key", SecretValue("real-key")),), companion_query=(("cx", "cfg"), ("hl", "en"))
    )
    assert stamp(request, wire) is None
    assert request.query.get_all("key") == ["real-key"]
    assert request.query.get_all("cx") == ["mine"]
    assert request.query["hl"] == "en"
    assert request.query["q"] == "cats"


def test_stamp_refuses_a_header_value_with_a_line_break():
    request = _request()
    wire = WireCredential(headers=(("Authorization", SecretValue("Bearer x\r\nX-Evil: 1")),))
    assert stamp(request, wire) == "invalid_header_value"
    assert "X-Evil" not in request.headers


def test_header_edits_set_append_and_remove():
    request = _request(**{"X-A": "agent"})
    apply_edit(request, HeaderEdit("x-a", "set", "one"))
    apply_edit(request, HeaderEdit("X-A", "append", "two"))
    assert request.headers.get_all("x-a") == ["one", "two"]
    apply_edit(request, HeaderEdit("X-a", "remove", None))
    assert "X-A" not in request.headers


def test_query_edits_set_append_and_remove():
    request = _request("/v1/x?a=1&a=2&b=3")
    apply_edit(request, QueryEdit("a", "set", "x y"))
    assert request.query.get_all("a") == ["x y"]
    apply_edit(request, QueryEdit("a", "append", "z"))
    assert request.query.get_all("a") == ["x y", "z"]
    apply_edit(request, QueryEdit("b", "remove", None))
    assert "b" not in request.query
    assert apply_edit(request, QueryEdit("c", "set", "bad\nvalue")) == "invalid_query_value"
