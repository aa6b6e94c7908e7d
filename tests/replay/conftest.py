"""Shared set-up for the replay tests: a CLI runner and fixture files written on the fly."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from capgate.proxy.cli.main import main

# The live-recording test runs a real proxy against the end-to-end suite's TLS echo upstream.
from tests.e2e.conftest import pki, proxy_home, tls_upstream  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
GITHUB_CAPS = ROOT / "examples" / "github" / "caps.yaml"
# Long, unique fixture values: if any form of one shows up in replay output, it leaked.
CANARY_TOKEN = "ghp_REPLAYcanary0123456789abcdefXYZ"


@dataclass
class Replayed:
    exit_code: int
    output: str

    def json(self) -> dict:
        return json.loads(self.output)


@pytest.fixture
def replay() -> Callable[..., Replayed]:
    def run(*fixtures: Path, caps: Path = GITHUB_CAPS, as_json: bool = False) -> Replayed:
        args = ["replay", *map(str, fixtures), "--caps", str(caps)]
        result = CliRunner().invoke(main, [*args, "--json"] if as_json else args)
        return Replayed(result.exit_code, result.output)

    return run


@pytest.fixture
def write_fixture(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "fixture.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


GOOD = f"""\
workspace: {{role: reader, user: alice}}
credentials:
  github: {{provider: github_pat, kind: api_key, value: {CANARY_TOKEN}}}
request:
  method: GET
  url: https://api.github.com/user
  headers: {{Authorization: Bearer agent-supplied}}
upstream:
  status: 200
  headers: {{Content-Type: application/json}}
  body: {{login: octocat, echo: "{{{{credential:github}}}}"}}
expect:
  decision: allow
  capability: github-read
  request:
    headers:
      Authorization: Bearer {{{{credential:github}}}}
  response:
    status: 200
    body: {{login: octocat, echo: "[REDACTED:github]"}}
  policy_decision:
    transforms_applied: ["auth:github", "header:Cookie"]
"""
