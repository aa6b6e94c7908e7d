"""Fixtures: one home with an operator and two members, their API keys, a caps file, and a
real `capgate serve` process on it (module scope: a process start costs ~1.5 s)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.cli_harness import CliHome

from .harness import ServeProcess, api_key, start_serve

pytestmark = pytest.mark.e2e

GITHUB = "ghp_SERVEcanaryCredential_0a1b2c3d4e5f6a7b"
TENANT = "tenant-SERVEcanarySecret-99aa88bb77cc"
REFRESH = "refresh-SERVEcanaryRefresh-1f2e3d4c5b6a"
CLIENT_SECRET = "client-SERVEcanaryClientSecret-5566"
CANARIES = (GITHUB, TENANT, REFRESH, CLIENT_SECRET)

CAPS = """\
version: 1
capabilities:
  - name: github-api
    match: {hosts: ["api.github.com"]}
    transforms:
      - auth: {credential: github, provider: github_pat}
      - header: {name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}
  - name: drive
    match: {hosts: ["www.googleapis.com"], paths: ["/drive/**"]}
    transforms:
      - auth: {credential: drive, provider: google}
roles:
  researcher:
    capabilities: [github-api, drive]
  reader:
    capabilities: [github-api]
"""


@dataclass
class World:
    home: CliHome
    serve: ServeProcess
    caps: Path
    operator: str  # alice's API key
    member: str  # bob's
    other_member: str  # carol's

    def op(self):
        return self.serve.client(self.operator)

    def bob(self):
        return self.serve.client(self.member)

    def carol(self):
        return self.serve.client(self.other_member)


def make_home(root: Path) -> CliHome:
    home = CliHome(root)
    home.cli("init")
    home.cli("user", "add", "alice", "--operator", "--email", "alice@example.com")
    home.cli("user", "add", "bob", "--email", "bob@example.com")
    home.cli("user", "add", "carol")
    return home


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("serve")
    home = make_home(root / "home")
    caps = root / "caps.yaml"
    caps.write_text(CAPS)
    served = start_serve(home, root / "logs", "--caps", str(caps))
    try:
        yield World(
            home,
            served,
            caps,
            api_key(home, "alice"),
            api_key(home, "bob"),
            api_key(home, "carol"),
        )
    finally:
        served.stop()
