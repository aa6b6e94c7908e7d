"""`capgate caps check`: exit codes, the summary, and the JSON document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capgate.proxy.cli.main import main

VALID = """\
version: 1
capabilities:
  - name: github-api
    match: {hosts: [api.github.com]}
    transforms:
      - auth: {credential: github, provider: github_pat}
      - header: {name: X-Internal-Auth, action: set, value: 'secrets["internal-token"]'}
roles:
  researcher:
    capabilities: [github-api]
"""

INVALID = """\
version: 2
capabilities:
  - name: a
    match: {hosts: []}
roles:
  r: {capabilities: [zzz]}
"""


@pytest.fixture
def write(tmp_path: Path):
    def write_file(text: str) -> str:
        path = tmp_path / "caps.yaml"
        path.write_text(text)
        return str(path)

    return write_file


def invoke(*args: str):
    return CliRunner().invoke(main, ["--home", "/nonexistent-capgate-home", *args])


def test_valid_file_exits_0_with_a_summary(write):
    result = invoke("caps", "check", write(VALID))

    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    assert "github-api" in result.output
    assert "researcher" in result.output
    assert "credentials: github" in result.output
    assert "secrets: internal-token" in result.output


def test_invalid_file_exits_1_listing_every_problem(write):
    path = write(INVALID)

    result = invoke("caps", "check", path)

    assert result.exit_code == 1
    assert f"{path}:1:10: unsupported version 2" in result.output
    assert f"{path}:4:20:" in result.output
    assert "unknown capability 'zzz'" in result.output


def test_json_for_a_valid_file(write):
    result = invoke("caps", "check", write(VALID), "--json")

    assert result.exit_code == 0
    assert json.loads(result.output) == {
        "valid": True,
        "errors": [],
        "capabilities": ["github-api"],
        "roles": {"researcher": ["github-api"]},
        "credentials": ["github"],
        "secrets": ["internal-token"],
        "warnings": [],
    }


def test_json_for_an_invalid_file_lists_errors_with_positions(write):
    path = write(INVALID)

    result = invoke("caps", "check", path, "--json")

    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["valid"] is False
    assert {
        "file": path,
        "line": 1,
        "column": 10,
        "message": "unsupported version 2; expected 1",
    } in document["errors"]
    assert len(document["errors"]) == 3


def test_missing_file_is_invalid_not_a_crash(tmp_path: Path):
    result = invoke("caps", "check", str(tmp_path / "absent.yaml"))

    assert result.exit_code == 1
    assert "cannot read file" in result.output


def test_missing_argument_is_a_usage_error():
    assert invoke("caps", "check").exit_code == 2


def test_unknown_option_is_a_usage_error(write):
    assert invoke("caps", "check", write(VALID), "--yaml").exit_code == 2
