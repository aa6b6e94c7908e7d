"""Fault-matrix fixtures: a real home driven by the CLI, a misbehaving token endpoint, and
`capgate proxy` as a process of its own (tests/e2e/cli_harness.py).

The home holds one static credential (`github`, api_key) and one OAuth credential
(`graph`, microsoft client credentials) whose token endpoint is `FaultyTokenServer`.
Capabilities: `github-api` (/repos/**, static) and `graph` (/graph/**, OAuth) on the TLS
echo upstream.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.certs import TestPki
from tests.e2e.cli_harness import CliHome, ProxyProcess, start_proxy_process
from tests.e2e.conftest import pki, tls_upstream  # noqa: F401  (fixtures)
from tests.e2e.upstream import Upstream

from .token_server import FaultyTokenServer

GITHUB = "ghp_FAULTcanaryCredential_a1b2c3d4e5f6a7b8"
MS_CLIENT_SECRET = "ms-FAULTcanaryClientSecret-99aa88bb"
TENANT = "tenant-FAULTcanarySecret-7f6e5d4c"
CANARIES = (GITHUB, MS_CLIENT_SECRET, TENANT)

CAPS = """\
version: 1
capabilities:
  - name: github-api
    match: {{hosts: ["localhost:{tls}"], paths: ["/repos/**"]}}
    transforms:
      - auth: {{credential: github, provider: github_pat}}
  - name: graph
    match: {{hosts: ["localhost:{tls}"], paths: ["/graph/**"]}}
    transforms:
      - auth: {{credential: graph, provider: microsoft}}
  - name: tenant
    match: {{hosts: ["localhost:{tls}"], paths: ["/tenant/**"]}}
    transforms:
      - header: {{name: X-Tenant, action: set, value: 'secrets["tenant-id"]'}}
roles:
  researcher:
    capabilities: [github-api, graph, tenant]
"""


@pytest.fixture(scope="session")
def token_server() -> Iterator[FaultyTokenServer]:
    with FaultyTokenServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _reset_token_server(token_server: FaultyTokenServer) -> None:
    token_server.mode, token_server.delay, token_server.calls = "ok", 3.0, 0


@pytest.fixture(scope="session")
def template_home(
    tmp_path_factory: pytest.TempPathFactory, token_server: FaultyTokenServer
) -> CliHome:
    home = CliHome(
        tmp_path_factory.mktemp("faults") / "home",
        {"CAPGATE_UNSAFE_TOKEN_ENDPOINTS": json.dumps({"microsoft": token_server.url})},
    )
    home.cli("init")
    home.cli("user", "add", "alice")
    home.cli("cred", "add", "github", "--provider", "github_pat", "--kind", "api_key", stdin=GITHUB)
    home.cli(
        "cred",
        "add",
        "graph",
        "--provider",
        "microsoft",
        "--kind",
        "oauth2_client_credentials",
        "--config",
        "tenant_id=t1",
        "--config",
        "client_id=c1",
        stdin=MS_CLIENT_SECRET,
    )
    home.cli("secret", "set", "tenant-id", stdin=TENANT)
    home.cli("ca")
    return home


@pytest.fixture
def home(template_home: CliHome, tmp_path: Path) -> CliHome:
    """A fresh copy of the template home for each test."""
    root = tmp_path / "home"
    shutil.copytree(template_home.root, root)
    return CliHome(root, dict(template_home.extra_env))


@pytest.fixture
def caps_file(tmp_path: Path, tls_upstream: Upstream) -> Path:  # noqa: F811
    path = tmp_path / "caps.yaml"
    path.write_text(CAPS.format(tls=tls_upstream.port))
    return path


class Proxies:
    """Starts `capgate proxy` processes; every one is stopped (by PID) at the end."""

    def __init__(self, home: CliHome, caps: Path, pki: TestPki, logs: Path) -> None:  # noqa: F811
        self.home, self.caps, self.pki, self.logs = home, caps, pki, logs
        self.running: list[ProxyProcess] = []

    def start(self, *extra: str, env: dict[str, str] | None = None) -> ProxyProcess:
        home = CliHome(self.home.root, {**self.home.extra_env, **(env or {})})
        logs = self.logs / str(len(self.running))
        proxy = start_proxy_process(home, self.caps, self.pki.ca_pem, logs, *extra)
        self.running.append(proxy)
        return proxy

    def stop_all(self) -> None:
        for proxy in self.running:
            if proxy.process.poll() is None:
                proxy.process.kill()
                proxy.process.wait(timeout=10)


@pytest.fixture
def proxies(
    home: CliHome,
    caps_file: Path,
    pki: TestPki,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Proxies]:
    running = Proxies(home, caps_file, pki, tmp_path / "logs")
    yield running
    running.stop_all()


def ca_of(home: CliHome) -> Path:
    return Path(home.cli("ca").strip())


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        for canary in CANARIES:
            assert canary not in text
