"""Every way a caps.yaml file can be wrong is reported with its line and what was expected."""

from __future__ import annotations

import textwrap

import pytest

from capgate.caps import CapsError, parse_caps

HEAD = "version: 1\ncapabilities:\n"


def cap(match: str = "{hosts: [api.example.com]}", extra: str = "") -> str:
    """A one-capability file; the capability starts on line 3, `match` is on line 5."""
    return HEAD + f"  - name: c\n    match: {match}\n" + extra


def transform(text: str) -> str:
    """A file whose single transform is on line 7."""
    return cap(extra=f"    transforms:\n      - {text}\n")


# (id, file text, expected line, expected message substring)
CASES = [
    ("yaml-syntax", "version: 1\ncapabilities: [\n", 3, "invalid YAML"),
    ("root-not-mapping", "- 1\n- 2\n", 1, "expected a mapping"),
    ("missing-version", "capabilities: []\n", 1, "missing required key 'version'"),
    ("version-2", "version: 2\n", 1, "unsupported version 2; expected 1"),
    ("version-string", "version: one\n", 1, "expected an integer"),
    ("unknown-top-key", "version: 1\nextras: 1\n", 2, "unknown key 'extras' in caps file"),
    ("duplicate-yaml-key", "version: 1\nversion: 1\n", 2, "duplicate key 'version'"),
    ("unmatched-bad", "version: 1\ndefaults:\n  unmatched: maybe\n", 3, "expected deny or allow"),
    ("defaults-unknown-key", "version: 1\ndefaults:\n  mode: x\n", 3, "unknown key 'mode'"),
    ("capabilities-not-list", "version: 1\ncapabilities: {a: 1}\n", 2, "expected a list"),
    (
        "capability-missing-name",
        HEAD + "  - match: {hosts: [a.com]}\n",
        3,
        "missing required key 'name'",
    ),
    ("capability-missing-match", HEAD + "  - name: c\n", 3, "missing required key 'match'"),
    (
        "capability-unknown-key",
        cap(extra="    color: blue\n"),
        5,
        "unknown key 'color' in capability",
    ),
    (
        "capability-bad-name",
        HEAD + "  - name: 'a b'\n    match: {hosts: [a.com]}\n",
        3,
        "capability name 'a b'",
    ),
    (
        "duplicate-capability-name",
        cap() + "  - name: c\n    match: {hosts: [b.com]}\n",
        5,
        "duplicate capability name 'c' (first defined at line 3)",
    ),
    ("hosts-missing", cap("{schemes: [https]}"), 4, "missing required key 'hosts'"),
    ("hosts-empty", cap("{hosts: []}"), 4, "empty list"),
    ("hosts-not-list", cap("{hosts: a.com}"), 4, "expected a list of strings"),
    (
        "host-bad-wildcard",
        cap("{hosts: ['a.*.com']}"),
        4,
        "wildcard is allowed only as a whole first",
    ),
    ("host-bare-star", cap("{hosts: ['*']}"), 4, "bad host pattern"),
    ("host-bad-port", cap("{hosts: ['a.com:99999']}"), 4, "bad port"),
    ("host-bad-label", cap("{hosts: ['a b.com']}"), 4, "not a valid host name"),
    ("host-bad-ipv4", cap("{hosts: ['1.2.3.999']}"), 4, "IPv4"),
    ("scheme-unknown", cap("{hosts: [a.com], schemes: [ftp]}"), 4, "unknown scheme 'ftp'"),
    (
        "http-without-plaintext",
        cap("{hosts: [a.com], schemes: [http]}"),
        4,
        "needs allow_plaintext: true",
    ),
    ("method-bad", cap("{hosts: [a.com], methods: ['GET POST']}"), 4, "bad HTTP method"),
    ("path-no-slash", cap("{hosts: [a.com], paths: ['repos/*']}"), 4, "starts with '/'"),
    ("path-partial-doublestar", cap("{hosts: [a.com], paths: ['/a**']}"), 4, "whole path segment"),
    ("path-with-query", cap("{hosts: [a.com], paths: ['/a?b=1']}"), 4, "without a query"),
    ("match-unknown-key", cap("{hosts: [a.com], port: 1}"), 4, "unknown key 'port'"),
    (
        "allow-plaintext-not-bool",
        cap(extra="    allow_plaintext: sometimes\n"),
        5,
        "expected true or false",
    ),
    ("transforms-not-list", cap(extra="    transforms: {}\n"), 5, "expected a list"),
    ("transform-unknown-kind", transform("cookie: {name: a}"), 6, "unknown key 'cookie'"),
    (
        "transform-two-kinds",
        transform("{path: {value: '\"/\"'}, auth: {credential: a, provider: openai}}"),
        6,
        "exactly one of",
    ),
    (
        "auth-unknown-provider",
        transform("auth: {credential: gh, provider: gitbucket}"),
        6,
        "unknown provider 'gitbucket'",
    ),
    (
        "auth-missing-credential",
        transform("auth: {provider: github_pat}"),
        6,
        "missing required key 'credential'",
    ),
    (
        "auth-unknown-key",
        transform("auth: {credential: gh, provider: github_pat, scope: x}"),
        6,
        "unknown key 'scope'",
    ),
    (
        "header-bad-name",
        transform("header: {name: 'X Bad', action: set, value: '\"v\"'}"),
        6,
        "invalid header name",
    ),
    (
        "header-host",
        transform("header: {name: Host, action: set, value: '\"evil\"'}"),
        6,
        "cannot be changed",
    ),
    (
        "header-bad-action",
        transform("header: {name: X-A, action: replace, value: '\"v\"'}"),
        6,
        "expected set, append or remove",
    ),
    ("header-missing-value", transform("header: {name: X-A, action: set}"), 6, "needs a value"),
    (
        "header-remove-with-value",
        transform("header: {name: X-A, action: remove, value: '\"v\"'}"),
        6,
        "remove takes no value",
    ),
    (
        "header-value-not-string",
        transform("header: {name: X-A, action: set, value: 42}"),
        6,
        "quote it",
    ),
    (
        "cel-syntax-error",
        transform("header: {name: X-A, action: set, value: '\"a\" +'}"),
        6,
        "syntax error",
    ),
    (
        "cel-bare-secrets",
        transform("header: {name: X-A, action: set, value: 'string(secrets)'}"),
        6,
        'only as secrets["name"]',
    ),
    (
        "cel-dynamic-secret",
        transform("header: {name: X-A, action: set, value: 'secrets[request.path]'}"),
        6,
        "must be a string literal",
    ),
    (
        "cel-concat-secret",
        transform('header: {name: X-A, action: set, value: \'secrets["a" + "b"]\'}'),
        6,
        "must be a string literal",
    ),
    (
        "cel-secret-macro",
        transform(
            "header: {name: X-A, action: set, value: 'string(secrets.exists(k, k == \"a\"))'}"
        ),
        6,
        "macros over secrets",
    ),
    (
        "cel-secret-field",
        transform("header: {name: X-A, action: set, value: 'secrets.token'}"),
        6,
        "field selection secrets.token",
    ),
    (
        "path-with-secret",
        transform('path: {value: \'"/" + secrets["a"]\'}'),
        6,
        "path transform may not reference secrets",
    ),
    (
        "body-bad-pointer",
        transform("body: {pointer: 'a/b', action: set, value: '1'}"),
        6,
        "bad JSON pointer",
    ),
    (
        "body-bad-escape",
        transform("body: {pointer: '/a~2', action: set, value: '1'}"),
        6,
        "'~' must be followed by 0 or 1",
    ),
    (
        "query-missing-name",
        transform("query: {action: set, value: '\"v\"'}"),
        6,
        "missing required key 'name'",
    ),
    ("roles-not-mapping", "version: 1\nroles: [a]\n", 2, "expected a mapping"),
    (
        "role-unknown-capability",
        "version: 1\nroles:\n  r:\n    capabilities: [nope]\n",
        4,
        "names unknown capability 'nope'",
    ),
    (
        "role-unknown-key",
        "version: 1\nroles:\n  r:\n    capabilities: []\n    hosts: []\n",
        5,
        "unknown key 'hosts'",
    ),
    (
        "role-missing-capabilities",
        "version: 1\nroles:\n  r: {}\n",
        3,
        "missing required key 'capabilities'",
    ),
    ("yaml-alias", "version: 1\nx: &a 1\ny: *a\n", 2, "anchors and aliases"),
]


