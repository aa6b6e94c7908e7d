"""Evaluating header, query, body and path transforms into edits, or failure reasons."""

from __future__ import annotations

import json
import logging

import pytest

from capgate.caps import (
    AuthTransform,
    BodyEdit,
    HeaderEdit,
    PathEdit,
    QueryEdit,
    RequestView,
    TransformFailure,
    WorkspaceView,
    evaluate,
    parse_caps,
)

REQUEST = RequestView(
    method="POST",
    scheme="https",
    host="api.example.com",
    port=443,
    path="/repos/x",
    headers={"user-agent": "agent/1.0", "x-trace": "t-1"},
    query={"page": "2"},
)
WORKSPACE = WorkspaceView(id="ws-1", role="researcher", user="ada")
CANARY = "CANARY-s3cr3t-7f1e"


def transform_from(spec: dict):
    """The single transform of a one-capability file written around `spec`."""
    document = {
        "version": 1,
        "capabilities": [
            {"name": "c", "match": {"hosts": ["api.example.com"]}, "transforms": [spec]}
        ],
    }
    return parse_caps(json.dumps(document), "caps.yaml").capabilities[0].transforms[0]


def header(value: str, action: str = "set", name: str = "X-Out"):
    return transform_from({"header": {"name": name, "action": action, "value": value}})


def run(transform, secrets=None):
    return evaluate(transform, REQUEST, WORKSPACE, secrets or {})


def test_header_value_sees_workspace_and_request():
    edit = run(header('"agent-" + workspace.id + "/" + request.method + request.path'))

    assert edit == HeaderEdit("X-Out", "set", "agent-ws-1/POST/repos/x")


def test_request_headers_are_read_by_lower_case_name():
    assert run(header('request.headers["user-agent"]')).value == "agent/1.0"


def test_header_value_from_a_declared_secret():
    edit = run(header('"Bearer " + secrets["tok"]'), {"tok": "abc"})

    assert edit == HeaderEdit("X-Out", "set", "Bearer abc")


def test_header_append_keeps_the_action():
    assert run(header('"v"', action="append")) == HeaderEdit("X-Out", "append", "v")


def test_header_remove_needs_no_evaluation():
    remove = transform_from({"header": {"name": "Cookie", "action": "remove"}})

    assert run(remove) == HeaderEdit("Cookie", "remove", None)


def test_query_value_from_request_query_and_secret():
    query = transform_from(
        {"query": {"name": "cx", "action": "set", "value": 'request.query["page"] + secrets["id"]'}}
    )

    assert run(query, {"id": "-engine"}) == QueryEdit("cx", "set", "2-engine")


def test_body_value_is_converted_to_plain_json():
    body = transform_from(
        {
            "body": {
                "pointer": "/meta",
                "action": "set",
                "value": '{"tenant": secrets["t"], "n": 2, "ok": true, "xs": [1.5, null]}',
            }
        }
    )

    edit = run(body, {"t": "acme"})

    assert edit == BodyEdit(
        "/meta", "set", {"tenant": "acme", "n": 2, "ok": True, "xs": [1.5, None]}
    )
    assert type(edit.value["tenant"]) is str and type(edit.value["n"]) is int


def test_path_value_becomes_a_path_edit():
    path = transform_from({"path": {"value": '"/v2" + request.path'}})

    assert run(path) == PathEdit("/v2/repos/x")


def test_transform_cannot_read_a_secret_declared_only_by_another_transform():
    reads_a = header('secrets["a"]')

    assert run(reads_a, {"b": "B"}) == TransformFailure("header:X-Out", "missing_secret")


def test_undeclared_secret_is_absent_from_the_activation(monkeypatch):
    seen = {}
    from capgate.caps import transforms

    original = transforms.run

    def spy(expression, activation):
        seen.update({str(k): str(v) for k, v in activation["secrets"].items()})
        return original(expression, activation)

    monkeypatch.setattr(transforms, "run", spy)

    run(header('secrets["a"] == "" ? "empty" : secrets["a"]'), {"a": "A", "b": "B"})

    assert seen == {"a": "A"}


def test_missing_declared_secret_is_a_failure_not_an_exception():
    assert run(header('secrets["a"]'), {"b": "B"}) == TransformFailure(
        "header:X-Out", "missing_secret"
    )


def test_non_string_header_value_is_a_type_error():
    assert run(header("42")) == TransformFailure("header:X-Out", "type_error")


def test_non_string_path_value_is_a_type_error():
    path = transform_from({"path": {"value": "request.port"}})

    assert run(path) == TransformFailure("path", "type_error")


def test_bytes_result_has_no_json_form():
    body = transform_from({"body": {"pointer": "/a", "action": "set", "value": 'b"x"'}})

    assert run(body) == TransformFailure("body:/a", "type_error")


def test_header_value_with_newline_is_refused():
    assert run(header('"a\\r\\nX-Evil: 1"')) == TransformFailure(
        "header:X-Out", "invalid_header_value"
    )


def test_header_value_over_8_kib_is_refused():
    outcome = run(header('secrets["big"]'), {"big": "a" * 8193})

    assert outcome == TransformFailure("header:X-Out", "invalid_header_value")


def test_path_value_with_query_is_refused():
    path = transform_from({"path": {"value": '"/a?b=1"'}})

    assert run(path) == TransformFailure("path", "invalid_path")


def test_runtime_cel_error_is_a_cel_error_failure():
    assert run(header("string(1 / 0)")) == TransformFailure("header:X-Out", "cel_error")


def test_auth_transforms_are_not_evaluated():
    auth = transform_from({"auth": {"credential": "gh", "provider": "github_pat"}})

    assert isinstance(auth, AuthTransform)
    with pytest.raises(TypeError):
        run(auth)


def test_edit_repr_does_not_show_the_value():
    edit = run(header('secrets["a"]'), {"a": CANARY})

    assert CANARY not in repr(edit)


@pytest.mark.parametrize(
    "source",
    [
        'int("x" + secrets["a"])',
        'secrets["a"] + 1',
        'nope + secrets["a"]',
        'secrets["a"] + request.headers["missing"]',
        'duration(secrets["a"])',
        'timestamp(secrets["a"])',
        'secrets["a"].matches("[")',
    ],
)
def test_failing_evaluation_never_exposes_the_secret(source, caplog):
    caplog.set_level(logging.DEBUG)

    failure = run(header(source), {"a": CANARY})

    assert isinstance(failure, TransformFailure)
    assert CANARY not in repr(failure)
    assert all(CANARY not in r.getMessage() and CANARY not in str(r.args) for r in caplog.records)
    assert all(CANARY not in (r.exc_text or "") for r in caplog.records)
