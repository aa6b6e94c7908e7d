"""Static analysis of CEL: which secrets an expression declares, and which uses are refused."""

from __future__ import annotations

import pytest

from capgate.caps.cel import CelCompileError, compile_expression


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ('secrets["token"]', {"token"}),
        ("secrets['token']", {"token"}),
        ('"Bearer " + secrets["a"] + secrets["b"]', {"a", "b"}),
        ('request.method == "GET" ? secrets["read"] : secrets["write"]', {"read", "write"}),
        ('size(secrets["a"]) > 0 ? "y" : "n"', {"a"}),
        ('secrets["a"]["nested"]', {"a"}),
        ('"agent-" + workspace.id', set()),
        ('{"secrets": 1}["secrets"] == 1 ? "x" : "y"', set()),
        ("request.headers.secrets", set()),
    ],
)
def test_literal_secret_references_are_extracted(source: str, names: set[str]):
    assert compile_expression(source).secrets == names


@pytest.mark.parametrize(
    "source",
    [
        "secrets",
        "string(secrets)",
        "secrets[request.path]",
        'secrets["a" + "b"]',
        'secrets[("a")]' + " + secrets[workspace.id]",
        "secrets.token",
        "has(secrets.token)",
        'secrets.exists(k, k == "a")',
        'secrets.all(k, k != "")',
        "secrets.map(k, k)",
        'secrets.get("a")',
        "size(secrets)",
        '"a" in secrets',
        "[secrets][0]",
        "[1].map(secrets, secrets)",
        '.secrets["a"]',
        'secrets[b"a"]',
        "secrets[1]",
    ],
)
def test_every_other_use_of_secrets_is_refused(source: str):
    with pytest.raises(CelCompileError):
        compile_expression(source)


def test_path_values_may_not_reference_secrets():
    with pytest.raises(CelCompileError, match="may not reference secrets"):
        compile_expression('"/" + secrets["a"]', allow_secrets=False)


def test_path_values_without_secrets_compile():
    assert compile_expression('"/v2" + request.path', allow_secrets=False).secrets == set()


def test_escaped_literal_names_are_decoded():
    assert compile_expression(r'secrets["a\x2db"]').secrets == {"a-b"}


def test_overlong_expression_is_refused():
    with pytest.raises(CelCompileError, match="longer than"):
        compile_expression('"' + "a" * 5000 + '"')