@pytest.mark.parametrize(
    ("text", "line", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_file_is_reported_with_line_and_expectation(text: str, line: int, message: str):
    with pytest.raises(CapsError) as caught:
        parse_caps(text, "caps.yaml")

    found = [(p.line, p.message) for p in caught.value.problems]
    assert any(p_line == line and message in p_message for p_line, p_message in found), found


def test_the_table_holds_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_every_problem_in_a_file_is_reported_not_just_the_first():
    text = textwrap.dedent(
        """\
        version: 3
        capabilities:
          - name: a
            match: {hosts: []}
          - name: b
            match: {hosts: [b.com], schemes: [gopher]}
        roles:
          r: {capabilities: [zzz]}
        """
    )

    with pytest.raises(CapsError) as caught:
        parse_caps(text, "caps.yaml")

    assert [p.line for p in caught.value.problems] == [1, 4, 6, 8]


def test_problem_prints_as_file_line_column_message():
    with pytest.raises(CapsError) as caught:
        parse_caps("version: 2\n", "my/caps.yaml")

    assert str(caught.value.problems[0]) == "my/caps.yaml:1:10: unsupported version 2; expected 1"


def test_cel_syntax_error_column_points_into_the_value():
    text = transform("header: {name: X-A, action: set, value: '\"a\" +'}")

    with pytest.raises(CapsError) as caught:
        parse_caps(text, "caps.yaml")

    (problem,) = caught.value.problems
    line_text = text.splitlines()[problem.line - 1]
    assert line_text[problem.column - 1] == "+"
