"""Loading valid caps.yaml files into typed values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from capgate.caps import (
    AuthTransform,
    CapsError,
    HeaderTransform,
    PathTransform,
    load_caps,
    parse_caps,
)

EXAMPLE = textwrap.dedent(
    """\
    version: 1
    defaults:
      unmatched: allow
    capabilities:
      - name: github-api
        match:
          hosts: ["API.GitHub.com", "*.githubusercontent.com:8443"]
          methods: [get, POST]
          paths: ["/repos/**", "/user"]
        transforms:
          - auth: {credential: github, provider: github_pat}
          - header: {name: X-Internal-Auth, action: set, value: 'secrets["internal-token"]'}
          - body: {pointer: /metadata/tenant, action: set, value: 'secrets["tenant-id"]'}
          - path: {value: '"/v2" + request.path'}
      - name: search
        match: {hosts: [www.googleapis.com]}
        transforms:
          - query: {name: cx, action: set, value: 'secrets["engine"]'}
    roles:
      researcher:
        capabilities: [github-api]
      searcher:
        capabilities: [search]
    """
)


@pytest.fixture
def config():
    return parse_caps(EXAMPLE, "caps.yaml")


def test_capabilities_keep_file_order_and_positions(config):
    assert [(c.name, c.index, c.line) for c in config.capabilities] == [
        ("github-api", 0, 5),
        ("search", 1, 15),
    ]


def test_hosts_are_normalised_and_methods_upper_cased(config):
    github = config.capabilities[0]

    assert [str(h) for h in github.hosts] == ["api.github.com", "*.githubusercontent.com:8443"]
    assert github.methods == ("GET", "POST")


def test_defaults_apply_when_keys_are_omitted(config):
    search = config.capabilities[1]

    assert (search.schemes, search.methods, search.paths, search.allow_plaintext) == (
        ("https",),
        (),
        (),
        False,
    )


def test_unmatched_defaults_to_deny():
    assert parse_caps("version: 1\n").unmatched == "deny"


def test_unmatched_allow_is_read(config):
    assert config.unmatched == "allow"


def test_transforms_are_typed_with_labels_and_lines(config):
    transforms = config.capabilities[0].transforms

    assert [type(t) for t in transforms][:2] == [AuthTransform, HeaderTransform]
    assert [t.label for t in transforms] == [
        "auth:github",
        "header:X-Internal-Auth",
        "body:/metadata/tenant",
        "path",
    ]
    assert [t.line for t in transforms] == [11, 12, 13, 14]
    assert isinstance(transforms[3], PathTransform)


def test_capability_declares_its_credentials_and_secrets(config):
    github = config.capabilities[0]

    assert github.credentials == {"github"}
    assert github.secrets == {"internal-token", "tenant-id"}
    assert github.needs_body


def test_role_names_are_scoped_to_its_capabilities(config):
    assert config.credential_names("researcher") == {"github"}
    assert config.secret_names("researcher") == {"internal-token", "tenant-id"}
    assert config.secret_names("searcher") == {"engine"}
    assert config.credential_names("nobody") == frozenset()


def test_matcher_is_built_once_per_role(config):
    assert config.matcher("researcher") is config.matcher("researcher")


def test_config_values_are_immutable(config):
    with pytest.raises(AttributeError):
        config.capabilities[0].name = "other"


def test_load_caps_reads_a_file(tmp_path: Path):
    path = tmp_path / "caps.yaml"
    path.write_text(EXAMPLE)

    assert load_caps(path).roles["searcher"].capabilities == ("search",)


def test_missing_file_is_a_caps_error(tmp_path: Path):
    with pytest.raises(CapsError) as caught:
        load_caps(tmp_path / "absent.yaml")

    assert "cannot read file" in caught.value.problems[0].message


def test_empty_file_is_a_caps_error():
    with pytest.raises(CapsError, match="empty file"):
        parse_caps("", "caps.yaml")


def test_plain_http_is_accepted_with_allow_plaintext():
    text = (
        "version: 1\ncapabilities:\n  - name: c\n    allow_plaintext: true\n"
        "    match: {hosts: [a.com], schemes: [http, https]}\n"
    )

    assert parse_caps(text).capabilities[0].schemes == ("http", "https")
